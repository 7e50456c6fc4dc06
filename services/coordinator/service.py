"""Composition of the coordinator service."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import httpx

from services.coordinator import api, digests, escalation, notifications, rooms, schedules, tasks, ticketing
from services.coordinator.handlers import SERVICE, Coordinator
from services.coordinator.lifecycle import load_lifecycle
from services.coordinator.schedules import DEFAULT_ONCALL, OnCallConfig
from services.coordinator.schedules import load_oncall as load_schedules
from services.coordinator.tasks_api import tasks_router, tickets_router
from shared.backoff import until_available
from shared.consumer import decode_cloudevent
from shared.service import Runtime, ServiceSpec
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import ANALYSES, COMMANDS, INCIDENTS, RESPONSES

log = logging.getLogger(__name__)
# How often the schedules' calendar URLs are fetched again.
CALENDAR_REFRESH_S = 900


def load_oncall(path: Path = DEFAULT_ONCALL) -> OnCallConfig:
    return load_schedules(path)


def spec(settings: VigilSettings) -> ServiceSpec:
    # Every file is read now: a broken one stops the coordinator, with its reason, before it consumes.
    templates = tasks.load_templates()
    oncall = load_oncall(settings.oncall_file or DEFAULT_ONCALL)
    notices = notifications.load_notifications(
        settings.notifications_file or notifications.DEFAULT_NOTIFICATIONS, public_url=settings.public_url
    )
    if missing := notifications.unknown_recipients(notices, sorted(schedules.people(oncall))):
        log.warning("on-call people with no address in the notifications file: %s", ", ".join(missing))
    policies = escalation.load_escalation(settings.escalation_file or escalation.DEFAULT_ESCALATION)
    fallback = {name for policy in policies.policies for name in policy.fallback.notify}
    if missing := notifications.unknown_recipients(notices, sorted(fallback)):
        log.warning("escalation fallbacks with no address in the notifications file: %s", ", ".join(missing))
    stakeholders = {name for names in policies.stakeholders.values() for name in names}
    if missing := notifications.unknown_recipients(notices, sorted(stakeholders)):
        log.warning("status-update stakeholders with no address in the notifications file: %s", ", ".join(missing))
    tickets = ticketing.load_ticketing(settings.ticketing_file or ticketing.DEFAULT_TICKETING)
    reviews = digests.load_digests(settings.digests_file or digests.DEFAULT_DIGESTS)
    readers = {name for digest in reviews.values() for name in digest.to}
    if missing := notifications.unknown_recipients(notices, sorted(readers)):
        log.warning("digest recipients with no address in the notifications file: %s", ", ".join(missing))
    coordinator = Coordinator(
        oncall,
        load_lifecycle(),
        templates,
        notices,
        policies,
        tickets=tickets,
        public_url=settings.public_url,
        digests_=reviews,
    )

    async def schedule_digests(runtime: Runtime) -> None:
        """Each digest's timer set for its next time, waiting out a database that is not there yet."""

        async def ensure() -> list[str]:
            async with runtime.pool.acquire() as conn:
                return await digests.ensure_scheduled(conn, reviews, now=datetime.now(UTC))

        set_now = await until_available(ensure, what="digests not scheduled yet")
        if set_now:
            log.info("digests scheduled: %s", ", ".join(set_now))

    async def fire_timers(runtime: Runtime) -> None:
        if reviews:
            await schedule_digests(runtime)
        poller = TimerPoller(
            service=SERVICE,
            pool=runtime.pool,
            names=runtime.names,
            handlers=coordinator.timer_handlers,
            locks=coordinator.timer_locks,
        )
        await poller.run()

    async def refresh_calendars(runtime: Runtime) -> None:
        """Fetch the schedules' calendar URLs now and every CALENDAR_REFRESH_S; a failure keeps the last copy."""
        async with httpx.AsyncClient(timeout=30, follow_redirects=True) as client:

            async def fetch(url: str) -> bytes:
                response = await client.get(url)
                response.raise_for_status()
                return response.content

            while True:
                try:
                    coordinator.oncall = await schedules.fetch_calendars(coordinator.oncall, fetch)
                    log.info("on-call calendars refreshed")
                except schedules.OnCallError as exc:
                    log.warning("on-call calendars not refreshed, the last copy stays: %s", exc)
                await asyncio.sleep(CALENDAR_REFRESH_S)

    return ServiceSpec(
        name=SERVICE,
        consumes=(INCIDENTS, COMMANDS, RESPONSES, ANALYSES),
        decoder=decode_cloudevent,
        handler=coordinator.handle,
        routers=lambda runtime: [
            *api.routers(runtime, coordinator),
            api.oncall_router(runtime, lambda: coordinator.oncall),
            api.digests_router(runtime, coordinator),
            tasks_router(runtime, templates, on_done=coordinator.on_task_done, on_added=coordinator.on_task_added),
            tickets_router(runtime, tickets, on_done=coordinator.on_task_done),
        ],
        # A background task runs as long as the service: the refresh only where there is something to fetch.
        effects=lambda _runtime: [
            *notifications.effect_kinds(notices, on_outcome=coordinator.on_notice_outcome),
            *ticketing.effect_kinds(tickets, on_outcome=coordinator.on_ticket_outcome),
            *rooms.effect_kinds(notices, on_outcome=coordinator.on_room_outcome),
        ],
        background=(fire_timers, refresh_calendars) if schedules.calendar_urls(coordinator.oncall) else (fire_timers,),
    )
