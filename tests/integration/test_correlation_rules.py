"""Correlation rules through the real detector, broker and Postgres: each type, reload, and two replicas racing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from rich.console import Console
from typer.testing import CliRunner

from services.detector import handlers, repository
from services.detector.correlation import SHIPPED_CORRELATIONS, CorrelationError, parse_rules
from services.detector.handlers import Detector, RulesSource, decode
from shared.alerts import Alert
from shared.consumer import HandlerContext
from shared.errors import Raced, is_retriable
from shared.kafka import group_id, make_producer
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, COORDINATION, TopicNames
from tests.factories import alert
from tests.helpers import committed, consume_loop, eventually, produce
from vigil import cli as cli_module
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WINDOW = timedelta(minutes=30)
RULES = """
rules:
  - {name: failed, detection: {tags: authentication_failed}}
  - {name: success, detection: {tags: authentication_success}}
  - {name: admin, detection: {title|contains: new admin}}
  - {name: scan, detection: {category: Detection of a Network Scan}}
  - {name: canary, detection: {source: canary}}
correlations:
  - name: takeover
    severity: SEV1
    correlation: {type: temporal_ordered, rules: [failed, success, admin], group-by: [host], timespan: 1h}
  - name: two-kinds
    correlation: {type: temporal, rules: [scan, canary], group-by: [user], timespan: 1h}
  - name: sweep
    correlation:
      type: value_count
      rules: [scan]
      group-by: [src_ip]
      timespan: 1h
      condition: {field: host, gte: 3}
  - name: burst
    correlation: {type: event_count, rules: [canary], group-by: [host], timespan: 1h, condition: {gte: 3}}
