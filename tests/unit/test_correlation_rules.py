"""Correlation rules as data: the file's checks, the index, each correlation type, and why each alert joined."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.detector import correlation, domain
from services.detector.correlation import CorrelationError, parse_rules
from services.detector.replay import Replay, compare
from shared.alerts import Alert
from shared.events import Severity
from tests.factories import alert

WINDOW = timedelta(minutes=30)

RULES = """
rules:
  - name: failed
    detection: {tags: authentication_failed}
  - name: success
    detection: {tags: authentication_success}
  - name: admin
    detection: {title|contains: new admin}
  - name: scan
    detection: {category: Detection of a Network Scan}
  - name: noisy
    detection: {source: canary}
correlations:
  - name: takeover
    title: Brute force, login, new admin
    severity: SEV1
    correlation:
      type: temporal_ordered
      rules: [failed, success, admin]
      group-by: [host]
      timespan: 1h
  - name: spray
    correlation:
      type: value_count
      rules: [scan]
      group-by: [src_ip]
      timespan: 10m
      condition: {field: dst_ip, gte: 3}
  - name: canary-burst
    correlation:
      type: event_count
      rules: [noisy]
      group-by: [who]
      timespan: 1h
      condition: {gte: 3}
      aliases:
        who: [user, host]
"""


def rules() -> correlation.CorrelationRules:
    return parse_rules(RULES)


def replay(alerts: list[Alert], batch: int = 500) -> Replay:
    return Replay(rules=rules(), window=WINDOW).feed_all(alerts, batch=batch)


def test_the_shipped_rules_load() -> None:
    shipped = correlation.shipped()
    assert [c.name for c in shipped.correlations] == ["scan-sweep", "brute-force-then-login"]


def _one_correlation(kind: str, timespan: str, condition: str) -> str:
    return (
        "rules:\n  - name: a\n    detection: {host: x}\n  - name: b\n    detection: {host: y}\ncorrelations:\n"
        f"  - name: c\n    correlation:\n      type: {kind}\n      timespan: {timespan}\n"
        f"      condition: {condition}\n      rules: [a, b]\n      group-by: [host]\n"
    )


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("rules:\n  - name: a\n    detection: {colour: red}\n", 3, "not a field Vigil normalises"),
        ("rules:\n  - name: a\n    detection: {host|fuzzy: x}\n", 3, "modifier 'fuzzy'"),
        ("rules:\n  - name: a\n    detection: {title|re: '('}\n", 3, "invalid regular expression"),
        (
            "correlations:\n  - name: c\n    correlation:\n      type: event_count\n      rules: [nope]\n"
            "      group-by: [host]\n      timespan: 10m\n      condition: {gte: 2}\n",
            1,
            "do not exist: ['nope']",
        ),
        (
            "rules:\n  - name: a\n    detection: {host: x}\ncorrelations:\n  - name: c\n    correlation:\n"
            "      type: event_count\n      rules: [a]\n      group-by: [host]\n      timespan: 10 minutes\n"
            "      condition: {gte: 2}\n",
            10,
            "timespan '10 minutes'",
        ),
        (
            "rules:\n  - name: a\n    detection: {host: x}\ncorrelations:\n  - name: c\n    correlation:\n"
            "      type: value_count\n      rules: [a]\n      group-by: [host]\n      timespan: 10m\n"
            "      condition: {gte: 2}\n",
            5,
            "value_count needs condition.field",
        ),
        ("rules: [\n", 2, "not YAML"),
        # Conditions that can never hold: every alert the rule takes would wait for ever.
        (_one_correlation("event_count", "10m", "{lte: 0}"), 11, "lte: 0 never holds"),
        (_one_correlation("event_count", "10m", "{lt: 1}"), 11, "lt: 1 never holds"),
        (_one_correlation("temporal", "10m", "{gte: 3}"), 11, "gte: 3 never holds"),
        # Windows too long to end on a date: refused with their line, not a crash of every batch.
        (_one_correlation("event_count", "10000000d", "{gte: 2}"), 10, "longer than 366d"),
        (_one_correlation("event_count", "1000000000d", "{gte: 2}"), 10, "longer than 366d"),
    ],
)
def test_a_broken_file_is_refused_with_its_line_and_reason(text: str, line: int, says: str) -> None:
    with pytest.raises(CorrelationError) as refused:
        parse_rules(text, source="candidate.yaml")
    [problem] = refused.value.problems
    assert problem.startswith(f"candidate.yaml:{line}:"), problem
    assert says in problem


def test_only_the_rules_filed_under_an_alerts_values_are_tested() -> None:
    compiled = rules()
    # Only the rule without an equality (a substring) is tried on every alert.
    assert [b.name for b in compiled._unindexed] == ["admin"]
    assert compiled.matching(alert(tags=["authentication_failed"])) == ["failed"]
    assert compiled.matching(alert(title="Port scan")) == []
    assert compiled.route(alert(title="Port scan")) is None  # the entity fallback


def test_event_count_waits_below_the_threshold_then_opens_with_every_alert() -> None:
    burst = [alert(source="canary", user="bob", host=f"h{i}", minutes=i) for i in range(2)]
    first = replay(burst)
    assert first.incidents == {} and set(first.placement.values()) == {None}  # waiting, raising nothing
    third = alert(source="canary", user="bob", host="h9", minutes=5)
    changes = first.feed([third])
    [change] = changes
    assert change.created and {a.key for a in change.alerts} == {*(a.key for a in burst), third.key}
    why = change.reasons[third.key]
    assert (why.rule, why.type, why.key) == ("canary-burst", "event_count", {"who": "bob"})
    assert why.triggered_by == [a.key for a in (*burst, third)]
    later = first.feed([alert(source="canary", user="bob", minutes=20)])
    assert [c.created for c in later] == [False] and later[0].incident.id == change.incident.id


def test_value_count_counts_distinct_values() -> None:
    same_target = [alert(category="Detection of a Network Scan", dst_ip="10.0.0.1", minutes=i / 10) for i in range(5)]
    assert replay(same_target).incidents == {}
    spread = [alert(category="Detection of a Network Scan", dst_ip=f"10.0.0.{i}", minutes=i / 10) for i in range(3)]
    [incident] = replay(spread).incidents.values()
    assert incident.alert_count == 3 and incident.correlation_key.startswith("spray|src_ip=203.0.113.9|")


def test_temporal_ordered_needs_its_order_and_sets_the_rules_title_and_severity() -> None:
    steps = [
        alert(tags=["authentication_failed"], minutes=0, severity="low"),
        alert(tags=["authentication_success"], minutes=5, severity="info"),
        alert(title="A new admin account", minutes=9, severity="low"),
    ]
    replayed = replay(steps)
    [incident] = replayed.incidents.values()
    assert incident.severity is Severity.SEV1 and "takeover" in incident.severity_reason
    assert incident.title == "Brute force, login, new admin (host=web-01)"
    [joined] = replayed.feed([alert(title="Another new admin account", minutes=20, severity="critical")])
    assert joined.incident.id == incident.id and joined.incident.title == incident.title
    backwards = [alert(tags=["authentication_success"], minutes=0), alert(tags=["authentication_failed"], minutes=5)]
    backwards.append(alert(title="A new admin account", minutes=9))
    assert replay(backwards).incidents == {}


RULED = """
rules:
  - {name: canary, detection: {source: canary}}
