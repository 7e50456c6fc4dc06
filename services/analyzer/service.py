"""Composition of the analyzer service."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import timedelta

from fastapi import APIRouter

from services.analyzer import api, assets_api, attack, evidence_api, forensic, handlers, intel, providers, retrohunt
from services.analyzer.feeds import SERVICE, FeedRefresher, sync
from shared.consumer import HandlerContext, decode_cloudevent
from shared.effects import EffectKind
from shared.service import BackgroundTask, Runtime, ServiceSpec, sweeper
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import INCIDENTS

log = logging.getLogger(__name__)
# How often analyses waiting for their incident's interval are looked for: at most this late.
SWEEP_S = 1.0
SWEEP_BATCH = 100
ANALYZER_LINGER_MS = 200


def publish_waiting(interval: timedelta) -> BackgroundTask:
    """The task that publishes the analyses that waited for their incident's interval, as each interval ends.

    What waits is in Postgres (the incident's row), so a restart publishes it as well.
    """

    async def step(ctx: HandlerContext, limit: int) -> int:
        return await handlers.publish_waiting(ctx, interval=interval, limit=limit)

    period = min(SWEEP_S, interval.total_seconds())
    return sweeper(step, what="publishing waiting analyses", period_s=period, limit=SWEEP_BATCH)


def spec(settings: VigilSettings) -> ServiceSpec:
    attack.load_rules()  # the ATT&CK dataset and mapping rules: a bad rule stops the start, not an event
    # A broken noise file stops the analyzer at start-up, with the line at fault.
    noise = forensic.load_noise(settings.analyzer_noise_file, documentation=settings.analyzer_documentation_noise)
    # Read now: a broken intel.yaml stops the analyzer, with its line and reason, before it consumes.
    config = intel.load_config(settings.intel_config)
    online = providers.load_providers(config, providers.parse_api_keys(settings.intel_api_keys))
    refreshers: list[FeedRefresher] = []
    interval = timedelta(seconds=settings.analyzer_publish_interval_s)
    reanalyse = functools.partial(handlers.analyse_incident, noise=noise, interval=interval)
    recheck = functools.partial(handlers.recheck_intel, noise=noise)

    def effects(runtime: Runtime) -> Sequence[EffectKind]:
        refreshers.append(FeedRefresher(config, pool=runtime.pool))
        return [*refreshers[0].effect_kinds(), *providers.effect_kinds(online, reanalyse=reanalyse)]

    async def refresh_feeds(runtime: Runtime) -> None:
        async with runtime.pool.acquire() as conn, conn.transaction():
            await sync(conn, config)
            await providers.sync(conn, online)
        poller = TimerPoller(
            service=SERVICE,
            pool=runtime.pool,
            names=runtime.names,
            handlers={**refreshers[0].timer_handlers, retrohunt.RECHECK: recheck},
            locks={retrohunt.RECHECK: retrohunt.lock_incident},
        )
        await poller.run()

    def routers(runtime: Runtime) -> list[APIRouter]:
        return [*api.routers(runtime), *evidence_api.routers(runtime), *assets_api.routers(runtime)]

    background: tuple[BackgroundTask, ...] = (refresh_feeds,)
    if interval:  # without an interval nothing waits
        background += (publish_waiting(interval),)
    return ServiceSpec(
        name=SERVICE,
        consumes=(INCIDENTS,),
        decoder=decode_cloudevent,
        handler=handlers.handler(noise, interval),
        routers=routers,
        background=background,
        effects=effects,
        # An incident's updates in one batch are analysed once: a short wait for more pays for itself.
        linger_ms=ANALYZER_LINGER_MS,
    )