"""


def detector(path: Path) -> Detector:
    return Detector(correlation_window=WINDOW, correlation_rules=RulesSource(path))


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "correlation.yaml"
    path.write_text(RULES)
    return path


async def send(settings: VigilSettings, alerts: list[Alert], *, partitions: list[int] | None = None) -> None:
    producer = make_producer(settings, client_id="test-producer")
    await producer.start()
    try:
        for n, a in enumerate(alerts):
            partition = partitions[n % len(partitions)] if partitions else 0
            topic = TopicNames(settings.topic_prefix)(ALERTS_RAW)
            await producer.send_and_wait(topic, value=a.model_dump_json().encode(), partition=partition)
    finally:
        await producer.stop()


async def stored(pool: asyncpg.Pool) -> tuple[list[asyncpg.Record], list[asyncpg.Record], list[asyncpg.Record]]:
    async with pool.acquire() as conn:
        incidents = await conn.fetch("SELECT * FROM detector_incidents ORDER BY created_at")
        alerts = await conn.fetch("SELECT key, incident_id, correlation FROM detector_alerts ORDER BY time")
        waiting = await conn.fetch("SELECT key, group_key, correlation FROM detector_waiting ORDER BY time")
    return incidents, alerts, waiting


async def handled(settings: VigilSettings, names: TopicNames, count: int, partition: int = 0) -> None:
    async def done() -> bool:
        return (await committed(settings, group_id(settings, "detector"), names(ALERTS_RAW), partition) or 0) >= count

    await eventually(done, timeout=90)  # a shared, loaded machine: generous, never a timed assertion


@contextlib.asynccontextmanager
async def running(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, detector_: Detector) -> Any:
    async with consume_loop(
        settings,
        pool,
        service="detector",
        topics=[names(ALERTS_RAW), names(COORDINATION)],
        decoder=decode,
        handler=detector_.handle,
    ) as running_:
        yield running_


async def test_event_count_waits_then_opens_one_incident_with_why(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, rules_file: Path
) -> None:
    burst = [alert(source="canary", host="web-01", user=None, src_ip=None, minutes=i) for i in range(3)]
    async with running(settings, pool, names, detector(rules_file)):
        await send(settings, burst[:2])
        await handled(settings, names, 2)
        incidents, alerts, waiting = await stored(pool)
        assert (incidents, alerts) == ([], []) and [w["key"] for w in waiting] == [a.key for a in burst[:2]]
        await send(settings, burst[2:])
        await handled(settings, names, 3)
    [incident], alerts, waiting = await stored(pool)
    assert waiting == [] and incident["alert_count"] == 3
    assert incident["correlation_key"].startswith("burst|host=web-01|")
    why = alerts[0]["correlation"]
    assert why["rule"] == "burst" and why["type"] == "event_count" and why["key"] == {"host": "web-01"}
    assert why["triggered_by"] == [a.key for a in burst]
    async with pool.acquire() as conn:
        [detected] = await conn.fetch("SELECT value FROM outbox WHERE event_id = (SELECT event_id FROM outbox LIMIT 1)")
    carried = json.loads(detected["value"])["new_alerts"]  # the incident's first event: its data
    assert [a["correlation"]["triggered_by"] for a in carried] == [[a.key for a in burst]] * 3


async def test_what_happened_to_an_alert_while_it_waited_goes_with_it_into_the_incident(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, rules_file: Path
) -> None:
    burst = [alert(source="canary", host="web-01", user=None, src_ip=None, minutes=i) for i in range(3)]
    first = burst[0]
    # While the group waits, the first alert is seen again, then ends.
    later = [first, first.model_copy(update={"status": "resolved"})]
    async with running(settings, pool, names, detector(rules_file)):
        await send(settings, [*burst[:2], *later])
        await handled(settings, names, 4)
        await send(settings, burst[2:])
        await handled(settings, names, 5)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT key, repeats, resolved_at IS NOT NULL AS resolved FROM detector_alerts")
        [value] = await conn.fetch("SELECT value FROM outbox WHERE headers::text LIKE '%incident.detected%'")
    assert sorted((r["key"], r["repeats"], r["resolved"]) for r in rows) == sorted(
        [(first.key, 1, True), (burst[1].key, 0, False), (burst[2].key, 0, False)]
    )
    carried = {a["key"]: a["status"] for a in json.loads(value["value"])["new_alerts"]}
    assert carried == {first.key: "resolved", burst[1].key: "firing", burst[2].key: "firing"}


async def test_value_count_temporal_and_temporal_ordered(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, rules_file: Path
) -> None:
    scans = [
        alert(category="Detection of a Network Scan", host=f"h{i}", user=None, src_ip="198.51.100.7", minutes=i)
        for i in range(3)
    ]
    both = [
        alert(category="Detection of a Network Scan", host="x", user="eve", src_ip="192.0.2.1", minutes=1),
        alert(source="canary", host="y", user="eve", minutes=2),
    ]
    backwards = [
        alert(tags=["authentication_success"], host="db-1", minutes=0),
        alert(tags=["authentication_failed"], host="db-1", minutes=1),
        alert(title="A new admin account", host="db-1", minutes=2),
    ]
    in_order = [
        alert(tags=["authentication_failed"], host="db-2", minutes=0),
        alert(tags=["authentication_success"], host="db-2", minutes=1),
        alert(title="A new admin account", host="db-2", minutes=2),
    ]
    sent = [*scans, *both, *backwards, *in_order]
    async with running(settings, pool, names, detector(rules_file)):
        await send(settings, sent)
        await handled(settings, names, len(sent))
    incidents, _alerts, waiting = await stored(pool)
    by_rule = {i["correlation_key"].split("|")[0]: i for i in incidents}
    assert set(by_rule) == {"sweep", "two-kinds", "takeover"}
    assert by_rule["sweep"]["alert_count"] == 3 and by_rule["two-kinds"]["alert_count"] == 2
    assert by_rule["takeover"]["severity"] == "SEV1" and "db-2" in by_rule["takeover"]["correlation_key"]
    assert {w["key"] for w in waiting} == {a.key for a in backwards}  # out of order: waiting, raising nothing


async def test_rules_reload_when_the_file_changes_and_a_broken_change_is_refused(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, rules_file: Path
) -> None:
    source = RulesSource(rules_file)
    assert [c.name for c in source.current().correlations] == ["takeover", "two-kinds", "sweep", "burst"]
    await asyncio.to_thread(rules_file.write_text, "correlations: [\n")
    with pytest.raises(CorrelationError):
        source.reload()
    assert len(source.current()) == 4  # the rules in force stay
    await asyncio.to_thread(rules_file.write_text, RULES.replace("condition: {gte: 3}", "condition: {gte: 1}"))
    source.reload()
    async with running(settings, pool, names, Detector(correlation_window=WINDOW, correlation_rules=source)):
        await send(settings, [alert(source="canary", host="web-09", user=None)])
        await handled(settings, names, 1)
    [incident], _alerts, waiting = await stored(pool)
    assert incident["correlation_key"].startswith("burst|host=web-09|") and waiting == []


async def test_a_broken_edit_the_detector_finds_while_it_runs_leaves_the_rules_in_force_and_the_detector_running(
    settings: VigilSettings,
    pool: asyncpg.Pool,
    names: TopicNames,
    rules_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers, "RULES_CHECK_S", 0.0)  # the file is looked at on every batch
    source = RulesSource(rules_file)
    async with running(settings, pool, names, Detector(correlation_window=WINDOW, correlation_rules=source)) as (
        _loop,
        task,
    ):
        await asyncio.to_thread(rules_file.write_text, "correlations: [\n")
        await send(settings, [alert(source="canary", host="web-09", user=None, minutes=i / 60) for i in range(3)])
        await handled(settings, names, 3)
        assert not task.done()
    assert [c.name for c in source.current().correlations] == ["takeover", "two-kinds", "sweep", "burst"]
    [incident], _alerts, _waiting = await stored(pool)
    assert incident["correlation_key"].startswith("burst|host=web-09|")  # by the rules in force


async def test_two_detectors_racing_on_one_key_open_exactly_one_incident(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, rules_file: Path
) -> None:
    raw = names(ALERTS_RAW)
    # Alerts on one host and one rule group, spread over every partition: both replicas get some.
    entity = [alert(host="shared-host", minutes=i / 60) for i in range(24)]
    burst = [alert(source="canary", host="shared-canary", user=None, minutes=i / 60) for i in range(24)]
    async with contextlib.AsyncExitStack() as stack:
        loops = [
            await stack.enter_async_context(running(settings, pool, names, detector(rules_file))) for _ in range(2)
        ]

        async def both_assigned() -> bool:
            return all(any(tp.topic == raw for tp in loop.consumer.assignment()) for loop, _task in loops)

        await eventually(both_assigned, timeout=60)
        await asyncio.gather(
            send(settings, entity, partitions=list(range(12))), send(settings, burst, partitions=list(range(12)))
        )

        async def all_stored() -> bool:
            async with pool.acquire() as conn:
                return bool(await conn.fetchval("SELECT count(*) FROM detector_alerts") == 48)

        await eventually(all_stored, timeout=60)
    incidents, alerts, waiting = await stored(pool)
    assert sorted(i["correlation_key"].split("|")[0] for i in incidents) == ["burst", "host:shared-host"]
    assert {a["incident_id"] for a in alerts} == {i["id"] for i in incidents} and waiting == []
    assert sorted(i["alert_count"] for i in incidents) == [24, 24]


async def test_an_alert_another_replica_stored_after_the_look_up_makes_the_batch_run_again_and_count_it_a_repeat(
    pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = alert(host="raced-host")
    async with pool.acquire() as conn, conn.transaction():  # the other replica's batch, committed
        await Detector(correlation_window=WINDOW).handle_alerts(
            HandlerContext(conn=conn, service="detector", names=names), [sent]
        )
    # This replica looked the alert up before that commit: it found nothing there.
    monkeypatch.setattr(repository, "count_repeats", _found_nothing)
    async with pool.acquire() as conn:
        with pytest.raises(Raced) as raced:
            async with conn.transaction():
                await Detector(correlation_window=WINDOW).handle_alerts(
                    HandlerContext(conn=conn, service="detector", names=names), [sent]
                )
    assert is_retriable(raced.value)  # the consume loop rolls the batch back and runs it again
    monkeypatch.undo()
    async with pool.acquire() as conn, conn.transaction():
        again = HandlerContext(conn=conn, service="detector", names=names)
        await Detector(correlation_window=WINDOW).handle_alerts(again, [sent])
    incidents, alerts, _waiting = await stored(pool)
    assert len(incidents) == 1 and [a["key"] for a in alerts] == [sent.key]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT repeats FROM detector_alerts WHERE key = $1", sent.key) == 1


async def test_an_alert_sent_again_while_it_waits_is_counted_where_it_waits_whatever_it_routes_to_now(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    # A rule takes high findings only: the first sighting waits; the tool re-publishes the finding at
    # medium, which no rule takes. It is the same alert, still waiting, not a second one in an incident.
    rules = parse_rules(
        """
