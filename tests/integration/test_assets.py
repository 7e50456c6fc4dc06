"""The asset inventory against real Postgres: imports, upserts, address matching, and the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from typer.testing import CliRunner, Result

from services.analyzer.assets import (
    Asset,
    Catalog,
    Unknown,
    User,
    import_catalog,
    list_,
    parse_csv,
    parse_yaml,
    resolve,
)
from shared.db import create_pool
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EXAMPLE = Path(__file__).parents[2] / "services" / "analyzer" / "assets.example.yaml"
NETWORKS = """
assets:
  - {kind: cidr, identifier: 10.0.0.0/8, criticality: 4}
  - {kind: cidr, identifier: 10.20.0.0/16, criticality: 2, business_service: payments}
  - {kind: cidr, identifier: 10.20.5.0/24, criticality: 1, tags: [crown-jewel, pci]}
  - {kind: ip, identifier: 10.20.5.7, criticality: 3, owner: db-team}
  - {kind: cidr, identifier: "2001:db8::/32", criticality: 3}
  - {kind: host, identifier: WEB-1, criticality: 2}
  - {kind: cloud_resource, identifier: "arn:aws:s3:::exports", criticality: 1, data_classification: restricted}
users:
  - {name: Alice, privilege: admin, owns: [payments], tags: [oncall]}
  - {name: bob}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's migrated database (no broker needed)."""
    pool = await create_pool(database_url, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
def on_test_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads its settings from the environment: point it at this test's database."""
    monkeypatch.setenv("DATABASE_URL", database_url)


async def vigil(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def load(db: asyncpg.Pool, catalog: Catalog) -> None:
    async with db.acquire() as conn:
        await import_catalog(conn, catalog)


async def test_an_import_upserts_by_kind_and_identifier(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        first = await import_catalog(conn, parse_yaml(NETWORKS, source="inv.yaml"))
        assert (first.assets_new, first.assets_updated, first.users_new, first.users_updated) == (7, 0, 2, 0)
        again = parse_csv(
            "kind,identifier,criticality,owner,tags\nhost,web-1,1,web-team,crown-jewel;edge\nhost,web-2,3,,\n",
            source="more.csv",
        )
        second = await import_catalog(conn, again)
        assert (second.assets_new, second.assets_updated) == (1, 1)
        users = await import_catalog(conn, parse_csv("name,privilege,owns\nALICE,domain_admin,\n", source="u.csv"))
        assert (users.users_new, users.users_updated) == (0, 1)
        assets, people = await list_(conn)
    web = next(a for a in assets if a.identifier == "web-1")
    assert (web.criticality, web.owner, web.tags) == (1, "web-team", ["crown-jewel", "edge"])
    assert len(assets) == 8
    assert [(u.name, u.privilege, u.owns, u.tags) for u in people] == [
        ("alice", "domain_admin", [], []),  # an update replaces the whole record
        ("bob", "standard", [], []),
    ]


async def test_a_failing_import_changes_nothing(db: asyncpg.Pool) -> None:
    await load(db, parse_yaml(NETWORKS, source="inv.yaml"))
    async with db.acquire() as conn:
        before = await list_(conn)
        # The users' upsert fails after the assets' ran: the assets' must roll back with it.
        bad = Catalog.model_construct(
            assets=[Asset(kind="host", identifier="new-host")],
            # The parser would refuse this privilege: built unvalidated, it is the table that refuses it.
            users=[User.model_construct(name="x", privilege="root", department=None, owns=[], tags=[])],  # type: ignore[arg-type]
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await import_catalog(conn, bad)
        assert await list_(conn) == before


async def test_an_address_matches_itself_or_the_most_specific_network_holding_it(db: asyncpg.Pool) -> None:
    await load(db, parse_yaml(NETWORKS, source="inv.yaml"))
    async with db.acquire() as conn:
        found = await resolve(
            conn,
            hosts=[],
            ips=["10.20.5.7", "10.20.5.8", "10.20.9.1", "10.99.0.1", "2001:DB8::1", "192.0.2.1", "not-an-ip"],
            users=[],
            resources=[],
        )
    matched = {f.looked_up: (f.asset.identifier, f.by) for f in found.assets}
    assert matched == {
        "10.20.5.7": ("10.20.5.7", "exact"),
        "10.20.5.8": ("10.20.5.0/24", "cidr"),
        "10.20.9.1": ("10.20.0.0/16", "cidr"),
        "10.99.0.1": ("10.0.0.0/8", "cidr"),
        "2001:DB8::1": ("2001:db8::/32", "cidr"),
    }
    assert set(found.unknown) == {Unknown("ip", "192.0.2.1"), Unknown("ip", "not-an-ip")}


async def test_resolve_looks_many_up_at_once_and_keeps_every_unknown(db: asyncpg.Pool) -> None:
    await load(db, parse_yaml(NETWORKS, source="inv.yaml"))
    hosts = ["Web-1", "web-1.", *(f"ghost-{n}" for n in range(200))]
    ips = [f"10.20.5.{n}" for n in range(1, 255)] + ["198.51.100.7"]
    async with db.acquire() as conn:
        found = await resolve(
            conn, hosts=hosts, ips=ips, users=["ALICE", "mallory", " "], resources=["arn:aws:s3:::exports", "arn:x"]
        )
    by_kind = {kind: [f for f in found.assets if f.kind == kind] for kind in ("host", "ip", "resource")}
    assert [(f.looked_up, f.asset.identifier) for f in by_kind["host"]] == [("Web-1", "web-1")]  # one host, once
    assert len(by_kind["ip"]) == 254
    assert [f.asset.identifier for f in by_kind["resource"]] == ["arn:aws:s3:::exports"]
    assert [u.name for u in found.users] == ["alice"]
    unknown = set(found.unknown)
    assert {Unknown("host", f"ghost-{n}") for n in range(200)} <= unknown
    assert {
        Unknown("ip", "198.51.100.7"),
        Unknown("user", "mallory"),
        Unknown("user", " "),
        Unknown("resource", "arn:x"),
    } <= unknown
    assert len(found.unknown) == 204


async def test_public_addresses_and_resource_ids_in_passing_count_only_when_listed(db: asyncpg.Pool) -> None:
    await load(db, parse_yaml(NETWORKS, source="inv.yaml"))
    ours = "assets:\n  - {kind: cidr, identifier: 198.51.100.0/24}\n  - {kind: cloud_resource, identifier: i-0abc}\n"
    await load(db, parse_yaml(ours, source="ours.yaml"))
    async with db.acquire() as conn:
        found = await resolve(
            conn,
            hosts=[],
            ips=["10.99.0.1", "192.168.9.9"],
            users=[],
            resources=["Instance i-0abc", "S3Bucket arn:aws:s3:::exports, arn:aws:s3:::other", "Instance i-0fff"],
            ips_if_known=["198.51.100.7", "203.0.113.9", "10.99.0.1", "not-an-ip"],
            resources_if_known=["arn:aws:iam::123456789012:role/Admin", "arn:aws:s3:::exports"],
        )
    matched = {(f.kind, f.looked_up): f.asset.identifier for f in found.assets}
    assert matched == {
        ("resource", "Instance i-0abc"): "i-0abc",
        ("resource", "S3Bucket arn:aws:s3:::exports, arn:aws:s3:::other"): "arn:aws:s3:::exports",
        ("resource", "arn:aws:s3:::exports"): "arn:aws:s3:::exports",
        ("ip", "10.99.0.1"): "10.0.0.0/8",
        ("ip", "198.51.100.7"): "198.51.100.0/24",  # a public address of ours
    }
    # What the alerts are about and inside addresses stay unknown when not listed; the attacker's
    # address, a role in passing and what is no address at all are no unknown system of ours.
    assert set(found.unknown) == {Unknown("resource", "Instance i-0fff"), Unknown("ip", "192.168.9.9")}


async def test_an_instance_named_as_host_and_as_resource_is_one_system(db: asyncpg.Pool) -> None:
    await load(db, parse_yaml("assets:\n  - {kind: cloud_resource, identifier: i-0abc}\n", source="inv.yaml"))
    async with db.acquire() as conn:
        found = await resolve(  # as GuardDuty names an instance: the alert's host and its resource
            conn, hosts=["i-0abc", "i-0fff"], ips=[], users=[], resources=["Instance i-0abc", "Instance i-0fff"]
        )
    assert [(f.looked_up, f.asset.identifier) for f in found.assets] == [("Instance i-0abc", "i-0abc")]
    assert found.unknown == (Unknown("host", "i-0fff"),)


async def test_resolve_with_nothing_asks_nothing(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        found = await resolve(conn, hosts=[], ips=[], users=[], resources=[])
    assert (found.assets, found.users, found.unknown) == ((), (), ())


async def test_the_table_refuses_an_address_that_is_not_one(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO assets (kind, identifier, criticality, environment, data_classification) "
                "VALUES ('ip', '10.0.0.0/8', 1, 'prod', 'internal')"
            )


@pytest.mark.usefixtures("on_test_database")
async def test_cli_imports_yaml_and_csv_lists_and_shows(db: asyncpg.Pool, tmp_path: Path) -> None:
    imported = await vigil("assets", "import", str(EXAMPLE))
    assert imported.exit_code == 0, imported.output
    assert " ".join(imported.output.split()) == "7 asset(s) (7 new, 0 updated), 3 user(s) (3 new, 0 updated)"

    sheet = tmp_path / "inventory.txt"
    sheet.write_text("Kind,Identifier,Tier,Env\nhost,WEB-1,1,prod\nhost,build-1,4,dev\n")
    unknown_format = await vigil("assets", "import", str(sheet))
    assert unknown_format.exit_code == 1 and "--format" in unknown_format.output
    from_csv = await vigil("assets", "import", str(sheet), "--format", "csv")
    assert from_csv.exit_code == 0, from_csv.output
    assert "2 asset(s) (1 new, 1 updated)" in from_csv.output

    listed = await vigil("assets", "list", "--json")
    assert listed.exit_code == 0, listed.output
    listing = json.loads(listed.output)
    assert [a["identifier"] for a in listing["assets"]][:3] == ["db-payments-1", "web-1", "10.20.0.15"]
    assert {u["name"] for u in listing["users"]} == {"alice", "svc-backup", "bob.admin"}
    table = await vigil("assets", "list")
    assert table.exit_code == 0 and "8 asset(s)" in table.output and "svc-backup" in table.output

    shown = await vigil("assets", "show", "10.20.7.1", "--json")
    assert shown.exit_code == 0, shown.output
    [match] = json.loads(shown.output)
    assert (match["as"], match["identifier"], match["business_service"]) == (
        "ip (matched by cidr 10.20.0.0/16)",
        "10.20.0.0/16",
        "payments",
    )
    network = await vigil("assets", "show", "10.20.0.0/16")
    assert network.exit_code == 0 and "payments" in network.output
    account = await vigil("assets", "show", "SVC-Backup")
    assert account.exit_code == 0 and "domain_admin" in account.output
    missing = await vigil("assets", "show", "nowhere-1")
    assert missing.exit_code == 1 and "not in the inventory" in missing.output


@pytest.mark.usefixtures("on_test_database")
async def test_cli_refuses_a_broken_file_whole_naming_each_line(db: asyncpg.Pool, tmp_path: Path) -> None:
    broken = tmp_path / "inventory.csv"
    broken.write_text("kind,identifier,criticality\nhost,fine-1,2\nip,10.0.0.300,2\nhost,fine-2,9\n")
    result = await vigil("assets", "import", str(broken))
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert f"{broken}:3:2: identifier:" in said and f"{broken}:4:3: criticality:" in said
    assert "nothing imported: 2 problem(s)" in said
    async with db.acquire() as conn:
        assert await list_(conn) == ([], [])
