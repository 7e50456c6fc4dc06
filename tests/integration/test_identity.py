"""Every route of every service authenticates and checks its role, as the permission matrix says.

The routes come from each service's own app (what its OpenAPI document lists): a route added without
a permission fails here. Each is called without a token, with a revoked and an expired one, and with
a token of each role, against the real Postgres.
"""

from __future__ import annotations

import json
import random
import re
import string
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from services.coordinator import api as coordinator_api
from services.coordinator import ticketing
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.coordinator.tasks import load_templates
from services.coordinator.tasks_api import tasks_router, tickets_router
from services.detector import service as detector_service
from services.reporter import api as reporter_api
from services.responder import api as responder_api
from services.responder.approvals import load_policy
from services.responder.guardrails import RateLimiter, load_guardrails
from services.responder.handlers import Execution, Responder
from services.responder.service import load_playbooks
from shared import audit, identity
from shared.consumer import HandlerContext, write_context
from shared.events import IncidentDetected
from shared.kafka import make_producer
from shared.service import Runtime, build_app, check_startup
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


def operations(app: FastAPI) -> list[tuple[str, str, str | None]]:
    """Every API operation in the service's OpenAPI document: (method, path, the permission it declares)."""
    found = []
    for path, methods in app.openapi()["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in methods.items():
            scopes = [scope for need in operation.get("security", []) for scope in need.get("VigilToken", [])]
            declared = scopes[0] if scopes else operation.get("x-vigil-permission")
            found.append((method.upper(), path, declared))
    return found


def concrete(path: str) -> str:
    return re.sub(
        r"\{(\w+)(:path)?\}", lambda m: "inc-1:step" if m.group(2) else ("1" if "task" in m.group(1) else "inc-1"), path
    )


WEBHOOK_TICKETS = ticketing.parse_ticketing(
    "tracker: {kind: github, repository: acme/ops, token_env: T, webhook_secret_env: S}",
    environ={"T": "a-tracker-token", "S": "a-webhook-secret-of-length"},
)


@pytest.fixture
async def apps(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, rate_limiter: RateLimiter
) -> AsyncIterator[dict[str, FastAPI]]:
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    producer = make_producer(secured, client_id="identity-test")
    await producer.start()
    try:

        def runtime(service: str) -> Runtime:
            return Runtime(service=service, settings=secured, pool=pool, producer=producer, names=names)

        coordinator = Coordinator(load_oncall())
        responder = Responder(
            load_playbooks(),
            Execution(policy=load_policy(), guardrails=load_guardrails(), connectors={}, rate_limiter=rate_limiter),
        )
        rt = runtime("coordinator")
        yield {
            "detector": build_app(runtime("detector"), detector_service.spec(secured).routers(runtime("detector"))),
            "reporter": build_app(runtime("reporter"), reporter_api.routers(runtime("reporter"))),
            "responder": build_app(runtime("responder"), responder_api.routers(runtime("responder"), responder)),
            "coordinator": build_app(
                rt,
                [
                    *coordinator_api.routers(rt, coordinator),
                    coordinator_api.oncall_router(rt, lambda: coordinator.oncall),
                    coordinator_api.digests_router(rt, coordinator),
                    tasks_router(rt, load_templates()),
                    # The webhook answers only GitHub's signature: no token, of any role, opens it.
                    tickets_router(rt, WEBHOOK_TICKETS, on_done=None),
                ],
            ),
        }
    finally:
        await producer.stop()


async def tokens(pool: asyncpg.Pool) -> dict[str, str]:
    made: dict[str, str] = {}
    async with pool.acquire() as conn:
        for role in identity.ROLES:
            made[role] = (await identity.create_token(conn, name=f"{role}-person", role=role, created_by="test")).text
        revoked = await identity.create_token(conn, name="gone", role="admin", created_by="test")
        await identity.revoke_token(conn, revoked.token_id, revoked_by="test")
        expired = await identity.create_token(conn, name="old", role="admin", created_by="test")
        await conn.execute(
            "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", expired.token_id
        )
    made["revoked"], made["expired"] = revoked.text, expired.text
    return made


async def test_every_route_refuses_without_a_valid_token_and_allows_exactly_the_roles_the_matrix_says(
    apps: dict[str, FastAPI], pool: asyncpg.Pool
) -> None:
    issued = await tokens(pool)
    checked = 0
    for service, app in apps.items():
        listed = operations(app)
        assert listed, service
        async with serve_app(app, name=f"{service}-api") as base, httpx.AsyncClient(base_url=base) as client:
            for method, template, permission in listed:
                assert permission is not None, f"{service} {method} {template}: no permission declared"
                path = concrete(template)
                if permission == "webhook.signature":
                    for offered in (None, *issued.values()):
                        status = await _call(client, method, path, offered)
                        # Refused; the route of a tracker not configured here is not found: never opened by a token.
                        configured = WEBHOOK_TICKETS.tracker is not None and path.endswith(WEBHOOK_TICKETS.tracker.kind)
                        expected = 401 if configured else 404
                        assert status == expected, f"{service} {method} {path} with a token, no signature: {status}"
                    checked += 1
                    continue
                for refused in (None, issued["revoked"], issued["expired"], "vigil_notarealtoken_" + "x" * 40):
                    status = await _call(client, method, path, refused)
                    assert status == 401, f"{service} {method} {path} with {refused!s:.16}: {status}"
                for role in identity.ROLES:
                    status = await _call(client, method, path, issued[role])
                    if identity.allows(role, permission):  # type: ignore[arg-type]
                        assert status not in (401, 403), f"{service} {method} {path}: {role} refused ({status})"
                    else:
                        assert status == 403, f"{service} {method} {path}: {role} got {status}, not 403"
                checked += 1
    assert checked >= 20  # every service's routes were seen


async def detected_by_the_coordinator(pool: asyncpg.Pool, names: TopicNames, subject: str) -> None:
    """The incident as the coordinator has it once detected: commands about it apply."""
    detected = IncidentDetected(source="/vigil/detector", subject=subject, data=snapshot())
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="coordinator", names=names)
        await Coordinator(load_oncall()).on_detected(ctx, detected)
        await write_context(conn, ctx)