rules:
  - {name: high, detection: {severity: [high, critical]}}
correlations:
  - name: pair
    correlation: {type: event_count, rules: [high], group-by: [host], timespan: 1h, condition: {gte: 2}}
"""
    )
    detector_ = Detector(correlation_window=WINDOW, correlation_rules=RulesSource(None, rules=rules))
    first = alert(id="K", source="finder", severity="high", host="web-01", user=None)
    again = alert(id="K", source="finder", severity="medium", title="finding K (updated)", host="web-01", user=None)
    other = alert(id="L", source="finder", severity="high", host="web-01", user=None, minutes=7)
    elsewhere = alert(id="M", source="finder", severity="low", host="db-09", user=None)  # a new alert beside it
    # Sent again twice in one batch with a new alert: two sightings, counted once each.
    for batch in ([first], [again, again, elsewhere], [other]):
        async with pool.acquire() as conn, conn.transaction():
            await detector_.handle_alerts(HandlerContext(conn=conn, service="detector", names=names), batch)
    incidents, alerts, waiting = await stored(pool)
    assert sorted(i["correlation_key"].split("|")[0] for i in incidents) == ["host:db-09", "pair"]
    assert waiting == [] and sorted(a["key"] for a in alerts) == sorted([first.key, other.key, elsewhere.key])
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT repeats FROM detector_alerts WHERE key = $1", first.key) == 2


async def test_a_group_taking_an_alert_that_waited_again_leaves_its_ended_incidents_row_alone(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    # The same finding fires in an incident that ends, then again: it waits anew, is seen twice while it
    # waits, and joins the next incident its rule opens. Its sightings go to that row, not the retired one.
    rules = parse_rules(
        """
