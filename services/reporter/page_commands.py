"""What a person does from an incident's page: the commands its forms send, and who may send each.

The page posts a form; the reporter turns it into the same command event the CLI and the APIs send,
with the signed-in principal as its actor, and puts it on the commands topic through its outbox. The
coordinator (acknowledge, resolve, note) or the responder (approve, deny) applies it and answers on
the incident's timeline, or with a rejection there. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from shared.events import (
    AcknowledgeIncident,
    AddNote,
    ApproveStep,
    CommandArgs,
    DenyStep,
    EventBase,
    NoteArgs,
    ResolveIncident,
    StepAnswer,
)
from shared.identity import Permission, Principal, allows

SOURCE = "/vigil/reporter/ui"
Command = Literal["acknowledge", "resolve", "note", "approve", "deny"]
# What each form needs, as the same command needs through the APIs.
PERMISSIONS: dict[str, Permission] = {
    "acknowledge": "incidents.acknowledge",
    "resolve": "incidents.state",
    "note": "incidents.note",
    "approve": "steps.approve",
    "deny": "steps.approve",
}
# The shipped lifecycle's resolutions, offered on the page; the coordinator says if one is not its own.
RESOLUTIONS = ("fixed", "false_positive", "duplicate", "risk_accepted")
# A note's kind on the page, and what it makes of the note.
NOTE_KINDS: dict[str, dict[str, Any]] = {
    "note": {},
    "status_update": {"status_update": True},
    "went_well": {"lesson": "went_well"},
    "went_badly": {"lesson": "went_badly"},
}


class CommandRefused(ValueError):
    """The form cannot become a command; the message says why, for the page."""


def allowed(by: Principal, anonymous: bool) -> dict[str, bool]:
    """Which of the page's forms this person may use (all of them where no sign-in is asked for)."""
    return {command: anonymous or allows(by.role, permission) for command, permission in PERMISSIONS.items()}


def command_event(incident_id: str, form: Mapping[str, Sequence[str]], *, by: Principal) -> EventBase:
    """The command a form asks for, in the principal's name; CommandRefused says what is wrong with it.

    A form sent twice (a double click, a post resent) is one command: its page's ``nonce`` makes the event's
    id, and every consumer takes an event id once."""

    def field(name: str) -> str:
        return (form.get(name) or [""])[0].strip()

    event = _command_event(incident_id, form, field, by=by)
    nonce = field("nonce")
    if _NONCE.fullmatch(nonce):
        # The page load and everything the form says: the same form sent again from that page is one command;
        # another form, or the same one from another page load (resolved again after a reopen, the same status
        # update a day later), another.
        said = json.dumps([by.name, incident_id, nonce, sorted((k, v) for k, v in form.items() if k != "nonce")])
        event = event.model_copy(update={"id": str(uuid.uuid5(_FORMS, said))})
    return event


# A page's forms' nonce (``secrets.token_urlsafe``) and the namespace of the event ids made from it.
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_FORMS = uuid.UUID("5d0f3c2a-7e0b-4c59-9a51-6f3c0d8e2b17")


def _command_event(
    incident_id: str, form: Mapping[str, Sequence[str]], field: Callable[[str], str], *, by: Principal
) -> EventBase:
    command, note = field("command"), field("note")
    try:
        if command == "acknowledge":
            return AcknowledgeIncident(source=SOURCE, subject=incident_id, data=CommandArgs(actor=by.name, note=note))
        if command == "resolve":
            resolution = field("resolution") or None
            args = CommandArgs(actor=by.name, note=note, resolution=resolution)
            return ResolveIncident(source=SOURCE, subject=incident_id, data=args)
        if command == "note":
            kind = NOTE_KINDS.get(field("kind") or "note")
            if kind is None:
                raise CommandRefused(f"no kind of note {field('kind')!r}")
            if not note:
                raise CommandRefused("write the note first")
            return AddNote(source=SOURCE, subject=incident_id, data=NoteArgs(actor=by.name, note=note, **kind))
        if command in ("approve", "deny"):
            step_id = field("step_id")
            if not step_id.startswith(f"{incident_id}:"):
                raise CommandRefused(f"{step_id!r} is no step of incident {incident_id}")
            if command == "deny" and not note:
                raise CommandRefused("a denial needs a reason")
            answer = StepAnswer(step_id=step_id, actor=by.name, role=by.role, note=note)
            event_class = ApproveStep if command == "approve" else DenyStep
            return event_class(source=SOURCE, subject=incident_id, data=answer)
    except ValidationError as exc:
        raise CommandRefused("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from exc
    raise CommandRefused(f"no command {command!r}; one of {', '.join(PERMISSIONS)}")
