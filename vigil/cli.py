"""`vigil`: run the stack, send alerts, list and show incidents, acknowledge and resolve them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import hashlib
import itertools
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from shared.settings import SERVICE_NAMES, VigilSettings
from vigil.cli_analysis import attack_app, print_impact, print_threat_analysis
from vigil.markup import escape

if TYPE_CHECKING:
    from services.detector.api import Record
    from vigil.dlq import DeadLetter

app = typer.Typer(
    help="Vigil: alerts on Kafka become handled incidents.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
alert_app = typer.Typer(help="Publish alerts.", no_args_is_help=True)
incidents_app = typer.Typer(help="Inspect incidents.", no_args_is_help=True)
events_app = typer.Typer(help="Follow Vigil's events.", no_args_is_help=True)
outbox_app = typer.Typer(help="Events the broker refused, parked in the outbox.", no_args_is_help=True)
app.add_typer(alert_app, name="alert")
app.add_typer(outbox_app, name="outbox")
app.add_typer(incidents_app, name="incidents")
app.add_typer(events_app, name="events")
app.add_typer(attack_app, name="attack")

console = Console()
err = Console(stderr=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ActorOption = Annotated[
    str | None,
    typer.Option(
        help="Who you are, where the service lets anyone act unauthenticated; with a token, the token's name is "
        "recorded instead. Defaults to $VIGIL_ACTOR or your login."
    ),
]
NoteOption = Annotated[str, typer.Option(help="A note for the timeline.")]


def _settings() -> VigilSettings:
    """The settings an operator's command runs with: the environment's, and where it names no database or
    broker, those of the `vigil up` running from this directory."""
    from vigil.stack_file import with_running_stack

    return with_running_stack(VigilSettings())


def _fail(message: str, code: int = 1) -> NoReturn:
    # One line however long (a path, a URL): a script greps it, a log keeps it whole.
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


# Text from an API, the database, a broker, a file or the operator is escaped where it meets rich
# markup (an f-string printed, a table cell): `[ssh]` would be read as a style and `[/etc/passwd]`
# as a closing tag, which stops the command with a MarkupError.


def _plain(*cells: str) -> list[str]:
    """Table cells of plain text: their brackets are shown, not read as rich markup."""
    return [escape(cell) for cell in cells]


# ---- running ---------------------------------------------------------------------------------


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Also publish a stream of sample alerts.")] = False,
    demo_interval: Annotated[float, typer.Option(help="Seconds between demo alerts.")] = 2.0,
) -> None:
    """Run the whole stack: broker and Postgres (embedded unless configured) and the five services.

    Ctrl-C (or SIGTERM) stops everything it started, at any moment, start-up included; it then says
    "stopped" and exits with status 0.
    """
    from vigil.stopping import stop_requests

    stop_requests.install()  # `vigil` has done it before loading; `python -m vigil.cli` has not
    from vigil.stack import PortsInUse, run_stack

    if not stop_requests.requested:
        try:
            asyncio.run(run_stack(VigilSettings(), demo=demo, demo_interval=demo_interval, console=console))
        except PortsInUse as exc:
            _fail(str(exc))
    if stop_requests.requested:
        console.print("stopped")


@app.command()
def service(name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICE_NAMES)}.")]) -> None:
    """Run one service in this process (what each container runs)."""
    if name not in SERVICE_NAMES:
        _fail(f"unknown service {name!r}; choose one of {', '.join(SERVICE_NAMES)}")
    import importlib

    from shared.service import main

    main(importlib.import_module(f"services.{name}.service").spec)


@app.command()
def init() -> None:
    """Apply database migrations and create topics, then exit (services also do this at start-up)."""
    from shared.db import create_pool, migrate
    from shared.topics import TopicNames, ensure_topics

    async def run() -> list[str]:
        settings = _settings()
        pool = await create_pool(settings.database_url, max_size=1)
        try:
            applied = await migrate(pool)
        finally:
            await pool.close()
        await ensure_topics(settings.kafka, TopicNames(settings.topic_prefix))
        return applied

    applied = asyncio.run(run())
    console.print(f"migrations applied: {escape(', '.join(applied)) or 'none needed'}; topics ready")


@app.command()
def asyncapi(
    check: Annotated[bool, typer.Option(help="Fail if the document on disk is stale.")] = False,
    output: Annotated[Path, typer.Option(help="Where the document lives.")] = Path("docs/asyncapi.yaml"),
) -> None:
    """Generate the AsyncAPI 3.0 document of every Vigil topic and event."""
    from shared.asyncapi import render

    text = render()
    if check:
        if not output.exists() or output.read_text() != text:
            _fail(f"{output} is stale; run `vigil asyncapi`")
        console.print(f"{escape(str(output))} is up to date")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    console.print(f"wrote {escape(str(output))}")


# ---- playbooks ---------------------------------------------------------------------------------

playbook_app = typer.Typer(help="Check response playbooks and see what they would plan.", no_args_is_help=True)
app.add_typer(playbook_app, name="playbook")
PlaybookFile = Annotated[Path, typer.Argument(help="A playbook file (YAML).", exists=True, dir_okay=False)]


def _read_playbooks(file: Path) -> Any:
    from services.responder.playbook import PlaybookError, parse_playbooks

    try:
        return parse_playbooks(file.read_text())
    except PlaybookError as exc:
        for problem in exc.problems:
            console.print(f"{file}:{problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc


@playbook_app.command("schema")
def playbook_schema() -> None:
    """Print the JSON Schema of a playbook file."""
    from services.responder.playbook import json_schema

    print(json.dumps(json_schema(), indent=2))


@playbook_app.command("validate")
def playbook_validate(file: PlaybookFile) -> None:
    """Check a playbook file; each problem is printed as FILE:LINE:COLUMN: where: why."""
    playbooks = _read_playbooks(file)
    steps = sum(len(p.steps) for p in playbooks)
    console.print(f"{escape(str(file))}: {len(playbooks)} playbooks, {steps} steps, valid")


@playbook_app.command("plan")
def playbook_plan(
    file: PlaybookFile,
    incident_json: Annotated[
        Path,
        typer.Option(
            "--incident-json",
            exists=True,
            dir_okay=False,
            help='A JSON file: {"incident_id": …, "analysis": {…}, "incident": {…} (optional detector snapshot)}. '
            "Reading a live incident from the API comes later.",
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Print the plan the playbooks would make for an incident; nothing is executed."""
    from pydantic import ValidationError

    from services.responder.domain import NoPlaybook, select_playbook
    from services.responder.playbook import IncidentFacts, plan_steps

    playbooks = _read_playbooks(file)
    try:
        facts = IncidentFacts.model_validate_json(incident_json.read_bytes())
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            console.print(f"{incident_json}: {where}: {error['msg']}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    try:
        playbook = select_playbook(playbooks, facts.analysis.type, facts.analysis.severity, facts)
    except NoPlaybook as exc:
        _fail(str(exc))
    steps = plan_steps(playbook, facts)
    if as_json:
        print(json.dumps({"playbook": playbook.id, "steps": [s.model_dump(mode="json") for s in steps]}, indent=2))
        return
    # Values come from alerts: printed without rich markup, one step a line, never cut.
    console.print(f"{playbook.id}: {playbook.title} (nothing is executed)", markup=False, highlight=False)
    for s in steps:
        params = " ".join(f"{k}={v}" for k, v in s.params.items())
        approval = f" approval {s.risk}" if s.approval == "required" else ""
        why = f" ({s.reason})" if s.reason else ""
        line = f"  {s.id} {s.status} {s.response} {s.connector}.{s.action} {params}{approval}{why}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# ---- outbox ------------------------------------------------------------------------------------


async def _on_database(work: Any) -> Any:
    """Run ``work(conn)`` on one connection to Vigil's database (operators' commands)."""
    import asyncpg

    from shared.db import connect

    try:
        conn = await connect(_settings().database_url)
    except OSError as exc:  # refused, unreachable, or timed out
        _fail(f"cannot reach the database: {exc}")
    except asyncpg.PostgresError as exc:  # no such database, role or password
        _fail(f"the database refused the connection: {exc}")
    try:
        return await work(conn)
    except asyncpg.UndefinedTableError as exc:
        _fail(
            f"not a Vigil database ({exc}): run `vigil init`, or run this where `vigil up` runs "
            "(or set DATABASE_URL to the stack's)"
        )
    finally:
        await conn.close()


@outbox_app.command("parked")
def outbox_parked(
    service_name: Annotated[str | None, typer.Option("--service", help="Only this service's rows.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List events parked because the broker refused them for good, with the error."""
    from shared.outbox import list_parked

    rows = asyncio.run(_on_database(lambda conn: list_parked(conn, service=service_name)))
    if as_json:
        print(json.dumps([{**r.__dict__, "parked_at": r.parked_at.isoformat()} for r in rows], indent=2))
        return
    table = Table(title=f"{len(rows)} parked event(s)")
    for column in ("id", "service", "topic", "incident", "bytes", "tries", "error", "parked"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            *_plain(
                str(r.id),
                r.service,
                r.topic,
                r.key[:8],
                str(r.size),
                str(r.attempts),
                r.error or "",
                r.parked_at.isoformat(timespec="seconds"),
            )
        )
    console.print(table)


@outbox_app.command("retry")
def outbox_retry(row_id: Annotated[int, typer.Argument(help="Id from `vigil outbox parked`.")]) -> None:
    """Put a parked event back in line; the service's relay publishes it again."""
    from shared.outbox import retry_parked

    if not asyncio.run(_on_database(lambda conn: retry_parked(conn, row_id=row_id))):
        _fail(f"no parked event {row_id}")
    console.print(f"event {row_id} re-queued")


# ---- effects -----------------------------------------------------------------------------------

effects_app = typer.Typer(help="Side effects (webhooks, mails, commands) and how they ended.", no_args_is_help=True)
app.add_typer(effects_app, name="effects")
EFFECT_STATUSES = ("pending", "running", "succeeded", "failed", "parked", "cancelled")
EFFECT_STATUS_STYLE = {"succeeded": "green", "failed": "red", "parked": "yellow", "running": "cyan"}


@effects_app.command("list")
def effects_list(
    status: Annotated[str | None, typer.Option(help=f"Only this status: {', '.join(EFFECT_STATUSES)}.")] = None,
    service_name: Annotated[str | None, typer.Option("--service", help="Only this service's effects.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List side effects, newest first: where each went, its status, attempts and last error."""
    from shared.effects import list_

    if status is not None and status not in EFFECT_STATUSES:
        _fail(f"unknown status {status!r}; choose one of {', '.join(EFFECT_STATUSES)}")
    rows = asyncio.run(_on_database(lambda conn: list_(conn, service=service_name, status=status, limit=limit)))
    if as_json:
        print(json.dumps([{k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in r.items()} for r in rows]))
        return
    table = Table(title=f"{len(rows)} effect(s)")
    for column in ("id", "service", "kind", "target", "status", "attempts", "last error", "not before"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["id"]),
            escape(r["service"]),
            escape(r["kind"]),
            escape(r["target"]),
            _styled(r["status"], EFFECT_STATUS_STYLE),  # `pending` has no style: "[]pending[/]" was an error
            str(r["attempts"]),
            escape(r["last_error"] or ""),
            r["not_before"].isoformat(timespec="seconds") if r["status"] == "pending" else "",
        )
    console.print(table)


@effects_app.command("retry")
def effects_retry(effect_id: Annotated[int, typer.Argument(help="Id from `vigil effects list`.")]) -> None:
    """Send a parked or failed effect back to its runner: attempts reset, due now, same idempotency key."""
    from shared.effects import retry
    from shared.effects.domain import RETRYABLE

    previous = asyncio.run(_on_database(lambda conn: retry(conn, effect_id=effect_id)))
    if previous is None:
        _fail(f"no effect {effect_id}")
    if previous not in RETRYABLE:
        _fail(f"effect {effect_id} is {previous}; only a parked or failed effect can be retried")
    console.print(f"effect {effect_id} ({previous}) re-queued")


# ---- API tokens --------------------------------------------------------------------------------

tokens_app = typer.Typer(
    help="API tokens: each a person or an integration with a role (on the database, as an administrator).",
    no_args_is_help=True,
)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option("--name", help="Who it is: a person's or an integration's name.")],
    role: Annotated[str, typer.Option("--role", help="viewer, responder, commander, admin or ingest.")],
    kind: Annotated[str, typer.Option("--kind", help="person or integration.")] = "person",
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime: 12h, 90d, 2w; none: until revoked.")
    ] = None,
    actor: ActorOption = None,
) -> None:
    """Create a token and print it once: only its hash is kept."""
    from shared import audit, identity

    if role not in identity.ROLES:
        _fail(f"unknown role {role!r}; one of {', '.join(identity.ROLES)}")
    if kind not in ("person", "integration"):
        _fail("--kind is person or integration")
    try:
        lifetime = identity.parse_expiry(expires) if expires else None
    except ValueError as exc:
        _fail(str(exc))
    who = _who(actor)

    async def create(conn: Any) -> identity.NewToken:
        async with conn.transaction():
            made = await identity.create_token(
                conn,
                name=name,
                role=role,  # type: ignore[arg-type]  # checked against identity.ROLES above
                kind=kind,  # type: ignore[arg-type]  # checked above
                expires_in=lifetime,
                created_by=who,
            )
            await audit.record(
                conn,
                service="cli",
                principal=who,
                action="token.create",
                target=made.token_id,
                detail={"name": name, "role": role, "expires": expires or "never"},
            )
        return made

    token = asyncio.run(_on_database(create))
    console.print(f"token {token.token_id} for {escape(name)} ({role}); it is shown only now:")
    print(token.text)


@tokens_app.command("list")
def tokens_list(as_json: JsonOption = False) -> None:
    """Every token: its id, who, role, when it was made and by whom, expiry and revocation (never the secret)."""
    from shared import identity

    rows = [dict(r) for r in asyncio.run(_on_database(identity.list_tokens))]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=f"{len(rows)} token(s)")
    for column in ("id", "name", "role", "kind", "created", "expires", "revoked"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            *_plain(
                r["id"],
                r["name"],
                r["role"],
                r["kind"],
                f"{r['created_at']:%Y-%m-%d} by {r['created_by']}",
                f"{r['expires_at']:%Y-%m-%d %H:%M}" if r["expires_at"] else "-",
                f"{r['revoked_at']:%Y-%m-%d %H:%M} by {r['revoked_by']}" if r["revoked_at"] else "-",
            )
        )
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, actor: ActorOption = None) -> None:
    """Revoke a token at once: every request with it is refused from now on."""
    from shared import audit, identity

    who = _who(actor)

    async def revoke(conn: Any) -> bool:
        async with conn.transaction():
            revoked = await identity.revoke_token(conn, token_id, revoked_by=who)
            if revoked:
                await audit.record(conn, service="cli", principal=who, action="token.revoke", target=token_id)
        return revoked

    if not asyncio.run(_on_database(revoke)):
        _fail(f"no active token {token_id}")
    console.print(f"token {escape(token_id)} revoked")


@tokens_app.command("roles")
def tokens_roles() -> None:
    """What each role may do (the permission matrix every API checks)."""
    from shared import identity

    table = Table(title="roles")
    table.add_column("permission")
    for role in identity.ROLES:
        table.add_column(role, justify="center")
    for permission, text in identity.PERMISSION_TEXT.items():
        marks = ["yes" if identity.allows(role, permission) else "" for role in identity.ROLES]
        table.add_row(f"{permission}: {text}", *marks)
    console.print(table)


# ---- response kill switch ----------------------------------------------------------------------

response_app = typer.Typer(
    help="The responders' global kill switch, and rolling a response back.", no_args_is_help=True
)
app.add_typer(response_app, name="response")
ResponseReason = Annotated[str, typer.Option("--reason", help="Why; kept with the switch.")]
ResponseActor = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help="Who, where the service lets anyone act unauthenticated; with a token, the token's name is recorded "
        "instead. Defaults to $VIGIL_ACTOR or your login.",
    ),
]