rules:
  - {name: high, detection: {severity: [high, critical]}}
correlations:
  - name: pair
    correlation: {type: event_count, rules: [high], group-by: [host], timespan: 1h, condition: {gte: 2}}
"""
    )
    detector_ = Detector(correlation_window=WINDOW, correlation_rules=RulesSource(None, rules=rules))
    finding = alert(id="K", source="finder", severity="high", host="web-01", user=None)

    async def handle(batch: list[Alert]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await detector_.handle_alerts(HandlerContext(conn=conn, service="detector", names=names), batch)

    await handle([finding, alert(id="L", source="finder", severity="high", host="web-01", user=None, minutes=1)])
    [ended] = await pool.fetch("SELECT id FROM detector_incidents")
    async with pool.acquire() as conn:
        await repository.close_incident(conn, incident_id=ended["id"])
    again = finding.model_copy(update={"time": finding.time + timedelta(hours=3)})
    await handle([again])  # waits anew
    await handle([again])  # seen again while it waits
    await handle([alert(id="M", source="finder", severity="high", host="web-01", user=None, minutes=185)])
    rows = await pool.fetch("SELECT retired, repeats FROM detector_alerts WHERE key = $1 ORDER BY retired", again.key)
    assert [(r["retired"], r["repeats"]) for r in rows] == [(False, 1), (True, 0)]


async def _found_nothing(_conn: Any, *, sightings: Any) -> tuple[dict[str, Any], set[str]]:
    return {}, set()


CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"
# A candidate beside today's entity grouping: each tool's alerts in one incident a day (merges
# today's per-host incidents), and Wazuh's only from 100 a day (today's Wazuh incidents would wait).
CANDIDATE = """
rules:
  - {name: wazuh, detection: {format: wazuh}}
  - {name: falco, detection: {format: falco}}
  - {name: suricata, detection: {format: suricata}}