async def _call(client: httpx.AsyncClient, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return (await client.request(method, path, json={}, headers=headers)).status_code


async def test_the_actor_of_a_command_is_the_token_not_the_name_in_the_body(
    apps: dict[str, FastAPI], pool: asyncpg.Pool, names: TopicNames
) -> None:
    await detected_by_the_coordinator(pool, names, "inc-who")
    async with pool.acquire() as conn:
        carol = (await identity.create_token(conn, name="carol@example.com", role="commander", created_by="t")).text
    async with (
        serve_app(apps["coordinator"], name="coordinator-api") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        answer = await client.post(
            "/api/v1/incidents/inc-who/ack",
            json={"actor": "mallory@example.com", "note": "it was me"},
            headers={"Authorization": f"Bearer {carol}"},
        )
    assert answer.status_code == 200, answer.text
    moved_by = await pool.fetchval("SELECT actor FROM coordinator_transitions WHERE to_state = 'acknowledged'")
    assert moved_by == "carol@example.com"
    # And the audit trail says so, chained to what came before.
    entry = await pool.fetchrow("SELECT principal, action, target, outcome FROM audit_log ORDER BY id DESC LIMIT 1")
    assert entry is not None
    assert dict(entry) == {
        "principal": "carol@example.com",
        "action": "incident.acknowledge",
        "target": "inc-who",
        "outcome": "ok",
    }
    async with pool.acquire() as conn:
        assert (await audit.verify_chain(conn)).problem is None


async def test_a_service_beyond_loopback_without_tokens_refuses_to_start(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    exposed = settings.model_copy(update={"allow_unauthenticated": False, "http_host": "0.0.0.0"})
    runtime = Runtime(service="reporter", settings=exposed, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"would serve on 0\.0\.0\.0 with no API token"):
        await check_startup(runtime)
    loopback = exposed.model_copy(update={"http_host": "127.0.0.1"})
    await check_startup(Runtime(service="reporter", settings=loopback, pool=pool, producer=None, names=names))  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        await identity.create_token(conn, name="ops", role="admin", created_by="t")
    await check_startup(runtime)  # with a token to check, it serves


async def test_an_idempotency_key_is_the_senders_own_and_a_retry_gets_the_first_answer(
    apps: dict[str, FastAPI], pool: asyncpg.Pool, names: TopicNames
) -> None:
    await detected_by_the_coordinator(pool, names, "inc-keys")
    async with pool.acquire() as conn:
        alice = (await identity.create_token(conn, name="alice", role="responder", created_by="t")).text
        bob = (await identity.create_token(conn, name="bob", role="responder", created_by="t")).text
    async with (
        serve_app(apps["coordinator"], name="coordinator-api") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):

        async def note(token: str, text: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "same-key"}
            return await client.post(
                "/api/v1/incidents/inc-keys/notes", json={"actor": "x", "note": text}, headers=headers
            )

        first, again, other = await note(alice, "one"), await note(alice, "one, retried"), await note(bob, "two")
    assert [r.status_code for r in (first, again, other)] == [200, 200, 200]
    assert again.json() == first.json() and other.json()["command_id"] != first.json()["command_id"]
    notes = await pool.fetch("SELECT principal FROM audit_log WHERE action = 'incident.add_note' ORDER BY id")
    assert [r["principal"] for r in notes] == ["alice", "bob"]  # the retry changed nothing


async def test_an_idempotency_key_on_a_request_naming_a_long_path_is_kept_like_any_other(
    apps: dict[str, FastAPI], pool: asyncpg.Pool
) -> None:
    # The operation names the path's id: one longer than an index entry holds is kept by its digest.
    step = "inc-" + "".join(random.Random(7).choices(string.ascii_letters, k=3000))
    async with pool.acquire() as conn:
        carol = (await identity.create_token(conn, name="carol", role="commander", created_by="t")).text
    async with (
        serve_app(apps["responder"], name="responder-api") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        headers = {"Authorization": f"Bearer {carol}", "Idempotency-Key": "long-path"}
        first = await client.post(f"/api/v1/steps/{step}/lease", json={"actor": "c", "extend": "1h"}, headers=headers)
        again = await client.post(f"/api/v1/steps/{step}/lease", json={"actor": "c", "extend": "1h"}, headers=headers)
    assert first.status_code == 409, first.text  # no such step: refused, and the refusal remembered
    assert (again.status_code, again.json()) == (first.status_code, first.json())


async def test_a_body_over_the_limit_is_refused_before_anything_reads_it(apps: dict[str, FastAPI]) -> None:
    async with (
        serve_app(apps["coordinator"], name="coordinator-api") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        huge = {"actor": "x", "note": "n" * 1_100_000}
        refused = await client.post("/api/v1/incidents/inc-1/notes", json=huge)
    assert refused.status_code == 413 and "over 1048576 bytes" in refused.json()["detail"]


async def test_a_chunked_body_is_held_to_the_same_limit_and_refusals_before_any_route_reads_it(
    apps: dict[str, FastAPI], pool: asyncpg.Pool, names: TopicNames
) -> None:
    await detected_by_the_coordinator(pool, names, "inc-chunked")
    async with pool.acquire() as conn:
        alice = (await identity.create_token(conn, name="alice", role="responder", created_by="t")).text

    def chunked(body: bytes) -> AsyncIterator[bytes]:  # no Content-Length: only reading tells its size
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 65536):
                yield body[start : start + 65536]

        return chunks()

    path = "/api/v1/incidents/inc-chunked/notes"
    async with (
        serve_app(apps["coordinator"], name="coordinator-api") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        huge = json.dumps({"actor": "x", "note": "n" * 1_100_000}).encode()
        refused = await client.post(path, content=chunked(huge))  # nor any token: refused for its size first
        held = await client.post(
            path,
            content=chunked(b'{"actor": "x", "note": "a\\u0000b"}'),
            headers={"Authorization": f"Bearer {alice}", "Content-Type": "application/json"},
        )
        taken = await client.post(
            path,
            content=chunked(json.dumps({"actor": "x", "note": "streamed"}).encode()),
            headers={"Authorization": f"Bearer {alice}", "Content-Type": "application/json"},
        )
    assert refused.status_code == 413 and "over 1048576 bytes" in refused.json()["detail"]
    assert held.status_code == 422 and "NUL" in held.json()["detail"]
    assert taken.status_code == 200, taken.text  # what was read on the way is what the route reads


async def test_a_jwt_from_the_identity_provider_acts_with_its_role(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": "k1", "use": "sig"}]}))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    oidc_settings = settings.model_copy(
        update={
            "allow_unauthenticated": False,
            "oidc_issuer": "https://idp.example.com",
            "oidc_audience": "vigil",
            "oidc_jwks": str(tmp_path / "jwks.json"),
        }
    )
    now = int(time.time())

    def signed(claims: dict[str, Any], signer: Any = key) -> str:
        base = {"iss": "https://idp.example.com", "aud": "vigil", "exp": now + 300, "email": "dana@example.com"}
        return jwt.encode({**base, **claims}, signer, algorithm="RS256", headers={"kid": "k1"})

    runtime = Runtime(service="reporter", settings=oidc_settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, reporter_api.routers(runtime))
    async with serve_app(app, name="reporter-api") as base, httpx.AsyncClient(base_url=base) as client:

        async def status(token: str) -> int:
            return (await client.get("/api/v1/incidents", headers={"Authorization": f"Bearer {token}"})).status_code

        assert await status(signed({"vigil_role": "viewer"})) == 200
        assert await status(signed({"vigil_role": ["ingest", "commander"]})) == 200  # the highest role counts
        assert await status(signed({"vigil_role": "ingest"})) == 403
        assert await status(signed({"vigil_role": "viewer"}, signer=other)) == 401  # not the provider's key
        assert await status(signed({"vigil_role": "viewer", "exp": now - 120})) == 401  # beyond the skew allowed
        assert await status(signed({"vigil_role": "viewer", "aud": "someone-else"})) == 401
        assert await status(signed({"vigil_role": "viewer", "iss": "https://evil.example.com"})) == 401
        assert await status(signed({})) == 401  # no role
        unsigned = jwt.encode(
            {"iss": "https://idp.example.com", "aud": "vigil", "exp": now + 300, "vigil_role": "admin"},
            "",
            algorithm="none",
        )
        assert await status(unsigned) == 401


async def test_health_and_readiness_stay_open_and_metrics_are_protected_when_asked(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    for protect, expected in ((False, 200), (True, 401)):
        configured = settings.model_copy(update={"allow_unauthenticated": False, "protect_metrics": protect})
        runtime = Runtime(service="reporter", settings=configured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
        app = build_app(runtime, reporter_api.routers(runtime))
        async with serve_app(app, name="reporter-api") as base, httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/metrics")).status_code == expected
