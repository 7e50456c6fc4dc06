"""The STIX 2.1 export through the reporter's API, of an incident whose analysis the reporter's own
handlers stored in the real Postgres; and who may read it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
import stix2
from typer.testing import CliRunner

from services.analyzer.intel import parse_stix
from services.reporter import api as reporter_api
from services.reporter import handlers as reporter
from shared import identity
from shared.consumer import HandlerContext, Inbound
from shared.events import (
    Analysis,
    AttackTactic,
    AttackTechnique,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentType,
    Indicator,
    Severity,
)
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.factories import T0, snapshot
from tests.helpers import serve_app
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

INCIDENT = "inc-stix"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
MEDIA_TYPE = "application/stix+json;version=2.1"


def _seen(**fields: object) -> dict[str, object]:
    return {"first_seen": T0 + timedelta(minutes=1), "last_seen": T0 + timedelta(minutes=9), "count": 2, **fields}


def _events() -> list[EventBase]:
    return [
        IncidentDetected(
            source="/vigil/detector",
            subject=INCIDENT,
            time=T0 + timedelta(seconds=20),
            data=snapshot(title="Reverse shell on web-01", first_seen=T0),
        ),
        IncidentAnalyzed(
            source="/vigil/analyzer",
            subject=INCIDENT,
            time=T0 + timedelta(minutes=10),
            data=Analysis(
                type=IncidentType.SYSTEM_COMPROMISE,
                severity=Severity.SEV1,
                title="Reverse shell on web-01",
                indicators=[
                    Indicator.model_validate(
                        _seen(kind="ipv4", value="203.0.113.9", verdict="malicious", confidence=90, tags=["c2"])
                    ),
                    Indicator.model_validate(_seen(kind="sha256", value=SHA256, verdict="malicious")),
                    Indicator.model_validate(_seen(kind="domain", value="evil.example.net", verdict="suspicious")),
                    Indicator.model_validate(_seen(kind="ipv4", value="10.0.0.5", verdict="malicious", internal=True)),
                    Indicator.model_validate(_seen(kind="ipv4", value="198.51.100.7")),  # no feed lists it
                ],
                affected_hosts=["web-01"],
                affected_users=["deploy"],
                alert_count=2,
                summary="reverse shell from web-01 to 203.0.113.9",
                techniques=[
                    AttackTechnique(
                        id="T1059.004",
                        name="Command and Scripting Interpreter: Unix Shell",
                        tactics=["TA0002"],
                        alerts=2,
                        first_seen=T0,
                        first_alert="falco:1",
                    )
                ],
                tactics=[AttackTactic(id="TA0002", name="Execution", stage=5, first_seen=T0, stated=False)],
            ),
        ),
    ]


@pytest.fixture
async def analysed(pool: asyncpg.Pool, names: TopicNames) -> str:
    """One incident, detected and analysed, through the reporter's own handlers."""
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter.handle(ctx, [Inbound(e.id, e, None) for e in _events()])
    return INCIDENT