def _set_response_paused(paused: bool, reason: str, actor: str | None) -> None:
    from services.responder.guardrails import set_paused
    from shared import audit

    who = actor or os.environ.get("VIGIL_ACTOR") or getpass.getuser()

    async def switch(conn: Any) -> None:
        async with conn.transaction():
            await set_paused(conn, paused=paused, reason=reason, changed_by=who)
            action = "response.pause" if paused else "response.resume"
            await audit.record(
                conn, service="cli", principal=who, action=action, target="responses", detail={"reason": reason}
            )

    asyncio.run(_on_database(switch))
    console.print(f"responses {'paused' if paused else 'resumed'} by {escape(who)}")


@response_app.command("pause")
def response_pause(reason: ResponseReason = "paused by an operator", actor: ResponseActor = None) -> None:
    """Stop every new action at once; planning goes on, steps due meanwhile are held until `vigil response resume`."""
    _set_response_paused(True, reason, actor)


@response_app.command("resume")
def response_resume(reason: ResponseReason = "resumed by an operator", actor: ResponseActor = None) -> None:
    """Let actions execute again: the steps held while paused run on."""
    _set_response_paused(False, reason, actor)


@response_app.command("rollback")
def response_rollback(
    incident_id: str,
    reason: Annotated[str, typer.Option("--reason", help="Why; kept with the rollback and each undo.")] = "",
    actor: ResponseActor = None,
) -> None:
    """Undo every action of an incident still in force, one at a time, in reverse order of execution."""
    incident_id = _full_id(incident_id)
    started = _responder("POST", f"/api/v1/incidents/{incident_id}/rollback", {"actor": _who(actor), "reason": reason})
    console.print(f"rolling back {len(started['steps'])} action(s) of {escape(incident_id)}, last executed first:")
    for step_id in started["steps"]:
        console.print(f"  {escape(step_id)}")
    console.print(f"follow it with: vigil lease list {escape(incident_id)} --all")


@response_app.command("status")
def response_status(as_json: JsonOption = False) -> None:
    """Say whether responses are paused, by whom, when and why, and how much of each rate limit is used."""
    from services.responder.guardrails import DEFAULT_GUARDRAILS, get_controls, load_guardrails, rate_usage

    limits = load_guardrails(_settings().responder_guardrails or DEFAULT_GUARDRAILS).rate_limits

    async def read(conn: Any) -> tuple[Any, Any]:
        return await get_controls(conn), await rate_usage(conn, limits, now=datetime.now(UTC))

    controls, used = asyncio.run(_on_database(read))
    changed_at = controls.changed_at.isoformat(timespec="seconds") if controls.changed_at else None
    rates = [
        {
            "action": u.limit.action,
            "per": u.limit.per,
            "limit": u.limit.limit,
            "window": u.limit.window,
            "used": u.used,
            **({"target": u.target} if u.target is not None else {}),
        }
        for u in used
    ]
    if as_json:
        print(json.dumps({**controls.__dict__, "changed_at": changed_at, "rate_limits": rates}))
        return
    if controls.changed_at is None:
        console.print("responses running (never paused)")
    else:
        state = "[red]paused[/]" if controls.paused else "[green]running[/]"
        console.print(
            f"responses {state} since {changed_at} by {escape(controls.changed_by)}: {escape(controls.reason)}"
        )
    if rates:
        table = Table(title="Rate limits, as the next dispatch counts them")
        for column in ("action", "per", "used", "window", "busiest target"):
            table.add_column(column)
        for rate in rates:
            full = rate["used"] >= rate["limit"]
            used_text = f"{rate['used']} of {rate['limit']}"
            table.add_row(
                escape(rate["action"]),
                rate["per"],
                f"[red]{used_text}[/]" if full else used_text,
                rate["window"],
                escape(rate.get("target", "")),
            )
        console.print(table)


# ---- response steps: list, approve, deny -------------------------------------------------------

actions_app = typer.Typer(help="Response steps of an incident and their states.", no_args_is_help=True)
app.add_typer(actions_app, name="actions")
approvals_app = typer.Typer(help="Check an approval policy file.", no_args_is_help=True)
app.add_typer(approvals_app, name="approvals")
RoleOption = Annotated[str | None, typer.Option("--role", help="The role you answer in; defaults to $VIGIL_ROLE.")]
STATE_STYLE = {
    "awaiting_approval": "bold yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "bold red",
    "refused": "red",
    "denied": "red",
    "simulated": "magenta",
}


def _responder(method: str, path: str, body: Any = None) -> Any:
    return _answer_of(_request("responder", _settings().responder_url, method, path, body))


def _print_steps(steps: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(steps)} step(s)")
    for column in ("step id", "step", "target", "state", "why", "approvals", "check"):
        table.add_column(column, overflow="fold")
    for s in steps:
        given = len({a["actor"] for a in s["approvals"]})
        approvals = f"{given}/{s['approvals_required']}" if s["approvals_required"] else "-"
        why = escape(s["reason"] + (" [dry run]" if s["dry_run"] else ""))
        check = escape(s.get("validation") or "-")
        if s.get("validation") == "failed":
            check = f"[bold red]failed[/]: {escape(s.get('validation_reason', ''))}"
        table.add_row(
            *_plain(s["id"], s["name"], s["item"] or "-"), _styled(s["state"], STATE_STYLE), why, approvals, check
        )
    console.print(table)


@actions_app.command("list")
def actions_list(incident_id: str, as_json: JsonOption = False) -> None:
    """Every response step of an incident in plan order: state, why, approvals, and (with --json) its log."""
    steps = _responder("GET", f"/api/v1/incidents/{_full_id(incident_id)}/actions")
    if as_json:
        print(json.dumps(steps, indent=2))
        return
    _print_steps(steps)


@actions_app.command("run")
def actions_run(
    incident_id: str,
    step: Annotated[str, typer.Argument(help="<playbook>.<step>, from `vigil actions steps`.")],
    item: Annotated[
        str | None, typer.Option("--item", help="What the step acts on: an address, a host, a user, a domain…")
    ] = None,
    lease: Annotated[
        str | None, typer.Option("--lease", help="How long a reversible step holds before its undo: 30m, 4h, 2d.")
    ] = None,
    actor: ActorOption = None,
    role: RoleOption = None,
    note: NoteOption = "",
    as_json: JsonOption = False,
) -> None:
    """Run a playbook step on an incident now ("contain now"), beside its plan.

    The approval policy, the guardrails, the lease and the check after the action apply as to any step:
    it may wait for approval (`vigil approve`) or be refused, and says why.
    """
    body = {
        "step": step,
        "item": item,
        "lease": lease,
        "actor": actor or os.environ.get("VIGIL_ACTOR") or getpass.getuser(),
        "role": role or os.environ.get("VIGIL_ROLE", ""),
        "note": note,
    }
    made = _responder("POST", f"/api/v1/incidents/{_full_id(incident_id)}/actions", body)
    if as_json:
        print(json.dumps(made, indent=2))
        return
    _print_steps([made])


@actions_app.command("steps")
def actions_steps(as_json: JsonOption = False) -> None:
    """The playbook steps `vigil actions run` can run: what each does, what it acts on, its lease and risk."""
    runnable = _responder("GET", "/api/v1/playbooks/steps")
    if as_json:
        print(json.dumps(runnable, indent=2))
        return
    table = Table(title=f"{len(runnable)} step(s)")
    for column in ("step", "does", "acts on", "lease", "risk", "approval"):
        table.add_column(column, overflow="fold")
    for r in runnable:
        does = f"{r['name']} ({r['connector']} {r['action']})"
        table.add_row(*_plain(r["ref"], does, r["item"] or "the incident", r["lease"] or "-", r["risk"], r["approval"]))
    console.print(table)


def _answer(kind: str, step_id: str, actor: str | None, role: str | None, note: str) -> None:
    body = {
        "step_id": step_id,
        "actor": actor or os.environ.get("VIGIL_ACTOR") or getpass.getuser(),
        "role": role or os.environ.get("VIGIL_ROLE", ""),
        "note": note,
    }
    changed = _responder("POST", f"/api/v1/steps/{step_id}/{kind}", body)
    _print_steps(changed)


StepArgument = Annotated[
    str, typer.Argument(help="A step id from `vigil actions list`, or <incident>:<step> for all its items.")
]


@app.command()
def approve(step_id: StepArgument, actor: ActorOption = None, role: RoleOption = None, note: NoteOption = "") -> None:
    """Approve a response step waiting for approval; it runs when enough people have."""
    _answer("approve", step_id, actor, role, note)


@app.command()
def deny(
    step_id: StepArgument,
    reason: Annotated[str, typer.Option("--reason", help="Why not; kept on the step and the timeline.")],
    actor: ActorOption = None,
    role: RoleOption = None,
) -> None:
    """Deny a response step waiting for approval: it never runs."""
    _answer("deny", step_id, actor, role, reason)


lease_app = typer.Typer(help="Leases of reversible response actions (a temporary block).", no_args_is_help=True)
app.add_typer(lease_app, name="lease")


LEASE_STYLE = {"active": "green", "extended": "cyan", "permanent": "bold yellow", "revert_failed": "bold red"}


def _styled(state: str, styles: dict[str, str]) -> str:
    """A state in its style (one without a style, or one this CLI does not know, as it is)."""
    style = styles.get(state)
    return f"[{style}]{escape(state)}[/]" if style else escape(state)


def _when(text: str | None) -> str:
    return text[:19].replace("T", " ") if text else "-"


