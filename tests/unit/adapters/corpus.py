"""What every adapter's tests share: the public sample corpus and hypothesis-made junk.

The corpus lives next to the project (``../shared/corpus/<format>/*.jsonl``, one record a line)
and Vigil must not need it: a test that reads it is skipped, saying so, when it is absent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from services.detector.adapters import ADAPTERS, Adapter, Parsed, Rejected
from shared.alerts import Alert

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus"


# The corpus records each format's adapter reads: a whole directory, or the lines of one that holds
# several tools' records (edr_alerts: its SOURCES.md says whose each line is). Every other format's
# adapter must not recognise them.
SAMPLES: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "alertmanager": ("alertmanager_webhook", None),
    "crowdstrike": ("edr_alerts", (1, 2, 3)),
    "defender": ("edr_alerts", (4, 5)),
    "elastic": ("elastic_ecs_alert", None),
    "falco": ("falco", None),
    "guardduty": ("aws_guardduty", None),
    "hayabusa": ("sigma_hayabusa", None),
    "ocsf": ("ocsf_findings", None),
    "osquery": ("osquery_results", None),
    "sentinelone": ("edr_alerts", (6,)),
    "suricata": ("suricata_eve_alert", None),
    "wazuh": ("wazuh_alerts", None),
    "zeek": ("zeek_notice", None),
}


def _lines(directory: str) -> list[tuple[int, Any]]:
    """(line, record) of every record of one corpus directory, in file order; none when it is absent."""
    lines = [
        line
        for path in sorted((CORPUS / directory).glob("*.jsonl"))
        for line in path.read_text("utf-8").splitlines()
        if line.strip()
    ]
    return [(number, json.loads(line)) for number, line in enumerate(lines, 1)]


def records(directory: str) -> list[Any]:
    """Every record of one corpus directory, in file order; the test is skipped when it is absent."""
    found = _lines(directory)
    if not found:
        pytest.skip(f"sample corpus {CORPUS / directory} is absent")
    return [record for _, record in found]


def _is_sample(name: str, directory: str, line: int) -> bool:
    """Whether that line of that corpus directory is a record the named format's adapter reads."""
    own, lines = SAMPLES.get(name, (None, None))
    return directory == own and (lines is None or line in lines)


def samples_if_present(name: str) -> list[Any]:
    """The corpus records the named format's adapter reads, in file order; none when the corpus is absent."""
    if name not in SAMPLES:
        return []
    directory = SAMPLES[name][0]
    return [record for line, record in _lines(directory) if _is_sample(name, directory, line)]


def samples(name: str) -> list[Any]:
    """The corpus records the named format's adapter reads; the test is skipped when they are absent."""
    found = samples_if_present(name)
    if not found:
        pytest.skip(f"no {name} records in the sample corpus {CORPUS}")
    return found


def others(name: str) -> list[tuple[str, int, Any]]:
    """(directory, line, record) of every corpus record some other format's adapter reads."""
    if not CORPUS.is_dir():
        pytest.skip(f"sample corpus {CORPUS} is absent")
    directories = sorted(path.name for path in CORPUS.iterdir() if path.is_dir())
    return [
        (directory, line, record)
        for directory in directories
        for line, record in _lines(directory)
        if not _is_sample(name, directory, line)
    ]


def recognised_by(payload: Any) -> list[str]:
    """The registered formats whose shape the payload has: exactly one for any real record."""
    return [adapter.name for adapter in ADAPTERS if adapter.matches(payload)]


# Values that break careless code: empty, zero, negative, Go's zero time, far future, huge, odd types.
EDGE_VALUES: list[Any] = [
    None,
    "",
    " ",
    0,
    -1,
    2**63,
    1.5,
    float("nan"),
    True,
    [],
    {},
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "1969-12-31T23:59:59Z",
    "not a time",
    "x" * 5000,
    "\x00",
    "firing",
    "resolved",
    "critical",
    "4",
]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars | st.sampled_from(EDGE_VALUES),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn, samples: list[Any]) -> Any:
    """A real sample with a few of its values dropped, replaced by junk, or changed deep inside."""
    value = copy.deepcopy(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, 4))):
        value = _mutate(draw, value)
    return value


def _mutate(draw: st.DrawFn, value: Any) -> Any:
    if isinstance(value, dict) and value and draw(st.integers(0, 4)):
        key = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["drop", "replace", "descend", "descend"]))
        if action == "drop":
            del value[key]
        elif action == "replace":
            value[key] = draw(json_values)
        else:
            value[key] = _mutate(draw, value[key])
        return value
    if isinstance(value, list) and value and draw(st.integers(0, 4)):
        index = draw(st.integers(0, len(value) - 1))
        value[index] = _mutate(draw, value[index])
        return value
    return draw(json_values)


def parses_or_refuses(adapter: Adapter, payload: Any) -> Parsed | None:
    """Assert the adapter's contract on any input; return what it parsed, None when it refused.

    ``matches`` answers a bool without raising; ``parse`` returns valid alerts of its format, or
    raises ``Rejected`` with a code and a reason, never anything else.
    """
    assert adapter.matches(payload) in (True, False)
    try:
        parsed = adapter.parse(payload)
    except Rejected as refused:
        assert refused.code and refused.reason.strip()
        return None
    assert parsed.format == adapter.name
    for alert in parsed.alerts:
        assert isinstance(alert, Alert)
        assert alert.format == adapter.name
        alert.model_dump_json()  # the detector stores and publishes it
    assert all(isinstance(reason, str) and reason.strip() for reason in parsed.skipped)
    return parsed
