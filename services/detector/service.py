"""Composition of the detector service."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from fastapi import APIRouter

from services.detector import api, commands_api, correlation, correlation_api, heartbeats_api, publication
from services.detector.classification import load_rules
from services.detector.handlers import Detector, RulesSource, decode
from services.detector.heartbeats import HeartbeatWatch
from services.detector.suppression import load_inhibition
from services.detector.suppressor import Suppressions
from shared.service import Runtime, ServiceSpec, sweeper
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import ALERTS_RAW, COMMANDS, COORDINATION


def spec(settings: VigilSettings) -> ServiceSpec:
    # The shipped correlation rules, or the operator's file: read and checked now, re-read when it changes.
    rules = RulesSource(settings.correlation_rules or correlation.SHIPPED_CORRELATIONS)
    # Read now: a broken inhibition file stops the detector, with its line and reason, before it consumes.
    suppressions = Suppressions(load_inhibition(settings.inhibition_rules))
    detector = Detector(
        correlation_window=timedelta(seconds=settings.correlation_window_s),
        classifier=load_rules(settings.classification_rules),
        correlation_rules=rules,
        suppressions=suppressions,
        heartbeat_watch=HeartbeatWatch(
            factor=settings.heartbeat_missed_factor,
            min_interval_s=settings.heartbeat_min_interval_s,
            first_interval_s=settings.heartbeat_first_interval_s,
        ),
        update_interval=timedelta(seconds=settings.detector_update_interval_s),
    )

    def routers(runtime: Runtime) -> Sequence[APIRouter]:
        return [
            *api.routers(runtime),
            *correlation_api.routers(runtime, rules),
            *commands_api.routers(runtime, detector),
            *heartbeats_api.routers(runtime),
        ]

    async def watch_suppressions(runtime: Runtime) -> None:
        await suppressions.watch(runtime.pool, runtime.settings.database_url)

    async def fire_timers(runtime: Runtime) -> None:
        poller = TimerPoller(
            service="detector", pool=runtime.pool, names=runtime.names, handlers=detector.timer_handlers
        )
        await poller.run()

    # Held alerts are in Postgres (detector_held_alerts): a restart publishes them as well.
    publish_held = sweeper(
        detector.publish_held,
        what="publishing held incident updates",
        period_s=min(publication.SWEEP_S, settings.detector_update_interval_s or publication.SWEEP_S),
        limit=publication.SWEEP_BATCH,
    )
    return ServiceSpec(
        name="detector",
        consumes=(ALERTS_RAW, COORDINATION, COMMANDS),
        decoder=decode,
        handler=detector.handle,
        routers=routers,
        background=(watch_suppressions, fire_timers, publish_held),
        # A batch waits on Postgres for about as long as its Python runs: two loops keep both busy. They
        # are safe together as replicas are (a lock per correlation key, a unique open incident per key).
        consumer_loops=2,
    )
