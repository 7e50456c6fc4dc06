"""What the detector accepts from the raw alerts topic, and the reason it gives when it does not."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from services.detector import handlers
from services.detector.adapters import Parsed, Rejected
from services.detector.handlers import decode
from tests.factories import alert, alert_dict


def raw(value: bytes, *, offset: int = 0, headers: list[tuple[str, bytes]] | None = None) -> SimpleNamespace:
    return SimpleNamespace(topic="vigil.alerts.raw", partition=0, offset=offset, value=value, headers=headers or [])


def test_a_valid_alert_is_read_and_its_record_keyed_by_where_it_lies() -> None:
    value = json.dumps(alert_dict(id="a-1", source="falco")).encode()
    event_id, parsed = decode(raw(value))
    assert isinstance(parsed, Parsed)
    assert [a.key for a in parsed.alerts] == ["falco:a-1"]
    assert parsed.format == "native"
    # A redelivery of the same record is a duplicate; the same alert in another record is not.
    assert decode(raw(value))[0] == event_id
    assert decode(raw(value, offset=1))[0] != event_id


def test_a_named_format_is_used_and_an_unknown_one_refused() -> None:
    value = json.dumps(alert_dict()).encode()
    assert decode(raw(value, headers=[("vigil_format", b"native")]))[1].format == "native"
    with pytest.raises(Rejected, match="unknown format 'nagios'") as refused:
        decode(raw(value, headers=[("vigil_format", b"nagios")]))
    assert refused.value.code == "unknown_format"


@pytest.mark.parametrize(
    ("value", "code", "reason"),
    [
        (b"", "empty", "empty record"),
        (b"not json", "not_json", "not JSON"),
        (b"\xff\xfe", "not_utf8", "not UTF-8"),
        (b"[1, 2]", "unknown_format", "one record per message"),
        (b'{"hello": "world"}', "unknown_format", "formats tried: .*native"),
        (json.dumps(alert_dict(severity="loud")).encode(), "invalid_fields", "severity"),
        (json.dumps(alert_dict(time="2026-11-24T09:00:00")).encode(), "invalid_fields", "time"),  # no offset
        (json.dumps(alert_dict(extra_field=1)).encode(), "invalid_fields", "extra_field"),
        (json.dumps(alert_dict(time="2999-01-01T00:00:00Z")).encode(), "invalid_fields", "in the future"),
        (json.dumps(alert_dict(time="1969-12-31T23:59:59Z")).encode(), "invalid_fields", "before 1970"),
        (json.dumps(alert_dict(title="bad\u0000byte")).encode(), "nul", "NUL character"),
        (json.dumps(alert_dict(title="bad\\\u0000byte")).encode(), "nul", "NUL character"),  # backslash, then NUL
        # orjson refuses an escaped lone surrogate, JSON allows it: no character, it can be neither stored nor sent.
        (json.dumps(alert_dict(raw={"cmd": "\ud800"})).encode(), "not_utf8", "surrogate"),
        (b'{"a": "' + b"x" * (1024 * 1024) + b'"}', "too_large", "limit"),
        (b"[" * 100_000 + b"]" * 100_000, "not_json", "nested too deeply"),  # beyond any parser's depth
    ],
    # Named: an alert made here has a random id, and each xdist worker must collect the same tests.
    ids=[
        "empty",
        "not-json",
        "not-utf8",
        "an-array",
        "no-format",
        "bad-severity",
        "time-without-offset",
        "unknown-field",
        "time-in-the-future",
        "time-before-1970",
        "nul",
        "backslash-then-nul",
        "lone-surrogate",
        "too-large",
        "too-deep",
    ],
)
def test_invalid_records_are_refused_with_a_code_and_a_reason(value: bytes, code: str, reason: str) -> None:
    with pytest.raises(Rejected, match=reason) as refused:
        decode(raw(value))
    assert refused.value.code == code


def test_text_that_quotes_an_escape_is_read_as_written() -> None:
    # A WAF alert quoting an injection attempt: a backslash, then the text "u0000" — no NUL in it.
    value = json.dumps(alert_dict(title="SQLi attempt", description="id=1\\u0000 OR 1=1")).encode()
    assert b"\\\\u0000" in value
    _event_id, parsed = decode(raw(value))
    assert isinstance(parsed, Parsed)
    assert parsed.alerts[0].description == "id=1\\u0000 OR 1=1"


def _received(source: str, format_name: str) -> float:
    labels = {"source": source, "format": format_name}
    return REGISTRY.get_sample_value("vigil_detector_alerts_received_total", labels) or 0.0


def test_alerts_are_counted_by_source_and_format_with_the_sources_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "_labelled_sources", set())
    monkeypatch.setattr(handlers, "SOURCE_LABELS", 2)
    before = {s: _received(s, "falco") for s in ("src-a", "src-b", "other")}
    handlers._count_sources(
        [
            alert(source="src-a", format="falco"),
            alert(source="src-a", format="falco"),
            alert(source="src-b", format="falco"),
        ]
    )
    handlers._count_sources([alert(source="src-c", format="falco"), alert(source="src-a", format="falco")])
    after = {s: _received(s, "falco") - before[s] for s in before}
    # Past the bound a new source is counted as other; sources labelled before keep their label.
    assert after == {"src-a": 3, "src-b": 1, "other": 1}
    assert _received("src-c", "falco") == 0


def test_a_format_vigil_does_not_read_is_counted_as_other(monkeypatch: pytest.MonkeyPatch) -> None:
    # A native alert may name any format: each would otherwise be a metric series for good.
    monkeypatch.setattr(handlers, "_labelled_sources", set())
    before = _received("src-a", "other")
    handlers._count_sources([alert(source="src-a", format="made-up-1"), alert(source="src-a", format="made-up-2")])
    assert _received("src-a", "other") - before == 2
    assert _received("src-a", "made-up-1") == 0
