"""Durable side effects: decided in a handler's transaction, run after commit, never lost, effectively once.

A handler that needs something done outside the database (call a webhook, send a mail, run a
command) does not do it itself: it calls ``enqueue(ctx.conn, ...)`` in its own transaction, next
to the state change that calls for it. A rolled-back decision leaves no effect; a committed one
cannot be forgotten. The service's ``EffectRunner`` then claims the effect, runs it outside any
transaction with a timeout, and records the outcome in one transaction with an
``EffectCompleted`` event (to ``vigil.effects``, for the incident's timeline) and the kind's
``on_outcome`` hook. A ``not_before`` in the future makes the effect a durable schedule (the undo
of a temporary block). Transient failures are retried with exponential backoff and full jitter,
then the effect is parked for an operator (``vigil effects list --status parked``,
``vigil effects retry ID``); a refusal for good (``PermanentEffectError``) fails it at once.

**Effectively once.** No runner can make a call to another system and the record of it atomic:
a runner that crashes (or loses its database) after the call and before recording it leaves the
effect ``running``; when its lease ends another runner makes the call again. So an effect is
executed *at least* once, and every attempt carries the same idempotency key: the effect's
``key``, unique per (service, kind). It reaches the far side as the ``Idempotency-Key`` header
(HTTP), the ``Message-ID`` ``<sha256(key)@vigil>`` (mail) and ``$VIGIL_IDEMPOTENCY_KEY`` / the
``{idempotency_key}`` argument (commands). The effect happens once when the far side does what
a connector must do: **deduplicate on the key** — remember the keys it has acted on (and its
answer) for at least as long as Vigil retries (the kinds' attempts and backoff: minutes to
hours; a parked effect an operator retries later comes back with the same key, so a day or more
is safer) and answer a repeat without acting again. Within Vigil, only the runner holding an
effect's lease may record its outcome, so a late runner whose lease ran out cannot overwrite a
newer attempt, and an effect's final outcome is recorded, and its event written, once (until an
operator's retry starts a new round).
"""

from shared.effects.domain import Effect, PermanentEffectError, TransientEffectError, http_target
from shared.effects.repository import cancel_pending, enqueue, list_, prune, release_pending, retry
from shared.effects.runner import EffectKind, EffectRunner, OutcomeHandler

__all__ = [
    "Effect",
    "EffectKind",
    "EffectRunner",
    "OutcomeHandler",
    "PermanentEffectError",
    "TransientEffectError",
    "cancel_pending",
    "enqueue",
    "http_target",
    "list_",
    "prune",
    "release_pending",
    "retry",
]
