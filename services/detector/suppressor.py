"""Suppression at run time: silences and windows in memory, kept current by notification, applied to each batch.

Every replica holds the silences and maintenance windows that have not ended (``suppression.Suppressor``),
loaded before its first batch and again whenever the API announces a change on
``repository.SUPPRESSION_CHANNEL`` (Postgres LISTEN/NOTIFY), and every ``REFRESH_S`` in case a
notification was missed while the listening connection was down. Matching an alert costs no query;
inhibition costs one query per batch that holds possible targets.

When a silence or window ends (by its time, or ended early), or an inhibiting alert resolves, a
durable timer (``SUPPRESSION_ENDED``) releases the alerts it held back that still fire: not resolved,
from a tool that says when an alert ends (``suppression.RESOLVING_FORMATS``, e.g. Alertmanager). They
then open or join incidents like new alerts, as Alertmanager notifies an alert still firing when its
silence expires. Any other alert it held back (and any held back by an inhibiting alert that grew
older than its rule's ``source_max_age``) is released at its next sighting, if nothing holds it back
then. A released alert's suppressed record stays, with when it was released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import asyncpg

from services.detector import domain, repository, suppression
from services.detector.suppression import Inhibition, Suppression, Suppressor
from shared import timers
from shared.alerts import Alert
from shared.db import Conn, connect
from shared.errors import is_retriable

log = logging.getLogger(__name__)

# Silences and windows are read again this often even without a notification.
REFRESH_S = 60.0
RECONNECT_S = 5.0
# The outcome each kind of suppression is counted under (vigil_detector_alerts_total).
OUTCOMES = {"silence": "silenced", "maintenance": "maintenance", "inhibition": "inhibited"}
SERVICE = "detector"
# The durable timer of a silence's or window's end (for a recurring window, of each occurrence's end).
SUPPRESSION_ENDED = "suppression.ended"


async def schedule_end(conn: Conn, *, subject: str, at: datetime) -> None:
    """Set the durable timer that fires when a silence or window (``silence:ID``, ``maintenance:ID``) ends."""
    await timers.schedule(conn, service=SERVICE, kind=SUPPRESSION_ENDED, subject=subject, due_at=at)


class Suppressions:
    """The detector's silences, windows and inhibition rules, and what they do to a batch's new alerts."""

    def __init__(
        self, inhibitions: Sequence[Inhibition] = (), *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.state = Suppressor(inhibitions=inhibitions)
        self.loaded = False
        self.clock = clock
        self._changed = asyncio.Event()

    async def reload(self, conn: Conn) -> None:
        """Read the silences and windows that have not ended; one that cannot be read is left out, loudly."""
        silences, windows = [], []
        for row in await repository.list_silences(conn, limit=100_000):
            try:
                silences.append(suppression.silence_of_row(row))
            except suppression.SuppressionError as exc:
                log.error("silence %s left out: %s", row["id"], exc)
        for row in await repository.list_windows(conn, limit=100_000):
            try:
                windows.append(suppression.window_of(row))
            except suppression.SuppressionError as exc:
                log.error("maintenance window %s left out: %s", row["id"], exc)
        self.state = self.state.with_changes(silences, windows)
        self.loaded = True
        log.debug("suppression reloaded: %d silence(s), %d window(s)", len(silences), len(windows))

    async def hold_back(
        self,
        conn: Conn,
        fresh: Sequence[Alert],
        *,
        firing: Sequence[Alert],
        held: Counter[str],
        not_before: datetime | None = None,
    ) -> tuple[list[Alert], list[domain.Held]]:
        """Store the new alerts that something suppresses, with what; return the others, for correlation,
        and the suppressed ones as stored, for their event.

        ``firing`` is every firing sighting of the batch: those that match an inhibition rule's source
        side are recorded as inhibiting. ``held`` counts the suppressed sightings by outcome.
        """
        if not self.loaded:
            await self.reload(conn)
        state, now = self.state, self.clock()
        now = max(now, not_before) if not_before is not None else now
        if state.inhibitions:
            await self._record_sources(conn, state, firing, now)
        targets = {alert.key: state.targets(alert) for alert in fresh} if state.inhibitions else {}
        wanted = {target for found in targets.values() for target in found}
        sources = await repository.firing_inhibitors(conn, wanted=wanted, now=now) if wanted else {}
        sightings = Counter(a.key for a in firing)
        kept: list[Alert] = []
        suppressed: list[repository.SuppressedAlert] = []
        decisions: list[Suppression] = []
        for alert in fresh:
            decided = state.decide(alert, now, sources, targets.get(alert.key, ()))
            if decided is None:
                kept.append(alert)
                continue
            seen = sightings.get(alert.key, 1)
            suppressed.append(
                repository.SuppressedAlert(alert, decided.kind, decided.by, decided.rule, decided.reason, seen)
            )
            decisions.append(decided)
            held[OUTCOMES[decided.kind]] += seen
        stored: list[domain.Held] = []
        if suppressed:
            occurrences = await repository.store_suppressed(conn, alerts=suppressed)
            stored = [
                domain.Held(s.alert, decided, *occurrences[s.alert.key])
                for s, decided in zip(suppressed, decisions, strict=True)
            ]
            log.info(
                "%d alert(s) suppressed, stored and in no incident: %s",
                len(suppressed),
                "; ".join(f"{s.alert.key}: {s.reason}" for s in suppressed[:3])
                + (" ..." if len(suppressed) > 3 else ""),
            )
        if kept:
            released = await repository.release_suppressed(conn, keys=[a.key for a in kept])
            if released:
                log.info(
                    "%d alert(s) no longer suppressed and still firing, correlated now: %s",
                    len(released),
                    ", ".join(released[:5]) + (" ..." if len(released) > 5 else ""),
                )
        return kept, stored

    async def _record_sources(self, conn: Conn, state: Suppressor, firing: Sequence[Alert], now: datetime) -> None:
        latest = {a.key: a for a in firing}
        rows = [
            (
                source.rule,
                source.equal_values,
                source.key,
                now,
                now + source.expires_after if source.expires_after else None,
            )
            for alert in latest.values()
            for source in state.sources(alert)
        ]
        if rows:
            await repository.record_inhibitors(conn, sources=rows)

    async def ended(self, conn: Conn, subject: str, due_at: datetime) -> list[Alert]:
        """A silence, window or inhibiting alert (``silence:ID``, ``maintenance:ID``, ``inhibition:KEY``) ended:
        return the alerts it released.

        Those are the alerts it held back that still fire (not resolved, from a tool that says when an
        alert ends) and that nothing else holds back now; the others are recorded as held back by what
        holds them now. A recurring window's timer is set again for its next occurrence's end.
        """
        kind, _, ended_id = subject.partition(":")
        await self.reload(conn)
        state = self.state
        now = max(self.clock(), due_at)  # never before the end: the clocks of Postgres and this host may differ
        held = await repository.still_held(conn, suppressed_by=ended_id, formats=suppression.RESOLVING_FORMATS)
        wanted = {target for alert in held for target in state.targets(alert)}
        sources = await repository.firing_inhibitors(conn, wanted=wanted, now=now) if wanted else {}
        released: list[Alert] = []
        moved: list[repository.SuppressedAlert] = []
        for alert in held:
            decided = state.decide(alert, now, sources)
            if decided is None:
                released.append(alert)
            elif decided.by != ended_id:
                moved.append(
                    repository.SuppressedAlert(alert, decided.kind, decided.by, decided.rule, decided.reason, 0)
                )
        if moved:
            await repository.reassign_suppressed(conn, alerts=moved)
        if kind == "maintenance":
            window = next((w for w in state.windows if w.id == ended_id), None)
            if window is not None and (next_end := window.end_after(now)) is not None:
                await schedule_end(conn, subject=subject, at=next_end)
        log.info(
            "%s ended: %d alert(s) it held back still fire and are released, %d held back by something else",
            subject,
            len(released),
            len(moved),
        )
        return released

    async def resolve(self, conn: Conn, resolutions: Mapping[str, datetime]) -> list[repository.EndedSuppressed]:
        """Mark ended alerts' suppressed records and inhibitions resolved; return the suppressed alerts that ended.

        An inhibiting alert that ended sets its timer: the alerts it held back that still fire are released.
        """
        found, ended_sources = await repository.resolve_suppression(conn, resolutions=resolutions)
        now = self.clock()
        for key in sorted(ended_sources):
            await schedule_end(conn, subject=f"inhibition:{key}", at=now)
        return found

    async def watch(self, pool: asyncpg.Pool, database_url: str) -> None:
        """Reload on every change announced by any replica's API, and every REFRESH_S; runs until cancelled.

        A lost connection is retried; anything else stops the detector, loudly.
        """
        while True:
            listener: asyncpg.Connection | None = None
            try:
                listener = await connect(database_url)
                await listener.add_listener(repository.SUPPRESSION_CHANNEL, self._on_notice)
                while not listener.is_closed():
                    self._changed.clear()
                    async with pool.acquire() as conn:
                        await self.reload(conn)  # after listening: no change falls between the two
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), REFRESH_S)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("suppression: lost the database (%r); listening again in %ss", exc, RECONNECT_S)
                await asyncio.sleep(RECONNECT_S)
            finally:
                if listener is not None:
                    listener.terminate()  # never waits on a server that may be gone

    def _on_notice(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        log.debug("suppression changed: %s", payload)
        self._changed.set()
