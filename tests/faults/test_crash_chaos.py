"""Crash chaos: services killed with SIGKILL while mixed-format alerts flow; then the accounting.

While the feed publishes alerts in their tools' formats, a random service is killed at a random
moment, again and again, and the supervisor restarts it. Once everything settles, nothing may be
lost, doubled or left pending (tests/faults/accounting.py), and every service drains on SIGTERM.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from shared.settings import SERVICE_NAMES, VigilSettings
from shared.topics import ALERTS_RAW, TopicNames
from tests.faults.accounting import Accounting, account_lag, account_run
from tests.faults.harness import SEED, Feed, Stack, feed_alerts, settle

pytestmark = [pytest.mark.faults, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(900)]

ALERTS = 5000
WAVES = 10
EVERY_S = 5.0  # between waves: the feed lasts about WAVES * EVERY_S seconds
HOSTS = 12
KILLS = 15


async def test_killed_services_lose_nothing_and_double_nothing(settings: VigilSettings, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    stack = Stack(settings, tmp_path)
    feed = Feed()
    book = Accounting(f"crash chaos: {ALERTS} alerts, {KILLS} kills (seed {SEED})")
    async with stack.running():
        feeding = asyncio.create_task(
            feed_alerts(
                settings,
                TopicNames(settings.topic_prefix)(ALERTS_RAW),
                count=ALERTS,
                waves=WAVES,
                every_s=EVERY_S,
                hosts=HOSTS,
                out=feed,
            )
        )
        # The kills spread over the feed and a little after it, at random moments.
        pause = WAVES * EVERY_S / KILLS
        while len(stack.kills) < KILLS:
            await asyncio.sleep(rng.uniform(0.3, 1.7) * pause)
            alive = [name for name in SERVICE_NAMES if await stack.ready(name)]
            if alive:
                stack.kill(rng.choice(alive))
        await feeding
        settled = await settle(stack, alerts=len(feed.keys), timeout=400)
        book.note("seconds to settle after the last alert", round(settled.seconds))
        book.note("leases of killed runners ended early", settled.leases_ended)
        book.note("formats", ", ".join(f"{name} {n}" for name, n in feed.formats.most_common()))
        await account_lag(book, settings)

    await account_run(book, settings, stack, feed)
    book.verify()