@lease_app.command("list")
def lease_list(
    incident_id: Annotated[str | None, typer.Argument(help="Only this incident's leases.")] = None,
    all_states: Annotated[bool, typer.Option("--all", help="Ended leases too (reverted).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Leases of reversible actions, soonest end first: state, end, offence, and who changed them last and why."""
    incident_id = _full_id(incident_id) if incident_id else None
    query = "&".join(
        q for q in (f"incident={incident_id}" if incident_id else "", "all=true" if all_states else "") if q
    )
    found = _responder("GET", "/api/v1/leases" + (f"?{query}" if query else ""))
    if as_json:
        print(json.dumps(found, indent=2))
        return
    table = Table(title=f"{len(found)} lease(s)")
    for column in ("step id", "action", "target", "state", "ends", "offence", "last change"):
        table.add_column(column, overflow="fold")
    for lease in found:
        change = f"{lease['changed_by']}: {lease['change_reason']}" if lease["change_reason"] else lease["changed_by"]
        table.add_row(
            *_plain(lease["step_id"], lease["action"], lease["target"] or "-"),
            _styled(lease["state"], LEASE_STYLE),
            _when(lease["due_at"]) if lease["state"] != "permanent" else "never",
            str(lease["offence"]),
            escape(change),
        )
    console.print(table)


@lease_app.command("make-permanent")
def lease_make_permanent(
    step_id: StepArgument,
    reason: Annotated[str, typer.Option("--reason", help="Why; kept with the lease.")],
    actor: ActorOption = None,
) -> None:
    """Keep a reversible action in force with no end: its undo runs only if the lease is revoked."""
    body = {"actor": _who(actor), "reason": reason, "permanent": True}
    _responder("POST", f"/api/v1/steps/{step_id}/lease", body)
    console.print(f"{escape(step_id)}: permanent (vigil lease revoke {escape(step_id)} undoes it)")


@lease_app.command("extend")
def lease_extend(
    step_id: StepArgument,
    by: Annotated[str, typer.Option("--by", help="How much longer it holds: 30m, 4h, 2d.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept on the step's log.")] = "",
    actor: ActorOption = None,
) -> None:
    """Keep a reversible action (a block, an isolation) in force longer; its undo moves later."""
    body = {"actor": _who(actor), "reason": reason, "extend": by}
    changed = _responder("POST", f"/api/v1/steps/{step_id}/lease", body)
    console.print(f"{escape(step_id)}: undone at {changed['undo_at'][:19]}")


@lease_app.command("revoke")
def lease_revoke(
    step_id: StepArgument,
    reason: Annotated[str, typer.Option("--reason", help="Why; kept on the step's log.")] = "",
    actor: ActorOption = None,
) -> None:
    """End a reversible action's lease now: its undo runs at once."""
    changed = _responder(
        "POST", f"/api/v1/steps/{step_id}/lease", {"actor": _who(actor), "reason": reason, "revoke": True}
    )
    console.print(f"{escape(step_id)}: lease revoked, undo sent {_when(changed['undo_at'])}")


recovery_app = typer.Typer(help="Recovery steps of an incident: who does them, by when, how far.", no_args_is_help=True)
app.add_typer(recovery_app, name="recovery")


@recovery_app.command("list")
def recovery_list(incident_id: str, as_json: JsonOption = False) -> None:
    """The incident's recovery steps (system, data, service, business): owner, due, state and check."""
    listed = _responder("GET", f"/api/v1/incidents/{_full_id(incident_id)}/actions")
    steps = [s for s in listed if s["phase"] == "recovery"]
    if as_json:
        print(json.dumps(steps, indent=2))
        return
    table = Table(title=f"{len(steps)} recovery step(s); required ones must end well before `recovered`")
    for column in ("step id", "recovery", "step", "owner", "due", "state", "check", "required"):
        table.add_column(column, overflow="fold")
    now = datetime.now().astimezone()
    for s in steps:
        overdue = s["due_at"] and s["state"] in ("planned", "awaiting_approval", "approved", "running")
        overdue = overdue and datetime.fromisoformat(s["due_at"]) < now
        due = _when(s["due_at"]) + (" [bold red]overdue[/]" if overdue else "")
        table.add_row(
            *_plain(
                s["id"],
                s["recovery"] or "-",
                s["name"] + (f": {s['item']}" if s["item"] else ""),
                s["owner"] or s["connector"],
            ),
            due,
            _styled(s["state"], STATE_STYLE),
            escape(s["validation"] or "-"),
            "yes" if s["required"] else "no",
        )
    console.print(table)


@recovery_app.command("done")
def recovery_done(
    step_id: StepArgument,
    note: Annotated[str, typer.Option("--note", help="What was done (or why it failed): the step's evidence.")],
    failed: Annotated[bool, typer.Option("--failed", help="It could not be done.")] = False,
    actor: ActorOption = None,
) -> None:
    """Say that a recovery step you own is done (or --failed), with what was done."""
    changed = _responder(
        "POST", f"/api/v1/steps/{step_id}/done", {"actor": _who(actor), "note": note, "failed": failed}
    )
    console.print(f"{escape(step_id)}: {escape(changed['state'])}")


@approvals_app.command("validate")
def approvals_validate(file: Path) -> None:
    """Check an approval policy file; print its rules in the order they are tried."""
    from services.responder.approvals import ApprovalsError, load_policy

    try:
        policy = load_policy(file)
    except (OSError, ApprovalsError) as exc:
        _fail(str(exc))
    for rule in policy.rules:
        when = rule.when.model_dump(mode="json", exclude_defaults=True) or "every step"
        console.print(f"{escape(rule.name)}: {rule.mode} when {escape(str(when))}")
    console.print(f"{escape(str(file))}: {len(policy.rules)} rule(s), valid")


# ---- incident tasks: list, add, done -----------------------------------------------------------

tasks_app = typer.Typer(
    help="Incident tasks per runbook phase: list them, add them, mark them done.", no_args_is_help=True
)
app.add_typer(tasks_app, name="tasks")


def _auth_headers() -> dict[str, str]:
    """The API token: VIGIL_API_TOKEN, else the one `vigil up` saved for the local user."""
    settings = _settings()
    if settings.api_token:
        return {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
    saved = settings.data_dir / "api.token"
    if saved.exists():
        return {"Authorization": f"Bearer {saved.read_text().strip()}"}
    return {}


# A request a service undid for a conflict is sent again this many times, when it says to within this long.
CONFLICT_RETRIES = 2
CONFLICT_RETRY_AFTER_MAX_S = 2


def _request(service: str, base_url: str, method: str, path: str, body: Any = None) -> httpx.Response:
    """Call a service's API with an idempotency key (and the token, when there is one); return its answer."""
    url = base_url.rstrip("/") + path
    headers = {"Idempotency-Key": str(uuid.uuid4()), **_auth_headers()}
    try:
        transport = httpx.HTTPTransport(retries=2)  # connection failures only; the key makes them safe
        with httpx.Client(transport=transport, timeout=10) as client:
            response = client.request(method, url, json=body, headers=headers)
            for _ in range(CONFLICT_RETRIES):
                # Undone for a conflict with concurrent work (503, a short Retry-After): sent again, same key.
                wait = response.headers.get("Retry-After", "")
                if response.status_code != 503 or not wait.isdigit() or int(wait) > CONFLICT_RETRY_AFTER_MAX_S:
                    break
                time.sleep(int(wait))
                response = client.request(method, url, json=body, headers=headers)
            return response
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the {service} at {url}: {exc}")


def _answer_of(response: httpx.Response) -> Any:
    """The answer's JSON; a refusal ends the command with the service's reason and status."""
    if response.status_code >= 400:
        _fail(f"{_refusal(response)} ({response.status_code})")
    return response.json()


def _refusal(response: httpx.Response) -> str:
    """Why a service refused a request, in words: its reason, each invalid field named, and what to do
    about a missing token."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    if isinstance(detail, list):  # the fields a request model refused (422)
        detail = "; ".join(_invalid_field(problem) for problem in detail)
    if response.status_code == 401 and "Authorization" not in response.request.headers:
        saved = (_settings().data_dir / "api.token").resolve()
        detail = f"{detail}; no token was sent: set VIGIL_API_TOKEN, or run where `vigil up` saved one ({saved})"
    return str(detail)


def _invalid_field(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)
    where = [str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path")]
    return f"{'.'.join(where) or 'the request'}: {problem.get('msg', 'invalid')}"


def _tasks_call(method: str, path: str, body: Any = None) -> httpx.Response:
    return _request("coordinator", _settings().coordinator_url, method, path, body)


def _task_due(task: dict[str, Any]) -> str:
    if task["due_at"]:
        due = task["due_at"][5:16].replace("T", " ")
        return f"[bold red]{due} overdue[/]" if task["overdue"] else due
    return "when the phase starts" if task["due_after_s"] and task["state"] == "open" else "-"


@tasks_app.command("list")
def tasks_list(incident_id: str, as_json: JsonOption = False) -> None:
    """An incident's tasks in phase order (* required): owner, deadline, state; and each phase's progress."""
    response = _tasks_call("GET", f"/api/v1/incidents/{incident_id}/tasks")
    if response.status_code == 404 and len(incident_id) < 36:  # perhaps the short id `incidents list` prints
        response = _tasks_call("GET", f"/api/v1/incidents/{_resolve_id(incident_id)}/tasks")
    listed = _answer_of(response)
    if as_json:
        print(json.dumps(listed, indent=2))
        return
    progress = listed["progress"]
    table = Table(title=f"{progress['done']} of {progress['total']} task(s) done, {progress['overdue']} overdue")
    table.caption = "* required: the incident's lifecycle waits for it"
    for column in ("id", "phase", "task", "owner", "due (UTC)", "state"):
        table.add_column(column, overflow="fold")
    for t in listed["tasks"]:
        state = {"done": f"[green]done[/] by {escape(t['done_by'] or '')}", "cancelled": "[dim]cancelled[/]"}.get(
            t["state"], "open"
        )
        title = t["title"] + (" *" if t["required"] else "")
        if ticket := t.get("ticket"):  # the tracker's ticket it became (ticketing.yaml)
            title += f"\n→ {ticket.get('ref', '')} {ticket.get('url', '')}".rstrip()
        table.add_row(str(t["id"]), *_plain(t["phase"], title, t["owner"]), _task_due(t), state)
    console.print(table)
    for p in progress["phases"]:
        late = f", [bold red]{p['overdue']} overdue[/]" if p["overdue"] else ""
        waiting = f", {p['required_open']} required still open" if p["required_open"] else ""
        console.print(f"  {escape(p['phase'])}: {p['done']}/{p['total']} done{late}{waiting}")


@tasks_app.command("done")
def tasks_done(
    task_id: Annotated[int, typer.Argument(help="A task id from `vigil tasks list`.")],
    note: NoteOption = "",
    actor: ActorOption = None,
) -> None:
    """Mark a task done, with a note for the timeline."""
    body = {"actor": actor or os.environ.get("VIGIL_ACTOR") or getpass.getuser(), "note": note}
    task = _answer_of(_tasks_call("POST", f"/api/v1/tasks/{task_id}/done", body))
    title, by = escape(task["title"]), escape(task["done_by"])
    console.print(f"task {task['id']} [b]{title}[/b] ({escape(task['phase'])}) is done by {by}")


@tasks_app.command("add")
def tasks_add(
    incident_id: str,
    title: Annotated[str, typer.Argument(help="What is to be done, in a line (up to 200 characters).")],
    description: Annotated[str, typer.Option(help="More about it: what done looks like, links.")] = "",
    owner: Annotated[
        str | None,
        typer.Option(
            help="A person (alice), a role (commander, scribe, communications, responder: whoever holds it), "
            "person:<name> or group:<name>; default the incident's commander."
        ),
    ] = None,
    due: Annotated[
        str | None, typer.Option(help="A duration from now (14d, 4h) or an ISO 8601 time with its offset.")
    ] = None,
    phase: Annotated[str, typer.Option(help="The runbook phase it belongs to.")] = "post_mortem",
    required: Annotated[bool, typer.Option("--required", help="The incident's lifecycle waits for it.")] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a task to an incident, such as a follow-up action the post-mortem agreed."""
    from services.coordinator.tasks import PHASES, due_time

    if phase not in PHASES:
        _fail(f"no phase {phase!r}; one of {', '.join(PHASES)}")
    if due is not None:
        try:  # checked here too, to say what is wrong plainly; the coordinator checks it again
            due_time(due, now=datetime.now(UTC))
        except ValueError as exc:
            _fail(str(exc))
    body = {
        "actor": actor or os.environ.get("VIGIL_ACTOR") or getpass.getuser(),
        "title": title,
        "description": description,
        "owner": owner,
        "due": due,
        "phase": phase,
        "required": required,
    }
    response = _tasks_call("POST", f"/api/v1/incidents/{incident_id}/tasks", body)
    if response.status_code == 404 and len(incident_id) < 36:  # perhaps the short id `incidents list` prints
        response = _tasks_call("POST", f"/api/v1/incidents/{_resolve_id(incident_id)}/tasks", body)
    task = _answer_of(response)
    if as_json:
        print(json.dumps(task, indent=2))
        return
    title_, owner_ = escape(task["title"] + (" *" if task["required"] else "")), escape(task["owner"])
    due_ = "due " + task["due_at"][:16].replace("T", " ") + " UTC" if task["due_at"] else "no due time"
    console.print(
        f"task {task['id']} [b]{title_}[/b] ({escape(task['phase'])}) added to incident "
        f"{escape(task['incident_id'])}: owner {owner_}, {due_}"
    )


@tasks_app.command("validate")
def tasks_validate(file: Path) -> None:
    """Check a task templates file; print how many templates each phase has."""
    from services.coordinator.tasks import load_templates
    from shared.yamlfile import YamlFileError

    try:
        templates = load_templates(file)
    except OSError as exc:
        _fail(f"{file}: cannot be read: {exc.strerror or exc}")
    except YamlFileError as exc:
        _fail(str(exc))
    phases: dict[str, int] = {}
    for template in templates:
        phases[template.phase] = phases.get(template.phase, 0) + 1
    console.print(escape(", ".join(f"{phase}: {count}" for phase, count in phases.items())))
    console.print(f"{escape(str(file))}: {len(templates)} task template(s), valid")


# ---- on call -----------------------------------------------------------------------------------

oncall_app = typer.Typer(help="On-call schedules: who is on call, now or at another time.", no_args_is_help=True)
app.add_typer(oncall_app, name="oncall")
OnCallFileOption = Annotated[
    Path | None,
    typer.Option("--file", dir_okay=False, help="An on-call file; default $VIGIL_ONCALL, else the shipped one."),
]


def _oncall_config(file: Path | None) -> Any:
    """Read the on-call file and its calendars; a calendar URL that cannot be fetched is left out, said so."""
    from services.coordinator.schedules import (
        DEFAULT_ONCALL,
        OnCallError,
        calendar_urls,
        fetch_calendars,
        load_oncall,
    )

    path = file or _settings().oncall_file or DEFAULT_ONCALL
    try:
        config = load_oncall(path)
    except OnCallError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    if not calendar_urls(config):
        return config

    async def fetch(url: str) -> bytes:
        async with httpx.AsyncClient(timeout=10, follow_redirects=True) as client:
            response = await client.get(url)
            response.raise_for_status()
            return response.content

    try:
        return asyncio.run(fetch_calendars(config, fetch))
    except OnCallError as exc:
        for problem in exc.problems:
            err.print(f"{path}:{problem} (shown without it)", markup=False, highlight=False, soft_wrap=True)
        return config


def _moment(text: str | None) -> datetime:
    """Now, or an ISO 8601 time; one without an offset is in this machine's time zone."""
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="--at") from exc
    return at if at.tzinfo is not None else at.astimezone()


@oncall_app.command("now")
def oncall_now(
    at: Annotated[
        str | None, typer.Option(help="Another time, ISO 8601: 2026-12-24T18:00 (your zone) or …T17:00Z.")
    ] = None,
    as_json: JsonOption = False,
    file: OnCallFileOption = None,
) -> None:
    """Show who is on call in every schedule: their layer, whom they cover, since and until when."""
    from services.coordinator.schedules import who_is_on_call

    config = _oncall_config(file)
    moment = _moment(at)
    shifts = who_is_on_call(config, moment)
    if as_json:
        print(json.dumps([{**s.__dict__, "starts": _iso(s.starts), "ends": _iso(s.ends)} for s in shifts], indent=2))
        return
    table = Table(title=f"on call at {moment.isoformat(timespec='minutes')}", box=None, pad_edge=False)
    table.add_column("schedule", overflow="fold")
    table.add_column("person", overflow="fold", min_width=12)
    table.add_column("layer", overflow="fold")
    table.add_column("since", no_wrap=True)
    table.add_column("until", no_wrap=True)
    for s in shifts:
        zone = config.schedules[s.schedule].time_zone

        def shown(moment: datetime | None, zone: Any = zone) -> str:
            return moment.astimezone(zone).strftime("%a %d %b %H:%M %Z") if moment else "-"

        person = f"{s.person} (for {s.covering})" if s.covering else s.person
        table.add_row(*_plain(s.schedule, person, s.layer, shown(s.starts), shown(s.ends)))
    console.print(table)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@oncall_app.command("validate")
def oncall_validate(file: Annotated[Path, typer.Argument(dir_okay=False)]) -> None:
    """Check an on-call file and the calendar files it names; each problem as FILE:LINE:COLUMN: where: why."""
    config = _oncall_config(file)
    layers = sum(len(s.layers) for s in config.schedules.values())
    shown = escape(str(file))
    console.print(  # one line, however long the path: a script greps for "valid"
        f"{shown}: {len(config.schedules)} schedule(s), {layers} layer(s), {len(config.routes)} route(s), valid",
        soft_wrap=True,
    )


# ---- dead letters ------------------------------------------------------------------------------

dlq_app = typer.Typer(
    help="Dead letters: records a service could not accept, with why; replay them once that is fixed.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")
DlqTopicOption = Annotated[str, typer.Option("--topic", help="alerts (vigil.alerts.dlq) or events (vigil.events.dlq).")]


def _dead_letters(which: str, *, limit: int | None = None) -> list[DeadLetter]:
    from aiokafka.errors import KafkaError

    from vigil import dlq

    if which not in dlq.DLQ_TOPICS:
        _fail(f"unknown dead-letter topic {which!r}; choose one of {', '.join(dlq.DLQ_TOPICS)}")
    letters: list[DeadLetter] = []
    try:
        letters = asyncio.run(dlq.read(_settings(), which, limit=limit))
    except (LookupError, TimeoutError, KafkaError) as exc:
        _fail(f"cannot read the dead letters: {exc}")
    return letters


@dlq_app.command("list")
def dlq_list(
    topic: DlqTopicOption = "alerts",
    limit: Annotated[int, typer.Option(min=1, help="The newest this many, oldest first.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List dead letters: when, which service, the reason and its code, where each came from, and what it held."""
    letters = _dead_letters(topic, limit=limit)
    if as_json:
        print(json.dumps([letter.as_json() for letter in letters], indent=2))
        return
    table = Table(title=f"{len(letters)} dead letter(s) on the {topic} dead-letter topic")
    for column in ("offset", "time", "service", "code", "reason", "from", "value"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        original = letter.as_json()["original"]
        table.add_row(
            *_plain(
                letter.position,
                letter.time.isoformat(timespec="seconds"),
                letter.header("vigil_dlq_service") or "",
                letter.code,
                letter.header("vigil_dlq_reason") or "",
                f"{original['topic']}[{original['partition']}]@{original['offset']}",
                letter.excerpt(60),
            )
        )
    console.print(table)


@dlq_app.command("replay")
def dlq_replay(
    offsets: Annotated[
        list[str] | None, typer.Argument(help="Offsets from `vigil dlq list` (PARTITION:OFFSET past partition 0).")
    ] = None,
    code: Annotated[str | None, typer.Option(help="Every dead letter with this reason code.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter of the topic.")] = False,
    topic: DlqTopicOption = "alerts",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be replayed; publish nothing.")] = False,
) -> None:
    """Publish dead letters again to the topic they came from, as they were, marked with vigil_replayed_from."""
    from aiokafka.errors import KafkaError

    from shared.topics import TopicNames
    from vigil import dlq

    if sum((bool(offsets), code is not None, everything)) != 1:
        _fail("name the dead letters by OFFSET..., --code CODE or --all (one of them)")
    try:
        positions = [dlq.parse_position(text) for text in offsets or ()]
    except ValueError:
        _fail(f"offsets are numbers, or PARTITION:OFFSET: {' '.join(offsets or ())}")
    chosen, missing = dlq.choose(_dead_letters(topic), positions=positions, code=code, everything=everything)
    for partition, offset in missing:
        err.print(f"[yellow]no dead letter at {offset if partition == 0 else f'{partition}:{offset}'}[/yellow]")
    settings = _settings()
    names = TopicNames(settings.topic_prefix)
    dead_letter_topics = {names(t) for t in dlq.DLQ_TOPICS.values()}
    stuck = [d for d in chosen if d.original_topic in (None, *dead_letter_topics) or d.value is None]
    for letter in stuck:
        err.print(f"[yellow]dead letter {escape(letter.position)} names no topic to go back to; left alone[/yellow]")
    truncated = [d for d in chosen if d not in stuck and d.header("vigil_dlq_truncated")]
    for letter in truncated:
        err.print(
            f"[yellow]dead letter {escape(letter.position)} holds only the head of a record too large to keep whole; "
            f"the record is at offset {escape(letter.header('vigil_dlq_offset') or '')} of "
            f"{escape(letter.original_topic or '')}; "
            "left alone[/yellow]"
        )
    stuck += truncated
    replayable = [d for d in chosen if d not in stuck]
    if replayable and not dry_run:
        try:
            asyncio.run(dlq.replay(settings, replayable))
        except (TimeoutError, KafkaError) as exc:
            _fail(f"cannot publish to the broker at {settings.kafka.bootstrap_servers}: {exc!r}")
    verb = "would replay" if dry_run else "replayed"
    for letter in replayable:
        console.print(
            f"{verb} {letter.position} ({letter.code}) to {letter.original_topic}: {letter.excerpt(60)}",
            markup=False,
            highlight=False,
        )
    console.print(f"{verb} {len(replayable)} dead letter(s)")
    if code is not None and not chosen:
        _fail(f"no dead letter has code {code!r}")
    if missing or stuck:
        raise typer.Exit(1)


# ---- alerts ------------------------------------------------------------------------------------

# Above this many records, `alert send` shows a progress bar.
PROGRESS_THRESHOLD = 300


def parse_records(body: bytes, *, format_name: str | None = None) -> tuple[list[Record], list[str]]:
    """Read one record, a JSON array of records or JSON Lines, each with its format's adapter.

    Return the records that can be read and why each other one cannot (numbered from 1).
    """
    from services.detector.adapters import Rejected, parse_record, storable
    from services.detector.api import Record, split_records

    records: list[Record] = []
    refused: list[str] = []
    for index, value in enumerate(split_records(body)):
        try:
            parsed = parse_record(value, format_name=format_name)
            records.append(Record(index=index, value=storable(value, parsed), parsed=parsed))
        except Rejected as exc:
            refused.append(f"record {index + 1}: {exc.reason} ({exc.code})")
    return records, refused


@alert_app.command("send")
def alert_send(
    file: Annotated[str, typer.Argument(help="A JSON record, a JSON array of records or JSON Lines; '-' reads stdin.")],
    format_name: Annotated[
        str | None, typer.Option("--format", help="Read every record as this format (default: each by its shape).")
    ] = None,
) -> None:
    """Publish alerts in any supported format to the raw alerts topic; records that cannot be read are not sent."""
    from services.detector.adapters import FORMATS

    if format_name is not None and format_name not in FORMATS:
        _fail(f"unknown format {format_name!r}; known formats: {', '.join(FORMATS)}")
    try:
        body = typer.get_binary_stream("stdin").read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        _fail(f"{file} cannot be read: {exc.strerror or exc}")
    records, refused = parse_records(body, format_name=format_name)
    for reason in refused:
        err.print(f"[yellow]refused[/yellow] {escape(reason)}")
    for record in records:
        if not record.parsed.alerts:
            err.print(f"record {record.index + 1} holds no alert: {'; '.join(record.parsed.skipped)}", markup=False)
    if records:
        asyncio.run(_publish_records(records))
    alerts = sum(len(record.parsed.alerts) for record in records)
    console.print(
        f"sent {alerts} alert(s) in {len(records)} record(s)" + (f", refused {len(refused)}" if refused else "")
    )
    if refused:
        raise typer.Exit(1)


async def _publish_records(records: Sequence[Record]) -> None:
    """Publish raw records as the HTTP ingest does (format header, entity key); return once all are stored."""
    from aiokafka.errors import KafkaError
    from rich.progress import Progress

    from services.detector.api import raw_headers, raw_key
    from shared.kafka import make_producer
    from shared.topics import ALERTS_RAW, TopicNames

    settings = _settings()
    producer = make_producer(settings, client_id="vigil-cli")
    try:
        await producer.start()
        topic = TopicNames(settings.topic_prefix)(ALERTS_RAW)
        with Progress(console=err, transient=True, disable=len(records) <= PROGRESS_THRESHOLD) as progress:
            task = progress.add_task("publishing", total=len(records))
            futures = []
            for record in records:
                future = await producer.send(
                    topic, key=raw_key(record.parsed), value=record.value, headers=raw_headers(record.parsed)
                )
                future.add_done_callback(lambda _: progress.advance(task))
                futures.append(future)
            await asyncio.gather(*futures)
    except KafkaError as exc:
        _fail(f"cannot publish to the broker at {settings.kafka.bootstrap_servers}: {exc!r}")
    finally:
        await producer.stop()


# ---- problem reports ---------------------------------------------------------------------------

REPORT_TEMPLATE = "\n# What did you see, where, since when? Lines starting with # are left out.\n"
REPORT_SEVERITIES = ("info", "low", "medium", "high", "critical")


def problem_report(
    *,
    reporter: str,
    description: str,
    service: str | None = None,
    contact: str | None = None,
    severity: str | None = None,
    host: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """The ``user_report`` record of a person's report (services/detector/adapters/user_report.py)."""
    report = {
        "reporter": reporter,
        "description": description,
        "affected_service": service,
        "contact": contact,
        "severity": severity,
        "host": host,
        "time": (time or datetime.now(UTC)).isoformat(),
    }
    return {"format": "user_report", "report": {k: v for k, v in report.items() if v}}


def _description_from_person() -> str:
    stdin = typer.get_text_stream("stdin")
    if not stdin.isatty():
        return stdin.read()
    import click

    written = click.edit(REPORT_TEMPLATE) or ""
    return "\n".join(line for line in written.splitlines() if not line.startswith("#"))


@app.command("report-problem")
def report_problem(
    service_name: Annotated[str | None, typer.Option("--service", help="The service affected, as you name it.")] = None,
    description: Annotated[
        str | None, typer.Option(help="What you saw; default: read from stdin, or written in $EDITOR.")
    ] = None,
    contact: Annotated[str | None, typer.Option(help="How to reach you (phone, chat handle).")] = None,
    severity: Annotated[str | None, typer.Option(help=f"How bad it is: {', '.join(REPORT_SEVERITIES)}.")] = None,
    host: Annotated[str | None, typer.Option(help="The machine concerned, if you know it.")] = None,
    reporter: Annotated[str | None, typer.Option(help="Who reports; defaults to $VIGIL_ACTOR or your login.")] = None,
) -> None:
    """Report a problem you noticed: it reaches the detector as an alert, like any monitoring tool's."""
    if severity is not None and severity.lower() not in REPORT_SEVERITIES:
        _fail(f"severity {severity!r} is not one of {', '.join(REPORT_SEVERITIES)}")
    text = (description if description is not None else _description_from_person()).strip()
    if not text:
        _fail("no description: say what you saw with --description, on stdin, or in the editor")
    record = problem_report(
        reporter=reporter or os.environ.get("VIGIL_ACTOR") or getpass.getuser(),
        description=text,
        service=service_name,
        contact=contact,
        severity=severity.lower() if severity else None,
        host=host,
    )
    settings = _settings()
    url = f"{settings.detector_url.rstrip('/')}/api/v1/alerts"
    headers = (
        {"Authorization": f"Bearer {settings.ingest_token.get_secret_value()}"}
        if settings.ingest_token
        else _auth_headers()
    )
    try:
        # Connection failures only are retried: the same report sent twice is one alert seen twice.
        with httpx.Client(transport=httpx.HTTPTransport(retries=2), timeout=15) as client:
            response = client.post(url, params={"format": "user_report"}, json=record, headers=headers)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the detector at {url}: {exc}")
    if response.status_code != 202:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        _fail(f"the detector refused the report ({response.status_code}): {detail}")
    (accepted,) = response.json()["records"]
    console.print(f"problem reported: [b]{escape(', '.join(accepted['alerts']))}[/b]")


# ---- incidents ---------------------------------------------------------------------------------


def _get(path: str, **params: Any) -> Any:
    url = _settings().reporter_url.rstrip("/") + path
    try:
        params = {k: v for k, v in params.items() if v is not None}
        response = httpx.get(url, params=params, headers=_auth_headers(), timeout=10)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the reporter at {url}: {exc}")
    if response.status_code == 404:
        _fail(response.json().get("detail", "not found"))
    return _answer_of(response)


SEVERITY_STYLE = {"SEV1": "bold red", "SEV2": "red", "SEV3": "yellow", "SEV4": "green"}


@incidents_app.command("list")
def incidents_list(
    as_json: JsonOption = False,
    state: Annotated[str | None, typer.Option(help="Only incidents in this state.")] = None,
    severity: Annotated[str | None, typer.Option(help="Only incidents of this severity (SEV1..SEV4).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
) -> None:
    """List incidents, newest first."""
    incidents = _get("/api/v1/incidents", state=state, severity=severity, limit=limit)
    if as_json:
        print(json.dumps(incidents, indent=2))
        return
    table = Table(title=f"{len(incidents)} incident(s)")
    table.add_column("id", no_wrap=True)
    table.add_column("sev", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("type", overflow="fold")
    table.add_column("alerts", justify="right", no_wrap=True)
    table.add_column("title", min_width=20, ratio=2, overflow="fold")
    table.add_column("commander", overflow="fold")
    table.add_column("created", no_wrap=True)
    for i in incidents:
        table.add_row(
            escape(i["id"][:8]),
            _styled(i["severity"], SEVERITY_STYLE),
            escape(i["state"] + (f" (merged into {i['merged_into'][:8]})" if i.get("merged_into") else "")),
            escape(i["type"]),
            str(i["alert_count"]),
            escape(i["title"]),
            escape(i["commander"] or "-"),
            (i["created_at"] or "")[5:16].replace("T", " "),
        )
    console.print(table)


# Incidents a short id is looked up among, by the reporter (whose list takes an id prefix): one is an answer,
# several a refusal naming some.
SHORT_ID_MATCHES = 10


def _full_id(given: str) -> str:
    """The incident whose id starts with ``given`` (the short ids `incidents list` prints), where the reporter
    knows exactly one; ``given`` as it is where it knows none (or cannot be reached), for the service asked to
    judge; a refusal where it knows several, rather than an answer about none of them."""
    if len(given) >= 36:
        return given
    try:
        response = httpx.get(
            _settings().reporter_url.rstrip("/") + "/api/v1/incidents",
            params={"id_prefix": given, "limit": SHORT_ID_MATCHES},
            headers=_auth_headers(),
            timeout=10,
        )
        listed = response.json() if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        return given
    matches = [str(i["id"]) for i in listed if isinstance(i, dict) and str(i.get("id", "")).startswith(given)]
    if given in matches or not matches:
        return given
    if len(matches) > 1:
        _fail(f"more than one incident matches {given!r}: {', '.join(m[:12] for m in matches[:5])}; give more of it")
    return matches[0]


def _resolve_id(prefix: str) -> str:
    """Accept the short ids `incidents list` prints."""
    if len(prefix) >= 36:
        return prefix
    listed = _get("/api/v1/incidents", id_prefix=prefix, limit=SHORT_ID_MATCHES)
    matches = [i["id"] for i in listed if i["id"].startswith(prefix)]
    if len(matches) != 1:
        _fail(f"{'no' if not matches else 'more than one'} incident matches {prefix!r}")
    return str(matches[0])


@incidents_app.command("show")
def incidents_show(incident_id: str, as_json: JsonOption = False) -> None:
    """Show one incident with its alerts, analysis, plan and timeline."""
    incident = _get(f"/api/v1/incidents/{_resolve_id(incident_id)}")
    if as_json:
        print(json.dumps(incident, indent=2))
        return
    sev = _styled(incident["severity"], SEVERITY_STYLE)
    console.print(
        Panel(
            f"[b]{escape(incident['title'])}[/b]\n"
            f"{sev} {escape(incident['type'])} - {escape(incident['state'])} - "
            f"commander {escape(incident['commander'] or '-')}\n"
            f"why: {escape(incident['classification_reason'])}\nseverity: {escape(incident['severity_reason'])}\n"
            f"hosts: {escape(', '.join(incident['hosts']) or '-')}   "
            f"users: {escape(', '.join(incident['users']) or '-')}"
            + (f"\n[b]merged into {escape(incident['merged_into'])}[/b]" if incident.get("merged_into") else "")
            + (f"\nmerged in: {escape(', '.join(incident['merged']))}" if incident.get("merged") else ""),
            title=escape(incident["id"]),
        )
    )
    if analysis := incident.get("analysis"):
        console.print(f"[b]analysis[/b] {escape(analysis['summary'])}")
        # Known-bad indicators first: they are what a commander acts on.
        ranked = sorted(analysis["indicators"], key=lambda i: (i.get("verdict") is None, i["kind"], i["value"]))
        for ind in ranked[:20]:
            said = ""
            if ind.get("verdict"):
                tags = f", {', '.join(ind.get('tags', []))}" if ind.get("tags") else ""
                feeds = escape(f"({', '.join(ind.get('feeds', []))}{tags})")
                said = f"  [red]{escape(ind['verdict'])}[/] {feeds}"
            console.print(f"  {escape(ind['kind'].rjust(7))}  {escape(ind['value'])}{said}")
        if impact := analysis.get("impact"):
            print_impact(console, impact)
        if recommended := analysis.get("severity_recommendation"):
            reasons = escape("; ".join(recommended["reasons"]))
            console.print(f"[b]recommended[/b] {escape(recommended['severity'])}: {reasons}")
        print_threat_analysis(console, analysis)
    if incident.get("plan"):
        plan = incident["plan"]
        console.print(f"[b]plan[/b] {escape(plan['playbook_title'])} ({escape(plan['playbook'])})")
        for action in plan["actions"]:
            phase = escape(f"[{action['phase']}]")  # brackets are markup to rich
            console.print(f"  {phase} {escape(action['name'])} - {escape(action['status'])}")
    alerts = Table(title=f"{len(incident.get('alerts', []))} alert(s)")
    for column in ("time", "format", "alert", "severity", "status", "repeats", "typed by", "joined by"):
        alerts.add_column(column, overflow="fold")
    for alert in incident.get("alerts", []):
        tool_severity = f" ({alert['source_severity']})" if alert.get("source_severity") else ""
        alerts.add_row(
            alert["time"][:19],
            escape(alert.get("format", "native")),
            f"{escape(alert['title'])} [dim]{escape(alert['key'])}[/]",
            escape(alert["severity"] + tool_severity),
            "[dim]resolved[/]" if alert.get("status") == "resolved" else escape(alert.get("status", "firing")),
            str(alert.get("repeats", 0)),
            escape(alert.get("type_rule") or "-"),
            _joined_by(alert.get("correlation")),
        )
    console.print(alerts)
    table = Table(title="timeline")
    for column in ("time", "by", "event"):
        table.add_column(column, overflow="fold")
    for entry in incident["timeline"]:
        # A merged incident's history shows in its survivor's timeline, marked with where it happened.
        origin = entry.get("incident_id", incident["id"])
        said = escape(entry["summary"])
        said = said if origin == incident["id"] else f"[dim]({escape(origin[:8])})[/] {said}"
        table.add_row(entry["time"][:23], escape(entry["actor"]), said)
    console.print(table)


def _joined_by(why: dict[str, Any] | None) -> str:
    """Why an alert joined its incident: the rule, its key, and for threshold rules what made it hold."""
    if not why:
        return "-"
    key = ", ".join(f"{name}={value}" for name, value in why.get("key", {}).items())
    said = f"{why['rule']} ({key})" if key else why["rule"]
    if why.get("triggered_by"):
        said += f"; opened by {len(why['triggered_by'])} alert(s): {', '.join(why['triggered_by'][:3])}"
        said += " ..." if len(why["triggered_by"]) > 3 else ""
    return f"{escape(said)}\n[dim]{escape(why['reason'])}[/]" if why.get("reason") else escape(said)


@incidents_app.command("related")
def incidents_related(
    incident_id: str,
    since: Annotated[str, typer.Option(help="How far back to look: 24h, 30d, 8w.")] = "30d",
    limit: Annotated[int, typer.Option(help="At most this many incidents, and as many held-back alerts.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Hunt for the same activity elsewhere: other incidents naming this one's indicators, hosts or users,
    and alerts about its hosts that silences, maintenance windows or inhibitions held back."""
    incident = _resolve_id(incident_id)
    found = _get(f"/api/v1/incidents/{incident}/related", since=since, limit=limit)
    if as_json:
        print(json.dumps(found, indent=2))
        return
    table = Table(title=f"{len(found['incidents'])} other incident(s) since {found['since'][:16].replace('T', ' ')}")
    for column in ("id", "sev", "state", "title", "shares", "created"):
        table.add_column(column, overflow="fold")
    for i in found["incidents"]:
        shared = i["shared"]
        shares = "; ".join(
            f"{what} {', '.join(values[:5])}" + (f" and {len(values) - 5} more" if len(values) > 5 else "")
            for what, values in shared.items()
            if values
        )
        table.add_row(
            escape(i["id"][:8]),
            _styled(i["severity"], SEVERITY_STYLE),
            escape(i["state"]),
            escape(i["title"]),
            escape(shares),
            i["created_at"][5:16].replace("T", " "),
        )
    console.print(table)
    if found["held_back"]:
        held = Table(title=f"{len(found['held_back'])} alert(s) about its hosts held back from incidents")
        for column in ("time", "host", "source", "title", "held back by"):
            held.add_column(column, overflow="fold")
        for a in found["held_back"]:
            by = a["suppressed_by"]
            held.add_row(
                a["time"][5:16].replace("T", " "),
                *_plain(a.get("host") or "-", a["source"], a["title"], f"{by['kind']} {by['name']}: {by['reason']}"),
            )
        console.print(held)
    if found["incidents"]:
        others = " ".join(i["id"][:8] for i in found["incidents"][:5])
        console.print(f"the same attack? vigil incidents merge {escape(incident[:8])} {escape(others)}")


def _detector(method: str, path: str, body: Any = None) -> Any:
    return _answer_of(_request("detector", _settings().detector_url, method, path, body))


@incidents_app.command("merge")
def incidents_merge(
    survivor: Annotated[str, typer.Argument(help="The incident that carries on.")],
    others: Annotated[list[str], typer.Argument(help="The incidents merged into it; they end, pointing at it.")],
    note: NoteOption = "",
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Merge incidents into one survivor: their alerts, keys and history carry over to it."""
    incidents = [_resolve_id(other) for other in others]
    body = {"actor": _who(actor), "incidents": incidents, "note": note}
    result = _detector("POST", f"/api/v1/incidents/{_resolve_id(survivor)}/merge", body)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(
        f"merged {escape(', '.join(result['merged']))} into [b]{escape(result['incident_id'])}[/b]: "
        f"{result['alerts_moved']} alert(s) moved, {result['alert_count']} in all, {escape(result['severity'])}"
    )


@incidents_app.command("detach")
def incidents_detach(
    incident_id: Annotated[str, typer.Argument(help="The incident the alerts leave.")],
    alerts: Annotated[list[str], typer.Argument(help="Alert keys, as `vigil incidents show` lists them.")],
    note: NoteOption = "",
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Detach alerts from an incident into a new incident of their own."""
    body = {"actor": _who(actor), "alerts": alerts, "note": note}
    result = _detector("POST", f"/api/v1/incidents/{_resolve_id(incident_id)}/detach", body)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(
        f"{len(result['detached'])} alert(s) detached from {escape(result['incident_id'])} into "
        f"[b]{escape(result['new_incident_id'])}[/b]; {result['alert_count']} alert(s) stay"
    )


RawOption = Annotated[
    str | None, typer.Option("--raw", metavar="ALERT_KEY", help="Print this alert's raw record (the tool's own JSON).")
]


def _analyzer(path: str, **params: Any) -> Any:
    url = _settings().analyzer_url.rstrip("/") + path
    try:
        response = httpx.get(url, params=params, headers=_auth_headers(), timeout=30)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the analyzer at {url}: {exc}")
    if response.status_code == 404:
        _fail(response.json().get("detail", "not found"))
    return _answer_of(response)


# ---- the evidence register ----------------------------------------------------------------------

evidence_app = typer.Typer(
    help="An incident's evidence register: what was collected, its SHA-256, where it is kept, who holds it.",
    no_args_is_help=True,
)
app.add_typer(evidence_app, name="evidence")


def _analyzer_call(method: str, path: str, body: Any = None) -> Any:
    return _answer_of(_request("analyzer", _settings().analyzer_url, method, path, body))


def _sha256_of(file: Path) -> tuple[str, int]:
    """The file's SHA-256 and size, read a megabyte at a time (a disk image does not fit in memory)."""
    digest, size = hashlib.sha256(), 0
    try:
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        _fail(f"{file}: cannot be read: {exc.strerror or exc}")
    return digest.hexdigest(), size


def _print_register(items: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(items)} item(s) of evidence")
    for column in ("#", "item", "sha-256", "kept at", "custodian", "chain of custody"):
        table.add_column(column, overflow="fold")
    for item in items:
        chain = "; ".join(
            f"{c['at'][:16].replace('T', ' ')} {c['action']} by {c['actor']}"
            + (f" -> {c['custodian']}" if c["action"] == "transferred" else "")
            + ("" if c["verified"] is None else (" (matched)" if c["verified"] else " (DID NOT MATCH)"))
            for c in item["custody"]
        )
        table.add_row(
            str(item["id"]), *_plain(item["name"], item["sha256"], item["location"], item["custodian"], chain)
        )
    console.print(table)


@evidence_app.command("add")
def evidence_add(
    incident_id: str,
    file: Annotated[Path, typer.Argument(help="The item as collected: its SHA-256 and size are computed here.")],
    name: Annotated[str | None, typer.Option(help="What it is; the file's name by default.")] = None,
    location: Annotated[
        str | None, typer.Option(help="Where it is kept (a path, an object store URI); this host's path by default.")
    ] = None,
    description: Annotated[str, typer.Option(help="How it was collected, from what.")] = "",
    actor: ActorOption = None,
    note: NoteOption = "",
    as_json: JsonOption = False,
) -> None:
    """Register an item collected for an incident (a memory dump, a disk image, a log export), in your custody."""
    sha256, size = _sha256_of(file)
    body = {
        "name": name or file.name,
        "sha256": sha256,
        "size_bytes": size,
        "location": location or f"{socket.gethostname()}:{file.resolve()}",
        "description": description,
        "actor": _who(actor),
        "note": note,
    }
    item = _analyzer_call("POST", f"/api/v1/incidents/{_resolve_id(incident_id)}/evidence-register", body)
    if as_json:
        print(json.dumps(item, indent=2))
        return
    _print_register([item])


@evidence_app.command("list")
def evidence_list(incident_id: str, as_json: JsonOption = False) -> None:
    """The incident's evidence register, each item with its chain of custody."""
    items = _analyzer_call("GET", f"/api/v1/incidents/{_resolve_id(incident_id)}/evidence-register")
    if as_json:
        print(json.dumps(items, indent=2))
        return
    _print_register(items)


@evidence_app.command("transfer")
def evidence_transfer(
    item_id: int,
    to: Annotated[str, typer.Option("--to", help="Who holds it from now.")],
    actor: ActorOption = None,
    note: NoteOption = "",
) -> None:
    """Hand an item to another custodian; the chain of custody says who, when and why."""
    item = _analyzer_call(
        "POST", f"/api/v1/evidence-register/{item_id}/transfer", {"to": to, "actor": _who(actor), "note": note}
    )
    _print_register([item])


@evidence_app.command("verify")
def evidence_verify(
    item_id: int,
    file: Annotated[Path, typer.Argument(help="The item as kept now: its SHA-256 is computed here.")],
    actor: ActorOption = None,
    note: NoteOption = "",
) -> None:
    """Check an item as kept against its registered SHA-256; the outcome goes on its chain and the timeline."""
    sha256, _ = _sha256_of(file)
    item = _analyzer_call(
        "POST", f"/api/v1/evidence-register/{item_id}/verify", {"sha256": sha256, "actor": _who(actor), "note": note}
    )
    _print_register([item])
    if not item["matched"]:
        _fail(f"{file} does not match item {item_id}: its SHA-256 is {sha256}, registered {item['sha256']}")
    console.print(f"{escape(str(file))} matches item {item_id}")


@incidents_app.command("evidence")
def incidents_evidence(incident_id: str, raw: RawOption = None, as_json: JsonOption = False) -> None:
    """The evidence timeline: every alert in time order with its source, host, user and what it names."""
    incident_id = _resolve_id(incident_id)
    if raw is not None:
        alert = _analyzer(f"/api/v1/incidents/{incident_id}/evidence/{quote(raw, safe=':/@')}")
        if alert.get("raw_cut"):
            err.print("[yellow]the record was larger than an event carries: its first fields, flattened[/]")
        print(json.dumps(alert if as_json else alert.get("raw"), indent=2, ensure_ascii=False))
        return
    alerts: list[dict[str, Any]] = []
    page = _analyzer(f"/api/v1/incidents/{incident_id}/evidence")
    alerts += page["alerts"]
    while page["next"]:
        page = _analyzer(f"/api/v1/incidents/{incident_id}/evidence", after=page["next"])
        alerts += page["alerts"]
    if as_json:
        print(json.dumps(alerts, indent=2, ensure_ascii=False))
        return
    table = Table(
        title=f"evidence of {escape(incident_id)}: {len(alerts)} alert(s); vigil incidents evidence ID --raw KEY"
    )
    for column in ("time", "source", "host", "user", "alert", "names"):
        table.add_column(column, overflow="fold")
    for a in alerts:
        named = dict.fromkeys(
            f"{escape(s['kind'])} {escape(s['value'][:80])}" + (" [dim](internal)[/]" if s["internal"] else "")
            for s in a["sightings"]
        )
        table.add_row(
            a["time"][:19].replace("T", " "),
            escape(f"{a['source']} ({a['format']})"),
            escape(a["host"] or "-"),
            escape(a["user"] or "-"),
            f"{escape(a['title'])} [dim]{escape(a['alert_key'])}[/]",
            "\n".join(named) or "-",
        )
    console.print(table)


def _who(actor: str | None) -> str:
    return actor or os.environ.get("VIGIL_ACTOR") or getpass.getuser()


def _coordinator(method: str, path: str, body: Any = None) -> Any:
    return _answer_of(_request("coordinator", _settings().coordinator_url, method, path, body))


def _command(kind: str, incident_id: str, body: dict[str, Any], as_json: bool = False) -> None:
    result = _coordinator("POST", f"/api/v1/incidents/{_resolve_id(incident_id)}/{kind}", body)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    resolution = f" ({result['resolution']})" if result["state"] == "resolved" and result["resolution"] else ""
    console.print(
        f"incident {escape(result['incident_id'])} is [b]{escape(result['state'])}[/b]{escape(resolution)}, "
        f"{escape(result['severity'])}, commander {escape(result['commander'] or '-')}"
    )


ReasonOption = Annotated[str, typer.Option("--reason", help="Why; kept on the timeline.")]


@app.command()
def ack(incident_id: str, actor: ActorOption = None, note: NoteOption = "", as_json: JsonOption = False) -> None:
    """Acknowledge an incident: you are on it."""
    _command("ack", incident_id, {"actor": _who(actor), "note": note}, as_json)


@app.command()
def resolve(
    incident_id: str,
    resolution: Annotated[
        str, typer.Option(help="How it ended: fixed, false_positive, duplicate, risk_accepted.")
    ] = "fixed",
    actor: ActorOption = None,
    note: NoteOption = "",
    as_json: JsonOption = False,
) -> None:
    """Resolve an incident, saying how it ended."""
    _command("resolve", incident_id, {"actor": _who(actor), "note": note, "resolution": resolution}, as_json)


@app.command()
def state(
    incident_id: str,
    to_state: Annotated[str | None, typer.Argument(metavar="STATE", help="Where to; none: show the choices.")] = None,
    reason: ReasonOption = "",
    resolution: Annotated[str | None, typer.Option(help="On resolving: how it ended.")] = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move an incident through its lifecycle (triaged, contained, eradicated, recovered, closed, …)."""
    if to_state is not None:
        body = {"actor": _who(actor), "to_state": to_state, "note": reason, "resolution": resolution}
        _command("state", incident_id, body, as_json)
        return
    lifecycle = _coordinator("GET", f"/api/v1/incidents/{_resolve_id(incident_id)}/lifecycle")
    if as_json:
        print(json.dumps(lifecycle, indent=2))
        return
    console.print(f"incident {escape(lifecycle['incident_id'])} is [b]{escape(lifecycle['state'])}[/b]")
    for name, target in lifecycle["allowed"].items():
        needs = " --resolution TEXT" if target == "resolved" else ""  # how it ended: asked of every resolve
        console.print(escape(f"  {name}: vigil state {incident_id} {target}{needs}"))
    table = Table(title="moves")
    for column in ("at", "from", "to", "by", "why"):
        table.add_column(column, overflow="fold")
    for t in lifecycle["transitions"]:
        why = t["reason"] + (f" [{t['resolution']}]" if t["resolution"] else "")
        table.add_row(*_plain(t["at"][:19], t["from_state"] or "-", t["to_state"], t["actor"], why))
    console.print(table)


@app.command()
def severity(
    incident_id: str,
    to: Annotated[str, typer.Argument(metavar="SEVERITY", help="SEV1 … SEV4.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; required.")],
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set an incident's severity; the detector's later view is then only offered, never applied over it."""
    _command("edit", incident_id, {"actor": _who(actor), "reason": reason, "severity": to.upper()}, as_json)


@app.command()
def edit(
    incident_id: str,
    reason: Annotated[str, typer.Option("--reason", help="Why; required.")],
    title: Annotated[str | None, typer.Option(help="A new title.")] = None,
    incident_type: Annotated[
        str | None,
        typer.Option("--type", help="security_breach, system_compromise, data_leak, service_disruption, unknown."),
    ] = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change an incident's title or type, saying why."""
    body = {"actor": _who(actor), "reason": reason, "title": title, "type": incident_type}
    _command("edit", incident_id, body, as_json)


@app.command()
def note(
    incident_id: str,
    text: str,
    status_update: Annotated[
        bool,
        typer.Option(
            "--status-update",
            help="Say where the incident stands: the commander, the people with a role and the severity's "
            "stakeholders hear it, and the next reminder to send one is counted from it.",
        ),
    ] = False,
    went_well: Annotated[
        bool, typer.Option("--went-well", help="A lesson for the post-mortem: something that went well.")
    ] = False,
    went_badly: Annotated[
        bool, typer.Option("--went-badly", help="A lesson for the post-mortem: something that went badly.")
    ] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a note to an incident's timeline, post a status update, or record a lesson for its post-mortem."""
    if sum((status_update, went_well, went_badly)) > 1:
        _fail("a note is one of --status-update, --went-well or --went-badly")
    lesson = "went_well" if went_well else "went_badly" if went_badly else None
    body = {"actor": _who(actor), "note": text, "status_update": status_update, "lesson": lesson}
    _command("notes", incident_id, body, as_json)


@app.command()
def assign(
    incident_id: str,
    person: str,
    role: Annotated[str, typer.Option(help="commander, scribe, communications, responder, …")] = "commander",
    note: NoteOption = "",
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a person a role on an incident; a new commander is paged with everything gathered."""
    _command("assign", incident_id, {"actor": _who(actor), "person": person, "role": role, "note": note}, as_json)


# ---- events ------------------------------------------------------------------------------------


@events_app.command("tail")
def events_tail(
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest event kept.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Follow incident events as they happen."""
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaError

    from shared import cloudevents
    from shared.errors import InvalidMessage
    from shared.kafka import make_consumer
    from shared.topics import ANALYSES, COORDINATION, EFFECTS, INCIDENTS, RESPONSES, TopicNames

    async def tail() -> None:
        settings = _settings()
        names = TopicNames(settings.topic_prefix)
        consumer = make_consumer(settings, group_id=None)
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            _fail(f"cannot reach the broker at {settings.kafka.bootstrap_servers}: {exc}")
        try:
            partitions = [
                TopicPartition(names(t), p)
                for t in (INCIDENTS, ANALYSES, RESPONSES, COORDINATION, EFFECTS)
                for p in (consumer.partitions_for_topic(names(t)) or await _partitions(consumer, names(t)))
            ]
            consumer.assign(partitions)
            if from_beginning:
                await consumer.seek_to_beginning(*partitions)
            else:
                await consumer.seek_to_end(*partitions)
            async for record in consumer:
                try:
                    event = cloudevents.decode(record.value, record.headers)
                except InvalidMessage as exc:
                    err.print(f"[yellow]unreadable event on {escape(record.topic)}: {escape(exc.reason)}[/yellow]")
                    continue
                if as_json:
                    print(json.dumps({**event.model_dump(mode="json")}), flush=True)
                else:
                    from shared.timeline import timeline_entry

                    entry = timeline_entry(event)
                    console.print(
                        f"[dim]{event.time:%H:%M:%S}[/dim] [cyan]{escape(event.subject[:8])}[/cyan] "
                        f"[b]{escape(entry.actor)}[/b] {escape(entry.summary)}"
                    )
        finally:
            await consumer.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tail())


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # the assign() API needs known partitions
    return set(consumer.partitions_for_topic(topic) or ())


# ---- threat intelligence -----------------------------------------------------------------------

intel_app = typer.Typer(
    help="Threat-intelligence feeds: load one, look a value up, see and refresh the scheduled ones.",
    no_args_is_help=True,
)
app.add_typer(intel_app, name="intel")


@intel_app.command("load")
def intel_load(
    file: Annotated[Path, typer.Argument(exists=True, help="The feed: a file, or a MISP feed folder.")],
    source: Annotated[str, typer.Option(help="The feed's name; loading it again replaces what it listed.")],
    feed_format: Annotated[str, typer.Option("--format", help="list, csv, stix or misp.")],
    verdict: Annotated[str, typer.Option(help="malicious, suspicious or benign-listed.")] = "malicious",
    confidence: Annotated[int, typer.Option(min=0, max=100, help="0-100, where the feed does not say.")] = 50,
    kind: Annotated[str | None, typer.Option(help="For a list of one kind; otherwise inferred.")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Add to what the feed listed before.")] = False,
) -> None:
    """Parse a feed (all of it or nothing, but for values too long to keep) and store it in one transaction."""
    from services.analyzer import intel

    if feed_format not in intel.FORMATS:
        _fail(f"unknown format {feed_format!r}; choose one of {', '.join(intel.FORMATS)}")
    if verdict not in intel.VERDICTS:
        _fail(f"unknown verdict {verdict!r}; choose one of {', '.join(intel.VERDICTS)}")
    if kind is not None and kind not in intel.KINDS:
        _fail(f"unknown kind {kind!r}; choose one of {', '.join(intel.KINDS)}")
    defaults = intel.FeedDefaults(verdict, confidence)
    try:
        if file.is_dir():
            if feed_format != "misp":
                _fail("a folder is read as a MISP feed: give --format misp")
            entries = intel.read_misp_feed(file, defaults=defaults)
        else:
            entries = intel.parse_feed(file.read_text(), feed_format=feed_format, defaults=defaults, kind=kind)
    except intel.IntelError as exc:
        _fail(f"{file}: {exc}")
    if (passed_over := entries.summary()) is not None:
        err.print(f"{file}: {passed_over}", markup=False, highlight=False, soft_wrap=True)
    from services.analyzer import feeds, retrohunt

    async def load(conn: Any) -> tuple[int, list[str]]:
        # The incidents whose indicators the feed now lists are analysed again: set with the load, or neither.
        async with conn.transaction():
            loaded = await intel.load_feed(conn, source=source, entries=entries, replace=not keep)
            return loaded, await retrohunt.hunt(conn, source=source, service=feeds.SERVICE)

    loaded, rechecked = asyncio.run(_on_database(load))
    console.print(f"{loaded} entries loaded into {source}", markup=False, highlight=False)
    if rechecked:
        console.print(
            f"{len(rechecked)} incident(s) name what it lists: analysed again ({', '.join(rechecked[:10])}"
            + (f" and {len(rechecked) - 10} more)" if len(rechecked) > 10 else ")"),
            markup=False,
            highlight=False,
        )


@intel_app.command("feeds")
def intel_feeds(as_json: JsonOption = False) -> None:
    """The feeds intel.yaml configures: last refresh, entries, next refresh and the last error."""
    from services.analyzer import feeds

    rows = asyncio.run(_on_database(feeds.status))
    if as_json:
        print(json.dumps([{k: _iso(v) if isinstance(v, datetime) else v for k, v in dict(r).items()} for r in rows]))
        return
    if not rows:
        console.print("no feed configured (services/analyzer/intel.yaml, VIGIL_INTEL_CONFIG)", markup=False)
    for r in rows:
        every = f"every {r['refresh_minutes']} min" if r["configured"] else "no longer configured"
        console.print(
            f"{r['name']}  {r['format']}  {r['location']}  {every}", markup=False, highlight=False, soft_wrap=True
        )
        last = _iso(r["last_success_at"]) or "never"
        upcoming = _iso(r["next_refresh_at"]) or "-"
        expiry = f"; expires {_iso(r['expires_at'])}" if r["expires_at"] else ""
        console.print(
            f"  last refresh {last}; {r['entries'] or 0} entries{expiry}; next refresh {upcoming}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        if r["last_error"]:
            console.print(
                f"  last error ({_iso(r['last_error_at'])}): {r['last_error']}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if r["passed_over"]:
            console.print(f"  last load: {r['passed_over']}", markup=False, highlight=False, soft_wrap=True)


@intel_app.command("refresh")
def intel_refresh(name: Annotated[str, typer.Argument(help="The feed's name in intel.yaml.")]) -> None:
    """Refresh a feed now (the running analyzer fetches it); its schedule goes on from then."""
    from services.analyzer import feeds

    async def move(conn: Any) -> bool:
        async with conn.transaction():
            return await feeds.refresh_now(conn, name=name)

    if not asyncio.run(_on_database(move)):
        _fail(f"no configured feed {name!r} (vigil intel feeds lists them)")
    console.print(f"{name}: refresh due now", markup=False, highlight=False)


@intel_app.command("providers")
def intel_providers(as_json: JsonOption = False) -> None:
    """The online providers the analyzer last started with: budget, cached answers, lookups queued."""
    from services.analyzer import providers

    rows = asyncio.run(_on_database(providers.status))
    if as_json:
        print(
            json.dumps(
                [{k: _iso(v) if isinstance(v, datetime) else v for k, v in dict(r).items()} for r in rows], default=str
            )
        )
        return
    if not rows:
        console.print("no online provider has run (providers in intel.yaml)", markup=False)
    for r in rows:
        state = "enabled" if r["enabled"] else "disabled"
        per_day = f", {r['day_used']} of {r['per_day']} today" if r["per_day"] else ""
        console.print(
            f"{r['name']}  {state}  {', '.join(r['kinds'])}  {r['per_minute']}/min{per_day}; "
            f"{r['cached']} cached, {r['queued']} queued, {r['failed']} failed or parked; "
            f"next slot {_iso(r['next_slot'])}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@intel_app.command("lookup")
def intel_lookup(
    value: Annotated[str, typer.Argument(help="An address, network, domain, URL, hash or e-mail (defanged is fine).")],
    kind: Annotated[str | None, typer.Option(help="The value's kind; otherwise inferred.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Which feeds list a value (an address: also the networks that hold it), and the verdict."""
    from services.analyzer import intel

    try:
        key = intel.normalise(cast("intel.Kind | None", kind) or intel.infer_kind(intel.refang(value)), value)
    except ValueError as exc:
        _fail(str(exc))
    found = asyncio.run(_on_database(lambda conn: intel.lookup(conn, [key])))
    matches = found[key]
    assessment = intel.verdict_of(matches)
    if as_json:
        print(
            json.dumps(
                {
                    "kind": key[0],
                    "value": key[1],
                    **assessment._asdict(),
                    "matches": [
                        {
                            "source": m.source,
                            "kind": m.kind,
                            "value": m.value,
                            "verdict": m.verdict,
                            "confidence": m.confidence,
                            "tags": list(m.tags),
                            "first_seen": _iso(m.first_seen),
                            "last_seen": _iso(m.last_seen),
                            "expires_at": _iso(m.expires_at),
                        }
                        for m in matches
                    ],
                }
            )
        )
        return
    if assessment.verdict is None:
        console.print(f"{key[0]} {key[1]}: listed by no feed", markup=False, highlight=False)
        return
    tags = f"; {', '.join(assessment.tags)}" if assessment.tags else ""
    console.print(
        f"{key[0]} {key[1]}: {assessment.verdict} ({assessment.confidence}){tags}", markup=False, highlight=False
    )
    for m in matches:
        console.print(f"  {m.source}: {m.kind} {m.value} {m.verdict} ({m.confidence})", markup=False, highlight=False)


# ---- audit trail -------------------------------------------------------------------------------

audit_app = typer.Typer(
    help="The audit trail: who decided what and when; check its hash chain, export it.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")
AUDIT_EXPORT_FORMATS = ("jsonl", "csv")
AUDIT_EXPORT_FIELDS = ("id", "at", "service", "principal", "action", "target", "outcome", "detail", "prev_hash", "hash")


def _audit_time(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time; one without an offset is in this machine's time zone."""
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint=option) from exc
    return at if at.tzinfo is not None else at.astimezone()


@audit_app.command("verify")
def audit_verify(
    anchor: Annotated[
        str | None, typer.Option(help="A head hash this command printed before; the chain must still hold it.")
    ] = None,
) -> None:
    """Walk the whole chain; exit 1 naming the first entry edited, deleted, inserted or reordered."""
    from shared.audit import verify_chain

    report = asyncio.run(_on_database(lambda conn: verify_chain(conn, anchor=anchor)))
    if report.problem is not None:
        _fail(f"audit trail tampered with: {report.problem.message}")
    head = f"; head: entry {report.head_id}, hash {report.head_hash}" if report.head_id is not None else ""
    console.print(f"{report.entries} entries, chain intact{head}", markup=False, highlight=False, soft_wrap=True)


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(help="From this time on, ISO 8601 (your zone unless it says).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time, ISO 8601.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="jsonl (one entry a line) or csv.")] = "jsonl",
) -> None:
    """Print the entries, oldest first, with their hashes: for compliance, and to verify elsewhere."""
    import csv
    import sys

    from shared.audit import canonical_json, export_row, iter_entries

    if output_format not in AUDIT_EXPORT_FORMATS:
        _fail(f"unknown format {output_format!r}; choose one of {', '.join(AUDIT_EXPORT_FORMATS)}")
    start, end = _audit_time(since, "--since"), _audit_time(until, "--until")
    out = sys.stdout
    writer = csv.DictWriter(out, fieldnames=AUDIT_EXPORT_FIELDS, lineterminator="\n")
    if output_format == "csv":
        writer.writeheader()

    async def write(conn: Any) -> None:
        async for entry in iter_entries(conn, since=start, until=end, batch=1000):
            row = export_row(entry)
            if output_format == "csv":
                writer.writerow({**row, "detail": canonical_json(row["detail"])})
            else:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")

    asyncio.run(_on_database(write))


# ---- asset inventory ---------------------------------------------------------------------------

assets_app = typer.Typer(
    help="The asset inventory: hosts, addresses, networks, cloud resources and accounts, and what they weigh.",
    no_args_is_help=True,
)
app.add_typer(assets_app, name="assets")


@assets_app.command("import")
def assets_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A YAML or CSV inventory file.")],
    file_format: Annotated[
        str | None, typer.Option("--format", help="yaml or csv; by default, the file's extension.")
    ] = None,
) -> None:
    """Add or update every asset and user of FILE at once; a file with any problem changes nothing."""
    from services.analyzer import assets

    try:
        format_name = assets.format_of(file.name, file_format)
        catalog = assets.parse(file.read_text(encoding="utf-8"), source=str(file), format_name=format_name)
    except assets.InventoryFileError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False, soft_wrap=True)
        _fail(f"nothing imported: {len(exc.problems)} problem(s) in {file}")
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(str(exc))
    done = asyncio.run(_on_database(lambda conn: assets.import_catalog(conn, catalog)))
    console.print(
        f"{done.assets_new + done.assets_updated} asset(s) ({done.assets_new} new, {done.assets_updated} updated), "
        f"{done.users_new + done.users_updated} user(s) ({done.users_new} new, {done.users_updated} updated)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@assets_app.command("list")
def assets_list(as_json: JsonOption = False) -> None:
    """Every asset, most critical first, and every user."""
    from services.analyzer import assets

    found, users = asyncio.run(_on_database(assets.list_))
    if as_json:
        listing = {"assets": [a.model_dump() for a in found], "users": [u.model_dump() for u in users]}
        print(json.dumps(listing, indent=2))
        return
    table = Table(title=f"{len(found)} asset(s)")
    for column in ("kind", "identifier", "criticality", "environment", "data", "service", "owner", "tags"):
        table.add_column(column, overflow="fold")
    for a in found:
        table.add_row(
            *_plain(
                a.kind,
                a.identifier,
                str(a.criticality),
                a.environment,
                a.data_classification,
                a.business_service or "-",
                a.owner or "-",
                ", ".join(a.tags),
            )
        )
    console.print(table)
    people = Table(title=f"{len(users)} user(s)")
    for column in ("name", "privilege", "department", "owns", "tags"):
        people.add_column(column, overflow="fold")
    for u in users:
        people.add_row(*_plain(u.name, u.privilege, u.department or "-", ", ".join(u.owns), ", ".join(u.tags)))
    console.print(people)


@assets_app.command("show")
def assets_show(
    identifier: Annotated[str, typer.Argument(help="A host, an address, a network (CIDR), an account or a resource.")],
    as_json: JsonOption = False,
) -> None:
    """What the inventory knows of IDENTIFIER; an address shows the most specific network holding it."""
    from rich.text import Text

    from services.analyzer import assets

    async def look(conn: Any) -> list[tuple[str, dict[str, Any]]]:
        known = await assets.show(conn, identifier)
        return [
            *(
                (
                    f"{f.kind} (matched by {f.asset.kind} {f.asset.identifier})" if f.by == "cidr" else f.kind,
                    f.asset.model_dump(),
                )
                for f in known.assets
            ),
            *(("user", u.model_dump()) for u in known.users),
        ]

    matches = asyncio.run(_on_database(look))
    if not matches:
        _fail(f"{identifier!r} is not in the inventory")
    if as_json:
        print(json.dumps([{"as": label, **fields} for label, fields in matches], indent=2))
        return
    for label, fields in matches:
        lines = [f"{key}: {', '.join(value) if isinstance(value, list) else value}" for key, value in fields.items()]
        console.print(Panel(Text("\n".join(lines)), title=Text(label)))  # Text: no markup in identifiers


# ---- correlation rules -------------------------------------------------------------------------

rules_app = typer.Typer(
    help="Correlation rules: check a file, try it on the past, see what waits.", no_args_is_help=True
)
app.add_typer(rules_app, name="rules")
# How far back `vigil rules test` replays at most: a century of alerts (a rule's timespan stops at 366d).
REPLAY_LONGEST = timedelta(days=36600)
RulesFileArgument = Annotated[Path, typer.Argument(dir_okay=False, help="A correlation rules file (YAML).")]


def _load_correlation(file: Path) -> Any:
    from services.detector.correlation import CorrelationError, load_rules

    try:
        return load_rules(file)
    except CorrelationError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        _fail(f"{file}: {len(exc.problems)} problem(s); nothing changed")


def _since(text: str) -> timedelta:
    from services.detector.correlation import parse_timespan

    try:
        return parse_timespan(text, longest=REPLAY_LONGEST)
    except ValueError as exc:
        _fail(str(exc))


@rules_app.command("validate")
def rules_validate(file: RulesFileArgument) -> None:
    """Check a correlation rules file; every problem is named by its line."""
    rules = _load_correlation(file)
    console.print(f"{escape(str(file))}: {len(rules)} correlation(s), valid")
    for c in rules.correlations:
        console.print(escape(f"  {c.order + 1}. {c.name} ({c.type}) by {', '.join(c.group_by)}: {c.condition_text()}"))


@rules_app.command("test")
def rules_test(
    file: RulesFileArgument,
    since: Annotated[str, typer.Option(help="Replay the alerts seen in this past span (30m, 24h, 7d).")] = "24h",
    against: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False, help="The rules to compare with (default: the rules in force, VIGIL_CORRELATION_RULES)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Replay stored alerts through a candidate rules file and through the rules in force, changing nothing; compare.

    Both are replays of the same alerts: incidents resolved, merged or split since are not changes the
    rules make, and show in neither.
    """
    from services.detector import repository
    from services.detector.classification import load_rules
    from services.detector.correlation import SHIPPED_CORRELATIONS
    from services.detector.replay import Replay, compare

    rules = _load_correlation(file)
    settings = _settings()
    current_file = against or settings.correlation_rules or SHIPPED_CORRELATIONS
    current_rules = _load_correlation(current_file)
    start = datetime.now(UTC) - _since(since)

    async def load(conn: Any) -> list[tuple[Any, str | None]]:
        return await repository.list_alerts_since(conn, since=start)

    seen = sorted(asyncio.run(_on_database(load)), key=lambda pair: pair[0].time)
    today = {a.key: incident for a, incident in seen}
    classifier = load_rules(settings.classification_rules)

    def replay(with_rules: Any, name: str) -> Replay:
        ids = itertools.count(1)
        return Replay(
            rules=with_rules,
            window=timedelta(seconds=settings.correlation_window_s),
            classifier=classifier,
            new_id=lambda: f"{name}-{next(ids)}",
        ).feed_all(a for a, _incident in seen)

    current = replay(current_rules, "current")
    candidate = replay(rules, "candidate")
    result = compare(current.placement, candidate.placement, today=today)
    if as_json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return
    console.print(
        f"{result.alerts} alert(s) since {start:%Y-%m-%d %H:%M} UTC, in {result.incidents_today} incident(s) today; "
        f"replayed: {result.incidents_current} with {escape(current_file.name)} (in force), "
        f"{result.incidents_candidate} with {escape(file.name)}"
    )
    table = Table(title=f"what would change from {escape(current_file.name)}")
    table.add_column("change")
    table.add_column("count", justify="right")
    table.add_column("which", overflow="fold")

    def title(incident_id: str) -> str:
        state = candidate.incidents.get(incident_id) or current.incidents.get(incident_id)
        return escape(f"{state.title} ({state.correlation_key})") if state else incident_id

    table.add_row("unchanged", str(result.unchanged), "")
    table.add_row("opened", str(len(result.opened)), "; ".join(title(i) for i in result.opened[:10]))
    table.add_row(
        "merged",
        str(len(result.merged)),
        "; ".join(
            f"{title(c)} <- {', '.join(title(i) for i in now[:3])}{' ...' if len(now) > 3 else ''}"
            for c, now in list(result.merged.items())[:10]
        ),
    )
    table.add_row(
        "split",
        str(len(result.split)),
        "; ".join(f"{title(i)} -> {len(into)} incidents" for i, into in list(result.split.items())[:10]),
    )
    table.add_row("suppressed", str(len(result.suppressed)), "; ".join(title(i) for i in result.suppressed[:10]))
    table.add_row("alerts that would wait", str(result.waiting), "")
    table.add_row("waiting alerts that would join", str(result.released), "")
    console.print(table)


def _detector_call(method: str, path: str) -> Any:
    return _answer_of(_request("detector", _settings().detector_url, method, path))


@rules_app.command("show")
def rules_show(as_json: JsonOption = False) -> None:
    """The correlation rules the detector applies, in order."""
    answer = _detector_call("GET", "/api/v1/correlation/rules")
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    console.print(f"file: {escape(answer['file'] or 'shipped')}")
    for n, c in enumerate(answer["correlations"], 1):
        console.print(escape(f"  {n}. {c['name']} ({c['type']}) by {', '.join(c['group_by'])}: {c['condition']}"))


@rules_app.command("reload")
def rules_reload() -> None:
    """Make the detector read its correlation rules file again now (it also does when the file changes)."""
    answer = _detector_call("POST", "/api/v1/correlation/reload")
    console.print(
        f"reloaded {escape(answer['file'] or 'the shipped rules')}: {len(answer['correlations'])} correlation(s)"
    )


@rules_app.command("waiting")
def rules_waiting(
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100, as_json: JsonOption = False
) -> None:
    """Alerts stored while their correlation rule's condition does not hold (they raise nothing yet)."""
    rows = _detector_call("GET", f"/api/v1/correlation/waiting?limit={limit}")
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} waiting alert(s)")
    for column in ("time", "alert", "severity", "rule", "group"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["time"][:19],
            f"{escape(row['title'])} [dim]{escape(row['key'])}[/]",
            *_plain(row["severity"], row["correlation"], row["group_key"]),
        )
    console.print(table)


@app.command("heartbeats")
def heartbeats(
    limit: Annotated[int, typer.Option(help="At most this many, the most recently seen first.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Tools' heartbeats (Alertmanager's Watchdog): when each was last seen firing, how often, whether missing."""
    rows = _detector_call("GET", f"/api/v1/heartbeats?limit={limit}")
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} heartbeat(s)")
    for column in ("heartbeat", "source", "last seen firing", "sightings", "state"):
        table.add_column(column, overflow="fold")
    now = datetime.now(UTC)
    for row in rows:
        seen = datetime.fromisoformat(row["last_seen_at"]) if row["last_seen_at"] else None
        ago = f"{seen:%Y-%m-%d %H:%M:%S} ({int((now - seen).total_seconds())} s ago)" if seen else "never"
        if row.get("missed_since"):
            state = f"[bold red]missing[/] since {escape(row['missed_since'][:19])}"
        elif row["resolved_at"]:
            state = f"[bold red]stopped[/] {escape(row['resolved_at'][:19])}"
        else:
            state = "[green]firing[/]"
        if row.get("interval_s"):
            ago += f", every ~{round(row['interval_s'])} s"
        table.add_row(*_plain(f"{row['title']} ({row['key']})", row["source"], ago, str(row["sightings"])), state)
    console.print(table)


# ---- silences, maintenance windows, suppressed alerts (vigil/cli_suppression.py) -------------------

from vigil.cli_suppression import alerts_app, maintenance_app, silence_app  # noqa: E402

app.add_typer(silence_app, name="silence")
app.add_typer(maintenance_app, name="maintenance")
app.add_typer(alerts_app, name="alerts")
# The reporter's commands live beside this module; they use its helpers, so they are added last.
from vigil.cli_reports import register as register_reports  # noqa: E402

register_reports(app)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()


if __name__ == "__main__":
    main()


# ---- review digests ----------------------------------------------------------------------------

digests_app = typer.Typer(
    help="Review digests: a period's incidents summed up, sent on a schedule.", no_args_is_help=True
)
app.add_typer(digests_app, name="digests")


@digests_app.command("list")
def digests_list(as_json: JsonOption = False) -> None:
    """The digests the coordinator sends (digests.yaml), to whom, and when each goes next."""
    listed = _answer_of(_tasks_call("GET", "/api/v1/digests"))
    if as_json:
        print(json.dumps(listed, indent=2))
        return
    table = Table(title=f"{len(listed)} digest(s)")
    for column in ("name", "every", "covers", "to", "next (UTC)"):
        table.add_column(column, overflow="fold")
    for d in listed:
        when = (d["next_at"] or "-")[:16].replace("T", " ")
        table.add_row(*_plain(d["name"], f"{d['every']} ({d['time_zone']})", d["covers"], ", ".join(d["to"])), when)
    console.print(table)


@digests_app.command("preview")
def digests_preview(name: str, as_json: JsonOption = False) -> None:
    """What a digest would say now, of the period ending now; nothing is sent."""
    data = _answer_of(_tasks_call("GET", f"/api/v1/digests/{name}/preview"))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console.print(f"[b]{escape(data['name'])}[/b]: incidents from {escape(data['period'])}")
    facts = [
        ("opened", data["opened"], data["opened_by_severity"]),
        ("resolved", data["resolved"], data["resolved_by_resolution"]),
        ("open now", data["open_now"], data["open_by_severity"]),
    ]
    for label, count, split in facts:
        parts = ", ".join(f"{k} {v}" for k, v in split.items())
        console.print(f"  {label}: {count}" + (f" ({escape(parts)})" if parts else ""))
    for label, minutes in (("to acknowledge", data["mtta_minutes"]), ("to resolve", data["mttr_minutes"])):
        console.print(f"  median time {label}: " + ("-" if minutes is None else f"{minutes:g} min"))
    console.print(f"  overdue tasks: {data['overdue_tasks']}; open follow-ups: {data['open_follow_ups']}")
    for incident in data["notable"]:
        line = f"{incident['short_id']} {incident['severity']} {incident['title']} ({incident['state']})"
        console.print(f"  - {escape(line)}")
