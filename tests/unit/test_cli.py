"""The CLI's input handling, without a broker."""

from __future__ import annotations

import json

from tests.factories import alert_dict
from vigil.cli import parse_alerts


def test_one_alert_an_array_or_json_lines() -> None:
    one, two = alert_dict(), alert_dict(host="db-01")
    assert len(parse_alerts(json.dumps(one))[0]) == 1
    assert len(parse_alerts(json.dumps([one, two]))[0]) == 2
    alerts, errors = parse_alerts(json.dumps(one) + "\n\n" + json.dumps(two) + "\n")
    assert [a.host for a in alerts] == ["web-01", "db-01"]
    assert errors == []


def test_invalid_alerts_are_reported_with_their_position() -> None:
    good, bad = alert_dict(), alert_dict(severity="apocalyptic")
    alerts, errors = parse_alerts(json.dumps(good) + "\n" + json.dumps(bad) + "\n{oops\n")
    assert len(alerts) == 1
    assert errors[0].startswith("alert 2: severity")
    assert errors[1].startswith("alert 3: not JSON")


def test_alert_times_are_normalised_to_utc() -> None:
    alerts, _ = parse_alerts(json.dumps(alert_dict(time="2026-11-24T10:00:00+01:00")))
    assert alerts[0].time.isoformat() == "2026-11-24T09:00:00+00:00"
