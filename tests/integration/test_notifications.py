"""Notices end to end: enqueued in a transaction, run by a real effects runner, received by real peers.

The peers: an SMTP server (aiosmtpd) that requires STARTTLS and a login, and keeps every mail; an
HTTP receiver on a local port that verifies the generic webhook's signature with
``verify_signature``, acts once per Idempotency-Key and answers as told. Postgres is the real one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import ssl
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from http import HTTPStatus
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from prometheus_client import REGISTRY

from services.coordinator.notifications import (
    Notice,
    NotificationsConfig,
    effect_kinds,
    notice_key,
    notify,
    parse_notifications,
)
from shared.consumer import HandlerContext
from shared.effects import Effect, EffectRunner
from shared.effects.builtin import SIGNATURE_HEADER, TIMESTAMP_HEADER
from shared.effects.domain import message_id, verify_signature
from shared.embedded import free_port
from shared.events import EffectOutcome
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests import helpers
from tests.helpers import eventually
from tests.integration.test_effects import reaches

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

SERVICE = "coordinator"
SECRET = "a-notification-secret-only-tests-know"
SMTP_USER = "vigil"
SMTP_PASSWORD = "an-smtp-password-only-tests-know"
ENVIRON = {"NOTIFY_SECRET": SECRET, "SMTP_USER": SMTP_USER, "SMTP_PASSWORD": SMTP_PASSWORD}
CERTS = Path(__file__).resolve().parents[1] / "data" / "smtp"
INCIDENT = "7d3c1a2b-0000-4000-8000-000000000001"

ESCALATION = {
    "title": "Reverse shell on bastion-01",
    "reason": "new SEV1 security_breach incident: immediate escalation",
    "commander": "alice@example.com",
    "hosts": ["bastion-01"],
}


def escalation(incident_id: str = INCIDENT, *, step: int = 1, recipients: list[str] | None = None) -> Notice:
    return Notice(
        kind="escalation",
        incident_id=incident_id,
        discriminator=f"step-{step}",
        severity="SEV1",
        recipients=recipients or ["alice@example.com"],
        data=ESCALATION,
    )


def acknowledged(incident_id: str = INCIDENT) -> Notice:
    return Notice(
        kind="state_changed",
        incident_id=incident_id,
        discriminator="detected->acknowledged",
        severity="SEV1",
        recipients=["alice@example.com"],
        data={**ESCALATION, "from_state": "detected", "to_state": "acknowledged", "actor": "alice@example.com"},
    )


def configure(document: str, environ: dict[str, str] = ENVIRON) -> NotificationsConfig:
    return parse_notifications(textwrap.dedent(document), source="test", environ=environ)


async def enqueue_notice(pool: asyncpg.Pool, config: NotificationsConfig, notice: Notice) -> list[str]:
    async with pool.acquire() as conn, conn.transaction():
        return await notify(conn, config, notice)


class Outcomes:
    """An on_outcome hook that keeps what it was told, as the coordinator's timeline would."""

    def __init__(self) -> None:
        self.seen: list[EffectOutcome] = []

    async def __call__(self, ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        assert effect.subject == outcome.key.split(":", 1)[0]
        self.seen.append(outcome)


@contextlib.asynccontextmanager
async def running(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, config: NotificationsConfig, outcomes: Outcomes
) -> AsyncIterator[None]:
    runner = EffectRunner(
        SERVICE,
        pool,
        names,
        effect_kinds(config, on_outcome=outcomes),
        connect=lambda: asyncpg.connect(settings.database_url),
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        poll_s=0.2,
    )
    async with helpers.running(runner.run()):
        yield


# ---- an SMTP server that insists on STARTTLS and a login ----------------------------------------


@dataclass(frozen=True)
class Received:
    message: Message
    recipients: list[str]
    encrypted: bool
    authenticated: bool


class Mailbox:
    def __init__(self) -> None:
        self.received: list[Received] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            Received(
                message_from_bytes(envelope.content),
                list(envelope.rcpt_tos),
                encrypted=session.ssl is not None,
                authenticated=bool(session.authenticated),
            )
        )
        return "250 OK"


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@contextlib.asynccontextmanager
async def smtp_server() -> AsyncIterator[tuple[Mailbox, int]]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(CERTS / "cert.pem", CERTS / "key.pem")
    mailbox = Mailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=tls,
        require_starttls=True,
        authenticator=check_login,
        auth_require_tls=True,
    )
    await asyncio.to_thread(controller.start)
    try:
        yield mailbox, controller.port
    finally:
        await asyncio.to_thread(controller.stop)


def mail_config(port: int) -> str:
    return f"""
        channels:
          email:
            host: 127.0.0.1
            port: {port}
            sender: vigil@example.com
            security: starttls
            username_env: SMTP_USER
            password_env: SMTP_PASSWORD
            cafile: {CERTS / "cert.pem"}
            max_attempts: 3
        people:
          alice@example.com: {{email: alice@example.com}}
        routes:
          default: {{default: [email]}}
        """


