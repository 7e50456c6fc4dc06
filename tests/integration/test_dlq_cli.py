"""`vigil dlq list` and `vigil dlq replay` on dead letters the real consume loop set aside on the real broker."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from services.detector.handlers import Detector, decode
from shared.consumer import decode_cloudevent, dispatch_each
from shared.settings import VigilSettings
from shared.topics import ALERTS_DLQ, ALERTS_RAW, EVENTS_DLQ, INCIDENTS, TopicNames
from tests.helpers import consume_loop, produce, read_all
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# What the detector cannot read: each with its key and a header of the sender's own.
JUNK = [
    (b"host:a", b"{not json", [("trace", b"t-0")]),
    (b"host:b", json.dumps({"hello": "world"}).encode(), [("trace", b"t-1")]),
    (b"host:c", json.dumps({"hi": 1}).encode(), [("trace", b"t-2")]),
]


@pytest.fixture
def on_test_broker(settings: VigilSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads its settings from the environment: point it at this test's broker and topics."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("VIGIL_TOPIC_PREFIX", settings.topic_prefix)


async def vigil(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def dead_letter_junk(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> None:
    """Run the real detector over junk until its three dead letters are on the alerts dead-letter topic."""
    await produce(settings, names(ALERTS_RAW), JUNK)
    detector = Detector(correlation_window=timedelta(minutes=30))
    async with consume_loop(
        settings, pool, service="detector", topics=[names(ALERTS_RAW)], decoder=decode, handler=detector.handle
    ):
        assert len(await read_all(settings, names(ALERTS_DLQ), expect=3)) == 3


def replayed(records: list[Any]) -> list[Any]:
    return [r for r in records if "vigil_replayed_from" in dict(r.headers or ())]


@pytest.mark.usefixtures("on_test_broker")
async def test_dead_letters_are_listed_with_why_and_where_they_came_from(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await dead_letter_junk(settings, pool, names)

    listed = await vigil("dlq", "list", "--json")
    assert listed.exit_code == 0, listed.output
    letters = json.loads(listed.stdout)
    assert [(d["offset"], d["code"]) for d in letters] == [
        (0, "not_json"),
        (1, "unknown_format"),
        (2, "unknown_format"),
    ]
    for n, d in enumerate(letters):
        assert d["service"] == "detector"
        assert d["original"] == {"topic": names(ALERTS_RAW), "partition": 0, "offset": n}
        assert d["key"] == JUNK[n][0].decode()
        assert d["reason"] and d["time"]
    assert letters[0]["excerpt"] == "{not json"
    assert "no adapter recognised the record" in letters[1]["reason"]

    newest = json.loads((await vigil("dlq", "list", "--json", "--limit", "1")).stdout)
    assert [d["offset"] for d in newest] == [2]
    table = await vigil("dlq", "list")
    assert table.exit_code == 0, table.output
    assert "3 dead letter(s) on the alerts dead-letter topic" in table.stdout
    assert "not_json" in table.stdout and "{not json" in table.stdout  # the rest may fold in 80 columns
    empty = json.loads((await vigil("dlq", "list", "--json", "--topic", "events")).stdout)
    assert empty == []
    wrong = await vigil("dlq", "list", "--topic", "nonsense")
    assert wrong.exit_code == 1 and "unknown dead-letter topic" in wrong.output


@pytest.mark.usefixtures("on_test_broker")
async def test_dead_letters_are_replayed_to_their_topic_as_they_were_by_offset_or_code(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await dead_letter_junk(settings, pool, names)
    dlq = names(ALERTS_DLQ)

    by_offset = await vigil("dlq", "replay", "0")
    assert by_offset.exit_code == 0, by_offset.output
    assert "replayed 0 (not_json)" in by_offset.stdout and "replayed 1 dead letter(s)" in by_offset.stdout
    (back,) = replayed(await read_all(settings, names(ALERTS_RAW), expect=4))
    assert (back.key, back.value) == JUNK[0][:2]
    assert list(back.headers) == [("trace", b"t-0"), ("vigil_replayed_from", f"{dlq}:0:0".encode())]

    by_code = await vigil("dlq", "replay", "--code", "unknown_format")
    assert by_code.exit_code == 0, by_code.output
    assert "replayed 2 dead letter(s)" in by_code.stdout
    again = replayed(await read_all(settings, names(ALERTS_RAW), expect=6))
    assert sorted((r.key, r.value, dict(r.headers)["trace"]) for r in again) == sorted(
        (key, value, headers[0][1]) for key, value, headers in JUNK
    )
    assert all(not name.startswith("vigil_dlq_") for r in again for name, _ in r.headers)

    dry = await vigil("dlq", "replay", "--all", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would replay 3 dead letter(s)" in dry.stdout
    assert len(await read_all(settings, names(ALERTS_RAW), expect=6)) == 6


@pytest.mark.usefixtures("on_test_broker")
async def test_a_replay_that_names_nothing_says_so(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await dead_letter_junk(settings, pool, names)
    missing = await vigil("dlq", "replay", "1", "42")
    assert missing.exit_code == 1
    assert "no dead letter at 42" in missing.output and "replayed 1 dead letter(s)" in missing.output
    no_code = await vigil("dlq", "replay", "--code", "too_large")
    assert no_code.exit_code == 1 and "no dead letter has code 'too_large'" in no_code.output
    for args in ([], ["1", "--all"], ["--code", "x", "--all"]):
        ambiguous = await vigil("dlq", "replay", *args)
        assert ambiguous.exit_code == 1 and "one of them" in ambiguous.output, args
    junk = await vigil("dlq", "replay", "one")
    assert junk.exit_code == 1 and "offsets are numbers" in junk.output
    assert len(replayed(await read_all(settings, names(ALERTS_RAW), expect=4))) == 1


@pytest.mark.usefixtures("on_test_broker")
async def test_a_dead_lettered_event_is_listed_and_replayed_to_its_topic(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    headers = [("ce_specversion", b"1.0"), ("ce_type", b"vigil.incident.detected.v1")]
    await produce(settings, names(INCIDENTS), [(b"inc-x", b"\x00not an event", headers)])
    async with consume_loop(
        settings,
        pool,
        service="analyzer",
        topics=[names(INCIDENTS)],
        decoder=decode_cloudevent,
        handler=dispatch_each({}),
    ):
        assert len(await read_all(settings, names(EVENTS_DLQ), expect=1)) == 1

    (letter,) = json.loads((await vigil("dlq", "list", "--topic", "events", "--json")).stdout)
    assert letter["service"] == "analyzer"
    assert letter["original"] == {"topic": names(INCIDENTS), "partition": 0, "offset": 0}
    replay = await vigil("dlq", "replay", "--all", "--topic", "events")
    assert replay.exit_code == 0, replay.output
    (back,) = replayed(await read_all(settings, names(INCIDENTS), expect=2))
    assert (back.key, back.value) == (b"inc-x", b"\x00not an event")
    assert list(back.headers) == [*headers, ("vigil_replayed_from", f"{names(EVENTS_DLQ)}:0:0".encode())]