correlations:
  - name: burst
    title: Canary tripped again and again
    severity: SEV3
    correlation: {type: event_count, rules: [canary], group-by: [host], timespan: 1h, condition: {gte: 2}}
"""


def test_a_rules_title_and_severity_hold_whatever_batches_the_alerts_came_in() -> None:
    burst = [alert(source="canary", severity="critical", minutes=i) for i in range(2)]
    late = alert(source="canary", severity="low", title="Something else", minutes=5)
    [together] = Replay(rules=parse_rules(RULED), window=WINDOW).feed_all([*burst, late]).incidents.values()
    apart = Replay(rules=parse_rules(RULED), window=WINDOW)
    apart.feed(burst)
    apart.feed([late])
    [in_two] = apart.incidents.values()
    assert together.severity is Severity.SEV3 and together.title == "Canary tripped again and again (host=web-01)"
    assert (in_two.alert_count, in_two.severity, in_two.severity_reason, in_two.title) == (
        3,
        together.severity,
        together.severity_reason,
        together.title,
    )


def test_an_alert_without_the_group_by_field_falls_to_the_next_rule_or_the_entity() -> None:
    route = rules().route(alert(source="canary", host=None, user=None, src_ip=None))
    assert route is None
    placed = rules().route(alert(source="canary", host="web-01", user=None))
    assert placed is not None and placed.values == (("who", "web-01"),)


def test_the_entity_fallback_says_why_too() -> None:
    alerts = [alert(minutes=0), alert(minutes=10)]
    [change] = domain.correlate(alerts, {}, window=WINDOW, new_id=lambda: "i1")
    first, second = (change.reasons[a.key] for a in alerts)
    assert (first.rule, first.key) == ("entity", {"host": "web-01"}) and "first alert" in first.reason
    assert "within 30m" in second.reason
    assert domain.summarise(alerts[1], reason=second).correlation == second


def test_compare_names_opened_merged_split_and_suppressed() -> None:
    today = {"a": "I1", "b": "I1", "c": "I2", "d": "I3", "e": "I4", "f": None}
    candidate = {"a": "C1", "b": "C2", "c": "C3", "d": "C3", "e": None, "f": "C4"}
    result = compare(today, candidate)
    assert result.split == {"I1": ["C1", "C2"]}
    assert result.merged == {"C3": ["I2", "I3"]}
    assert result.suppressed == ["I4"] and result.opened == ["C4"]
    assert (result.waiting, result.released, result.unchanged) == (1, 1, 0)


PAIRS = """
rules:
  - name: noisy
    detection: {source: canary}
correlations:
  - name: pair
    correlation: {type: event_count, rules: [noisy], group-by: [user, host], timespan: 1h, condition: {gte: 2}}
"""


def test_group_values_holding_the_keys_separators_never_make_one_key_of_two_groups() -> None:
    pairs = parse_rules(PAIRS)
    one = pairs.route(alert(source="canary", user="cn=alice,host=dc1", host="ws-7"))
    other = pairs.route(alert(source="canary", user="cn=alice", host="dc1,host=ws-7"))
    assert one is not None and other is not None
    assert one.values != other.values and one.key != other.key
    # A value without a separator is written as it is: the keys of groups open before stay the same.
    plain = pairs.route(alert(source="canary", user="bob", host="web-1"))
    assert plain is not None and plain.key.startswith("pair|user=bob,host=web-1|")
    assert one.key.startswith("pair|user=cn%3Dalice%2Chost%3Ddc1,host=ws-7|")
