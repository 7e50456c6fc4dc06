"""The asset inventory over the analyzer's API, against real Postgres: import, list, show, and who may."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.analyzer.assets import list_
from services.analyzer.service import spec
from shared import identity
from shared.identity import Role
from shared.kafka import make_producer
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EXAMPLE = Path(__file__).parents[2] / "services" / "analyzer" / "assets.example.yaml"
IMPORT = "/api/v1/assets/import"
YAML = {"Content-Type": "application/yaml"}
CSV = {"Content-Type": "text/csv"}
BROKEN_CSV = "kind,identifier,criticality\nhost,fine-1,2\nip,10.0.0.300,2\nhost,fine-2,9\n"


@contextlib.asynccontextmanager
async def analyzer_api(settings: VigilSettings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The analyzer's routes as it serves them (authentication on), on the test database, over HTTP."""
    secured = settings.model_copy(update={"allow_unauthenticated": False, "api_max_bytes": 64 * 1024})
    producer = make_producer(secured, client_id="analyzer-assets-api-test")
    await producer.start()
    try:
        runtime = Runtime(
            service="analyzer", settings=secured, pool=pool, producer=producer, names=TopicNames(secured.topic_prefix)
        )
        app = build_app(runtime, spec(secured).routers(runtime))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://analyzer") as client:
            yield client
    finally:
        await producer.stop()


async def token(pool: asyncpg.Pool, role: Role) -> dict[str, str]:
    async with pool.acquire() as conn:
        made = await identity.create_token(conn, name=f"{role}@example.com", role=role, created_by="test")
    return {"Authorization": f"Bearer {made.text}"}


async def test_an_inventory_imported_over_the_api_is_listed_and_shown(
    settings: VigilSettings, pool: asyncpg.Pool
) -> None:
    commander, viewer = await token(pool, "commander"), await token(pool, "viewer")
    async with analyzer_api(settings, pool) as api:
        imported = await api.post(IMPORT, content=EXAMPLE.read_bytes(), headers={**commander, **YAML})
        assert imported.status_code == 200, imported.text
        assert imported.json() == {"assets_new": 7, "assets_updated": 0, "users_new": 3, "users_updated": 0}
        # A format given wins over a content type that does not say (text/plain from a plain `curl --data-binary`).
        sheet = "Kind,Identifier,Tier,Env\nhost,WEB-1,1,prod\nhost,build-1,4,dev\n"
        again = await api.post(
            IMPORT, params={"format": "csv"}, content=sheet, headers={**commander, "Content-Type": "text/plain"}
        )
        assert again.status_code == 200, again.text
        assert again.json() == {"assets_new": 1, "assets_updated": 1, "users_new": 0, "users_updated": 0}

        listed = await api.get("/api/v1/assets", headers=viewer)
        assert listed.status_code == 200, listed.text
        listing = listed.json()
        assert [a["identifier"] for a in listing["assets"]][:3] == ["db-payments-1", "web-1", "10.20.0.15"]
        assert len(listing["assets"]) == 8
        assert {u["name"] for u in listing["users"]} == {"alice", "svc-backup", "bob.admin"}

        address = (await api.get("/api/v1/assets/10.20.7.1", headers=viewer)).json()
        [match] = address["assets"]
        assert (match["looked_up_as"], match["matched_by"]) == ("ip", "cidr")
        assert (match["asset"]["identifier"], match["asset"]["business_service"]) == ("10.20.0.0/16", "payments")
        network = (await api.get("/api/v1/assets/10.20.0.0/16", headers=viewer)).json()
        assert [(m["looked_up_as"], m["asset"]["identifier"]) for m in network["assets"]] == [("cidr", "10.20.0.0/16")]
        bucket = (await api.get("/api/v1/assets/arn:aws:s3:::acme-customer-exports", headers=viewer)).json()
        assert [m["asset"]["tags"] for m in bucket["assets"]] == [["crown-jewel"]]
        account = (await api.get("/api/v1/assets/SVC-Backup", headers=viewer)).json()
        assert account["assets"] == [] and [u["privilege"] for u in account["users"]] == ["domain_admin"]
        missing = await api.get("/api/v1/assets/nowhere-1", headers=viewer)
        assert missing.status_code == 404 and "not in the inventory" in missing.json()["detail"]

    audited = await pool.fetch("SELECT principal, action, target FROM audit_log ORDER BY id")
    assert [tuple(r) for r in audited] == [("commander@example.com", "assets.import", "inventory")] * 2