correlations:
  - name: wazuh-flood
    correlation: {type: event_count, rules: [wazuh], group-by: [format], timespan: 1d, condition: {gte: 100}}
  - name: per-tool
    correlation: {type: event_count, rules: [falco, suricata], group-by: [format], timespan: 1d, condition: {gte: 1}}
"""


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"sample corpus {CORPUS} is absent (Vigil does not need it)")
async def test_rules_test_replays_the_corpus_and_changes_nothing(
    settings: VigilSettings,
    pool: asyncpg.Pool,
    names: TopicNames,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = [
        line for path in sorted(CORPUS.glob("*/*.jsonl")) for line in path.read_bytes().splitlines() if line.strip()
    ]
    await produce(settings, names(ALERTS_RAW), [(None, line, []) for line in lines])
    async with running(settings, pool, names, Detector(correlation_window=WINDOW)):  # today: the entity rule only
        await handled(settings, names, len(lines))
    before = await stored(pool)
    candidate = tmp_path / "candidate.yaml"
    await asyncio.to_thread(candidate.write_text, CANDIDATE)
    env = {"VIGIL_DATABASE_URL": settings.database_url, "COLUMNS": "250"}
    as_json = await asyncio.to_thread(
        CliRunner().invoke, cli, ["rules", "test", str(candidate), "--since", "36500d", "--json"], env=env
    )
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.output)
    assert result["alerts"] == len(before[1]) and result["incidents_today"] == len(before[0])
    assert result["merged"] and result["suppressed"] and result["waiting"] > 0
    assert result["incidents_candidate"] < result["incidents_today"]
    monkeypatch.setattr(cli_module, "console", Console(width=250))
    shown = await asyncio.to_thread(
        CliRunner().invoke, cli, ["rules", "test", str(candidate), "--since", "36500d"], env=env
    )
    assert shown.exit_code == 0, shown.output
    assert "merged" in shown.output and "suppressed" in shown.output and "per-tool|format=falco|" in shown.output
    assert await stored(pool) == before  # nothing changed


async def test_rules_test_of_the_rules_in_force_shows_no_change_however_incidents_went_since(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    detector_ = Detector(correlation_window=WINDOW, correlation_rules=RulesSource(SHIPPED_CORRELATIONS))

    async def store(*alerts: Alert) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await detector_.handle_alerts(HandlerContext(conn=conn, service="detector", names=names), list(alerts))

    await store(alert(minutes=0, host="web-z"))
    first = await pool.fetchval("SELECT id FROM detector_incidents WHERE correlation_key = 'host:web-z'")
    async with pool.acquire() as conn:
        await repository.close_incident(conn, incident_id=first)  # resolved: the host's next alert opens another
    await store(alert(minutes=5, host="web-z"))
    env = {"VIGIL_DATABASE_URL": settings.database_url}
    tested = await asyncio.to_thread(
        CliRunner().invoke, cli, ["rules", "test", str(SHIPPED_CORRELATIONS), "--since", "36500d", "--json"], env=env
    )
    assert tested.exit_code == 0, tested.output
    result = json.loads(tested.output)
    assert (result["incidents_today"], result["incidents_current"], result["incidents_candidate"]) == (2, 1, 1)
    assert (result["opened"], result["merged"], result["split"], result["suppressed"]) == ([], {}, {}, [])
    assert result["unchanged"] == 1
