"""Slow downstream: a connector target and a notification channel that stop answering hold up nothing else.

Two response actions go to a target that takes every request and never answers, and every notice
goes to a Slack channel there besides the webhook. While that target holds its requests, every
incident is still analysed, planned and escalated, its commander's page reaches the webhook
channel, the other actions reach their target, and the services' memory stays bounded. Once the
target answers again, everything completes and the accounting holds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, TopicNames
from tests.faults.accounting import Accounting, account_lag, account_run
from tests.faults.harness import Feed, Stack, feed_alerts, settle
from tests.helpers import eventually

pytestmark = [pytest.mark.faults, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(900)]

ALERTS = 1200
HOSTS = 16
# The service-disruption playbooks' first webhook actions: most of the feed's incidents take one.
HUNG_ACTIONS = ("scale_out", "failover")
RSS_LIMIT_MB = 400


async def test_a_target_and_a_channel_that_hang_hold_up_no_other_incident(
    settings: VigilSettings, tmp_path: Path
) -> None:
    book = Accounting(f"slow downstream: {', '.join(HUNG_ACTIONS)} and Slack never answer; {ALERTS} alerts")
    stack = Stack(settings, tmp_path, hung_actions=HUNG_ACTIONS)
    feed = Feed()
    async with stack.running():
        raw = TopicNames(settings.topic_prefix)(ALERTS_RAW)
        await feed_alerts(settings, raw, count=ALERTS, waves=4, every_s=3.0, hosts=HOSTS, out=feed)
        conn = await asyncpg.connect(settings.database_url)
        try:

            async def every_incident_paged_on_the_webhook() -> bool:
                incidents = {row["id"] for row in await conn.fetch("SELECT id FROM detector_incidents")}
                paged = {d.key.split(":", 1)[0] for d in stack.notices.deliveries if ":escalation:" in d.key}
                return bool(incidents) and incidents <= paged

            await eventually(every_incident_paged_on_the_webhook, timeout=300, interval=1)
            await eventually(lambda: _holds(stack, paths={"/actions", "/slack"}), timeout=120, interval=1)
            incidents = await conn.fetchval("SELECT count(*) FROM detector_incidents")
        finally:
            await conn.close()
        book.note("incidents, each paged on the webhook channel while the target hung", incidents)
        book.note("requests the hung target holds", stack.hung.held)
        book.expect("other actions reached their target meanwhile", True, bool(stack.actions.deliveries))
        for service in ("responder", "coordinator"):
            rss = stack.rss_mb(service)
            book.expect(
                f"{service}: memory under {RSS_LIMIT_MB} MB while held up", True, rss < RSS_LIMIT_MB, f"{rss:.0f} MB"
            )
            book.note(f"{service}: resident memory (MB)", round(rss))

        stack.hung.release.set()  # the target answers again
        settled = await settle(stack, alerts=len(feed.keys), timeout=400)
        book.note("seconds to settle once the target answered", round(settled.seconds))
        await account_lag(book, settings)
    await account_run(book, settings, stack, feed)
    book.verify()


async def _holds(stack: Stack, *, paths: set[str]) -> bool:
    """The hung target holds requests for each of ``paths`` (an action and the Slack channel)."""
    await asyncio.sleep(0)
    return paths <= {d.path for d in stack.hung.deliveries}