async def test_a_file_with_any_problem_is_refused_whole_naming_each_line(
    settings: VigilSettings, pool: asyncpg.Pool
) -> None:
    commander = await token(pool, "commander")
    async with analyzer_api(settings, pool) as api:
        refused = await api.post(IMPORT, content=BROKEN_CSV, headers={**commander, **CSV})
        assert refused.status_code == 422, refused.text
        problems = refused.json()["detail"]["refused"]
        assert len(problems) == 2
        assert problems[0].startswith("body:3:2: identifier:") and problems[1].startswith("body:4:3: criticality:")

        broken_yaml = "assets:\n  - {kind: host, identifier: ok-1}\n  - {kind: host, identifier: x, colour: red}\n"
        refused = await api.post(IMPORT, content=broken_yaml, headers={**commander, "Content-Type": "text/yaml"})
        assert refused.status_code == 422
        assert [p.split(" ")[:2] for p in refused.json()["detail"]["refused"]] == [["body:3:41:", "assets.1.colour:"]]

        not_text = await api.post(IMPORT, content=b"kind,identifier\nhost,\xff\n", headers={**commander, **CSV})
        assert not_text.status_code == 422 and "not UTF-8" in not_text.json()["detail"]["refused"][0]
        nul = await api.post(
            IMPORT, content='assets:\n  - {kind: host, identifier: "a\\0b"}\n', headers={**commander, **YAML}
        )
        assert nul.status_code == 422 and nul.json()["detail"]["refused"][0].startswith("body:2:")
    async with pool.acquire() as conn:
        assert await list_(conn) == ([], [])  # nothing written, not even the good rows
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_importing_takes_a_commanders_token_and_reading_a_viewers(
    settings: VigilSettings, pool: asyncpg.Pool
) -> None:
    viewer = await token(pool, "viewer")
    async with analyzer_api(settings, pool) as api:
        for method, path in (("POST", IMPORT), ("GET", "/api/v1/assets"), ("GET", "/api/v1/assets/web-1")):
            anonymous = await api.request(method, path, content=EXAMPLE.read_bytes(), headers=YAML)
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert anonymous.headers["WWW-Authenticate"] == "Bearer"
        forbidden = await api.post(IMPORT, content=EXAMPLE.read_bytes(), headers={**viewer, **YAML})
        assert forbidden.status_code == 403
        assert "(viewer) may not" in forbidden.json()["detail"] and "commander" in forbidden.json()["detail"]
        assert (await api.get("/api/v1/assets", headers=viewer)).json() == {"assets": [], "users": []}
    async with pool.acquire() as conn:
        assert await list_(conn) == ([], [])


async def test_a_body_of_no_known_format_or_over_the_limit_is_refused(
    settings: VigilSettings, pool: asyncpg.Pool
) -> None:
    admin = await token(pool, "admin")
    async with analyzer_api(settings, pool) as api:
        unknown = await api.post(IMPORT, content="{}", headers={**admin, "Content-Type": "application/json"})
        assert unknown.status_code == 415 and "?format=" in unknown.json()["detail"]
        assert (
            await api.post(IMPORT, params={"format": "xml"}, content="x", headers={**admin, **CSV})
        ).status_code == 422

        big = "kind,identifier\n" + "".join(f"host,h-{n}\n" for n in range(10_000))  # over 64 KiB
        declared = await api.post(IMPORT, content=big, headers={**admin, **CSV})
        assert declared.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: only reading tells its size
            for start in range(0, len(big), 4096):
                yield big[start : start + 4096].encode()

        streamed = await api.post(IMPORT, content=chunks(), headers={**admin, **CSV})
        assert streamed.status_code == 413 and "over 65536 bytes" in streamed.json()["detail"]
    async with pool.acquire() as conn:
        assert await list_(conn) == ([], [])
