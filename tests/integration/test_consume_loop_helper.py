"""The tests' consume_loop helper hides no crash: a loop that ended badly fails the test using it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from shared.consumer import DeadLetterGuard, HandlerContext, Inbound, decode_cloudevent
from shared.errors import DeadLetterLimitExceeded
from shared.settings import VigilSettings
from shared.topics import COMMANDS, TopicNames
from tests.helpers import consume_loop, produce

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def crash(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
    raise RuntimeError("bug in handler")


async def nothing(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
    return None


def raw(record: Any) -> tuple[str, bytes]:
    return f"{record.topic}:{record.partition}:{record.offset}", bytes(record.value)


async def one_record(settings: VigilSettings, names: TopicNames) -> str:
    topic = names(COMMANDS)
    await produce(settings, topic, [(b"k", b"not even an event", [])])
    return topic


# A record the handler fails on is dead-lettered; with no dead letter allowed, that stops the loop.
def no_dead_letter() -> DeadLetterGuard:
    return DeadLetterGuard(ratio=0.0, window=1)


async def test_a_loop_that_crashed_fails_the_test(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    topic = await one_record(settings, names)
    with pytest.raises(DeadLetterLimitExceeded):
        async with consume_loop(
            settings, pool, service="h1", topics=[topic], decoder=raw, handler=crash, guard=no_dead_letter()
        ) as (_loop, task):
            await asyncio.wait({task}, timeout=30)
            assert task.done()


async def test_a_crash_of_another_kind_than_expected_fails_the_test(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    topic = await one_record(settings, names)
    with pytest.raises(DeadLetterLimitExceeded):
        async with consume_loop(
            settings,
            pool,
            service="h2",
            topics=[topic],
            decoder=raw,
            handler=crash,
            guard=no_dead_letter(),
            crashes_with=RuntimeError,
        ) as (_loop, task):
            await asyncio.wait({task}, timeout=30)
            assert task.done()


async def test_an_expected_crash_that_does_not_happen_fails_the_test(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    with pytest.raises(AssertionError, match="expected to crash with"):
        async with consume_loop(
            settings,
            pool,
            service="h3",
            topics=[names(COMMANDS)],
            decoder=decode_cloudevent,
            handler=nothing,
            crashes_with=DeadLetterLimitExceeded,
        ):
            pass