@pytest.fixture
async def client(settings: VigilSettings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    runtime = Runtime(service="reporter", settings=settings, pool=pool, producer=None, names=TopicNames())  # type: ignore[arg-type]
    async with (
        serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-api") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        yield http


async def test_the_api_exports_the_stored_analysis_as_a_stix_bundle(analysed: str, client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/v1/incidents/{analysed}/stix")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    bundle = stix2.parse(response.text, allow_custom=False, version="2.1")
    by_type: dict[str, list[object]] = {}
    for o in bundle.objects:
        by_type.setdefault(o.type, []).append(o)
    # Suspicious and worse by default; the internal address and the unlisted one stay home.
    assert sorted(o.pattern for o in by_type["indicator"]) == [  # type: ignore[attr-defined]
        "[domain-name:value = 'evil.example.net']",
        f"[file:hashes.'SHA-256' = '{SHA256}']",
        "[ipv4-addr:value = '203.0.113.9']",
    ]
    assert "10.0.0.5" not in response.text and "198.51.100.7" not in response.text
    (technique,) = by_type["attack-pattern"]
    assert technique.external_references[0].external_id == "T1059.004"  # type: ignore[attr-defined]
    assert len(by_type["relationship"]) == 3
    (report,) = by_type["report"]
    assert report.name == "Reverse shell on web-01"  # type: ignore[attr-defined]
    assert report.object_marking_refs == ["marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"]  # type: ignore[attr-defined]
    # The same export again is the same bundle.
    assert (await client.get(f"/api/v1/incidents/{analysed}/stix")).text == response.text
    # And Vigil's own STIX feed import reads back what the analysis said.
    entries = {(e.kind, e.value): e for e in parse_stix(response.text)}
    assert set(entries) == {("ip", "203.0.113.9"), ("sha256", SHA256), ("domain", "evil.example.net")}
    assert (entries["ip", "203.0.113.9"].confidence, entries["ip", "203.0.113.9"].tags) == (90, ("c2",))


async def test_min_verdict_and_tlp_are_the_callers(analysed: str, client: httpx.AsyncClient) -> None:
    response = await client.get(
        f"/api/v1/incidents/{analysed}/stix", params={"min_verdict": "malicious", "tlp": "amber+strict"}
    )
    assert response.status_code == 200, response.text
    bundle = json.loads(response.text)
    stix2.parse(bundle, allow_custom=False)
    assert {o["name"] for o in bundle["objects"] if o["type"] == "indicator"} == {"203.0.113.9", SHA256}
    (marking,) = [o for o in bundle["objects"] if o["type"] == "marking-definition"]
    assert (marking["id"], marking["name"]) == (
        "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        "TLP:AMBER+STRICT",
    )
    every = await client.get(f"/api/v1/incidents/{analysed}/stix", params={"min_verdict": "any", "tlp": "clear"})
    names = {o["name"] for o in every.json()["objects"] if o["type"] == "indicator"}
    assert names == {"203.0.113.9", SHA256, "evil.example.net", "198.51.100.7"}
    for bad in ({"min_verdict": "benign"}, {"tlp": "white"}, {"tlp": "amber strict"}):
        assert (await client.get(f"/api/v1/incidents/{analysed}/stix", params=bad)).status_code == 422, bad


async def test_an_unknown_incident_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/incidents/nope/stix")
    assert response.status_code == 404
    assert response.json()["detail"] == "no incident nope"


async def test_who_may_export(analysed: str, settings: VigilSettings, pool: asyncpg.Pool) -> None:
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    runtime = Runtime(service="reporter", settings=secured, pool=pool, producer=None, names=TopicNames())  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        viewer = (await identity.create_token(conn, name="v", role="viewer", created_by="test")).text
        ingest = (await identity.create_token(conn, name="i", role="ingest", created_by="test")).text
    path = f"/api/v1/incidents/{analysed}/stix"
    async with (
        serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-api") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert (await http.get(path)).status_code == 401
        assert (
            await http.get(path, headers={"Authorization": "Bearer vigil_notarealtoken_" + "x" * 40})
        ).status_code == 401
        assert (await http.get(path, headers={"Authorization": f"Bearer {ingest}"})).status_code == 403
        allowed = await http.get(path, headers={"Authorization": f"Bearer {viewer}"})
        assert allowed.status_code == 200 and allowed.headers["content-type"] == MEDIA_TYPE
        assert (
            await http.get("/api/v1/incidents/nope/stix", headers={"Authorization": f"Bearer {viewer}"})
        ).status_code == 404


async def test_the_cli_exports_the_same_bundle(
    analysed: str, client: httpx.AsyncClient, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    out = tmp_path / "indicators.json"
    args = ["export", "stix", analysed, "-o", str(out), "--min-verdict", "malicious", "--tlp", "green"]
    result = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert result.exit_code == 0, result.output
    served = await client.get(f"/api/v1/incidents/{analysed}/stix", params={"min_verdict": "malicious", "tlp": "green"})
    assert json.loads(out.read_text()) == served.json()
    # The short id `incidents list` prints names it too.
    short = await asyncio.to_thread(CliRunner().invoke, cli, [*args[:2], analysed[:5], *args[3:]])
    assert short.exit_code == 0 and json.loads(out.read_text()) == served.json(), short.output
    for refused in (["--tlp", "white"], ["--min-verdict", "benign"]):
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["export", "stix", analysed, *refused])
        assert result.exit_code == 1 and refused[0] in result.output, result.output
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["export", "stix", "nope"])
    assert result.exit_code == 1 and "no incident nope" in result.output, result.output