async def test_mail_goes_over_starttls_with_a_login_and_every_notice_answers_the_first(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    outcomes = Outcomes()
    async with smtp_server() as (mailbox, port):
        config = configure(mail_config(port))
        [first] = await enqueue_notice(pool, config, escalation())
        [second] = await enqueue_notice(pool, config, acknowledged())
        other_incident = "7d3c1a2b-0000-4000-8000-000000000002"
        [other] = await enqueue_notice(pool, config, escalation(other_incident))
        async with running(settings, pool, names, config, outcomes):
            rows = [await reaches(pool, key, "succeeded") for key in (first, second, other)]
    assert first == f"{INCIDENT}:escalation:step-1:email:alice@example.com"
    by_id = {r.message["Message-ID"]: r for r in mailbox.received}
    assert set(by_id) == {message_id(first), message_id(second), message_id(other)}
    assert all(r.encrypted and r.authenticated and r.recipients == ["alice@example.com"] for r in mailbox.received)
    opening, answer, elsewhere = by_id[message_id(first)], by_id[message_id(second)], by_id[message_id(other)]
    # The first mail about an incident starts its conversation; every later one answers it.
    assert opening.message["In-Reply-To"] is None and opening.message["References"] is None
    assert answer.message["In-Reply-To"] == answer.message["References"] == message_id(first)
    assert elsewhere.message["In-Reply-To"] is None  # another incident, another conversation
    assert (
        opening.message["Subject"]
        == answer.message["Subject"]
        == "Vigil incident 7d3c1a2b: Reverse shell on bastion-01"
    )
    assert "Acknowledged: alice@example.com moved the incident from detected to acknowledged." in str(
        answer.message.get_payload()
    )
    assert [row["result"]["message_id"] for row in rows] == [message_id(k) for k in (first, second, other)]
    assert {(o.key, o.status, o.kind) for o in outcomes.seen} == {
        (first, "succeeded", "notify.email"),
        (second, "succeeded", "notify.email"),
        (other, "succeeded", "notify.email"),
    }
    # The login is the runner's, never the effect's.
    assert all(SMTP_PASSWORD not in json.dumps(row["payload"]) + json.dumps(row["result"]) for row in rows)


async def test_a_refused_login_fails_the_mail_at_once_with_the_servers_reply(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    outcomes = Outcomes()
    async with smtp_server() as (mailbox, port):
        config = configure(mail_config(port), {**ENVIRON, "SMTP_PASSWORD": "not-the-password"})
        [key] = await enqueue_notice(pool, config, escalation())
        async with running(settings, pool, names, config, outcomes):
            row = await reaches(pool, key, "failed")
    assert mailbox.received == []
    assert row["attempts"] == 1
    assert row["last_error"].startswith("PermanentEffectError: SMTP 535")
    assert [(o.key, o.status) for o in outcomes.seen] == [(key, "failed")]


# ---- HTTP receivers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """HTTP on 127.0.0.1: checks the webhook signature (401 if wrong), answers 503 where told, acts once per key."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.acted: collections.Counter[tuple[str, str]] = collections.Counter()
        self.failing: set[str] = set()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Receiver]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            if not request_line:
                return  # a client that went away before asking (a runner stopped mid-connect)
            _, path, _ = request_line.decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            verified = verify_signature(
                SECRET.encode(),
                headers.get(TIMESTAMP_HEADER.lower()),
                headers.get(SIGNATURE_HEADER.lower()),
                body,
                now=time.time(),
            )
            self.requests.append(Request(path, headers, body, verified))
            if path == "/vigil" and not verified:
                status = 401
            elif path in self.failing:
                status = 503
            else:
                self.acted[(path, headers.get("idempotency-key", ""))] += 1
                status = 200
            writer.write(
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request: nothing to answer
        finally:
            writer.close()


def http_config(receiver: Receiver, *, attempts: int = 8) -> str:
    return f"""
        channels:
          webhook: {{url: "{receiver.url("/vigil")}", secret_env: NOTIFY_SECRET, max_attempts: {attempts}}}
          slack: {{url: "{receiver.url("/slack")}", max_attempts: {attempts}}}
          teams: {{url: "{receiver.url("/teams")}", max_attempts: {attempts}}}
          mattermost: {{url: "{receiver.url("/mattermost")}", max_attempts: {attempts}}}
        people:
          alice@example.com: {{}}
        routes:
          escalation: {{SEV1: [webhook, slack, teams, mattermost]}}
        """


async def test_chat_and_webhook_receivers_get_their_shapes_and_the_webhook_is_signed(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    notice = escalation()
    async with Receiver().serving() as receiver:
        config = configure(http_config(receiver))
        keys = await enqueue_notice(pool, config, notice)
        async with running(settings, pool, names, config, Outcomes()):
            rows = [await reaches(pool, key, "succeeded") for key in keys]
    assert keys == [
        notice_key(notice, channel, "alice@example.com") for channel in ("webhook", "slack", "teams", "mattermost")
    ]
    [webhook] = receiver.on("/vigil")
    assert webhook.verified and webhook.headers["idempotency-key"] == keys[0]
    body = webhook.json()
    assert body["conversation"] == body["thread_key"] == INCIDENT
    assert (body["kind"], body["recipient"], body["data"]) == ("escalation", "alice@example.com", ESCALATION)
    [slack] = receiver.on("/slack")
    assert SIGNATURE_HEADER.lower() not in slack.headers  # only the generic webhook knows Vigil's secret
    assert slack.headers["idempotency-key"] == keys[1]
    blocks = slack.json()["blocks"]
    assert [block["type"] for block in blocks] == ["header", "section", "section", "context"]
    assert blocks[0]["text"] == {"type": "plain_text", "text": "[SEV1] Reverse shell on bastion-01"}
    assert {"type": "mrkdwn", "text": "*Hosts*\nbastion-01"} in blocks[2]["fields"]
    [teams] = receiver.on("/teams")
    card = teams.json()["attachments"][0]["content"]
    assert (card["type"], [item["type"] for item in card["body"]]) == (
        "AdaptiveCard",
        ["TextBlock", "TextBlock", "FactSet", "TextBlock"],
    )
    [mattermost] = receiver.on("/mattermost")
    assert mattermost.json()["attachments"][0]["title"] == "[SEV1] Reverse shell on bastion-01"
    assert all(SECRET not in json.dumps(row["payload"]) for row in rows)


async def test_the_same_notice_twice_and_from_two_coordinators_at_once_is_delivered_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    notice = escalation()
    async with Receiver().serving() as receiver:
        config = configure(http_config(receiver))
        keys = await enqueue_notice(pool, config, notice)
        assert len(keys) == 4
        assert await enqueue_notice(pool, config, notice) == []  # a redelivered event
        # Two coordinators handling the same event at once: the second waits for the first's commit.
        again = escalation(step=2)

        async def second_waits_for_the_first() -> bool:
            waiting = await pool.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
            return bool(waiting)

        async with asyncio.timeout(60):
            async with pool.acquire() as first, first.transaction():
                first_keys = await notify(first, config, again)
                second = asyncio.create_task(enqueue_notice(pool, config, again))
                await eventually(second_waits_for_the_first)
            assert len(first_keys) == 4 and await second == []
        async with running(settings, pool, names, config, Outcomes()):
            for key in keys + first_keys:
                await reaches(pool, key, "succeeded")
    assert len(receiver.requests) == 8
    assert set(receiver.acted.values()) == {1}


async def test_a_failing_receiver_is_retried_then_the_notice_is_parked_with_its_error(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    outcomes = Outcomes()
    async with Receiver().serving() as receiver:
        receiver.failing.add("/slack")
        config = configure(http_config(receiver, attempts=3))
        keys = await enqueue_notice(pool, config, escalation())
        slack_key = notice_key(escalation(), "slack", "alice@example.com")
        async with running(settings, pool, names, config, outcomes):
            parked = await reaches(pool, slack_key, "parked")
            for key in set(keys) - {slack_key}:
                await reaches(pool, key, "succeeded")
    assert parked["attempts"] == 3
    assert parked["last_error"].startswith("TransientEffectError: HTTP 503 from 127.0.0.1:")
    assert [r.headers["idempotency-key"] for r in receiver.on("/slack")] == [slack_key] * 3
    assert [(o.kind, o.status, o.attempts) for o in outcomes.seen if o.key == slack_key] == [
        ("notify.slack", "parked", 3)
    ]


async def test_a_rolled_back_decision_leaves_no_notice_and_no_conversation(pool: asyncpg.Pool) -> None:
    config = configure(mail_config(25))

    class Decided(Exception):
        pass

    with pytest.raises(Decided):
        async with pool.acquire() as conn, conn.transaction():
            assert len(await notify(conn, config, escalation())) == 1
            raise Decided
    assert await pool.fetchval("SELECT count(*) FROM effects") == 0
    assert await pool.fetchval("SELECT count(*) FROM notification_threads") == 0
    # Nobody the file knows: nothing is enqueued; the log says so once a person, the metric every time.
    before = REGISTRY.get_sample_value("vigil_coordinator_notices_unaddressed_total", {"kind": "escalation"}) or 0
    for step in (1, 2):
        unknown = escalation(step=step, recipients=["mallory@example.com", "alice@example.com"])
        assert len(await enqueue_notice(pool, config, unknown)) == 1  # alice's
    after = REGISTRY.get_sample_value("vigil_coordinator_notices_unaddressed_total", {"kind": "escalation"})
    assert after == before + 2


async def test_a_template_that_fails_on_the_data_still_sends_a_plain_notice(pool: asyncpg.Pool, tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "escalation.j2").write_text(
        "{% block title %}{% if data.hosts is defined %}{{ data.hosts.first.name }}{% endif %}T{% endblock %}"
        "{% block body %}x{% endblock %}"
    )
    config = parse_notifications(
        "templates_dir: .\n" + textwrap.dedent(mail_config(25)), source="test", base_dir=tmp_path, environ=ENVIRON
    )
    [key] = await enqueue_notice(pool, config, escalation())
    payload = await pool.fetchval("SELECT payload FROM effects WHERE key = $1", key)
    assert payload["subject"] == "[SEV1] escalation: Reverse shell on bastion-01"
    assert "commander: alice@example.com" in payload["body"]
