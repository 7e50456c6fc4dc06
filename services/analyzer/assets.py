"""The asset inventory: what the hosts, addresses, accounts and cloud resources of an incident are.

Parsers (YAML, CSV), ``resource_names``, ``one_name_per_system`` and ``impact`` /
``severity_recommendation`` are pure; ``import_catalog``, ``list_``, ``get_asset``, ``resolve`` and
``show`` are the only functions that touch the database (tables from migration 0016).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from shared.db import Conn
from shared.events import Severity
from shared.yamlfile import YamlFileError, node_at, validate_yaml

AssetKind = Literal["host", "ip", "cidr", "cloud_resource"]
Classification = Literal["public", "internal", "confidential", "restricted"]
Privilege = Literal["standard", "elevated", "admin", "domain_admin"]
# How an incident (or `vigil assets show`) named an asset; `cidr`: a network looked up as itself.
LookupKind = Literal["host", "ip", "user", "resource", "cidr"]

ASSET_KINDS: tuple[AssetKind, ...] = ("host", "ip", "cidr", "cloud_resource")
CLASSIFICATIONS: tuple[Classification, ...] = ("public", "internal", "confidential", "restricted")
PRIVILEGED: frozenset[Privilege] = frozenset({"admin", "domain_admin"})
CROWN_JEWEL_TAG = "crown-jewel"
WIDE_BLAST_RADIUS = 10  # affected assets from which an incident is at least SEV2
FORMATS = ("yaml", "csv")
# The primary keys' btree takes entries up to about 2,700 bytes; longer than any real name or id.
MAX_IDENTIFIER_BYTES = 2048
_ENVIRONMENT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class InventoryFileError(YamlFileError):
    """An inventory file that cannot be imported; `problems` are `source:line[:column]: where: why`."""


# ---- records, as files give them -----------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable(cls, value: object) -> object:
        """Postgres text holds no NUL and UTF-8 no lone surrogate; a YAML escape (`"\\0"`) can write both."""
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and _UNSTORABLE.search(text) for text in texts):
            raise ValueError("holds a NUL character or a lone surrogate, which no stored text can")
        return value


def _bounded(text: str) -> str:
    if len(text.encode(errors="surrogatepass")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"longer than {MAX_IDENTIFIER_BYTES} bytes")
    return text


def _canonical_identifier(kind: AssetKind, value: str) -> str:
    """One spelling per asset, so that lookups match: lower-case hosts, normalised addresses."""
    text = value.strip()
    if not text:
        raise ValueError("identifier is empty")
    _bounded(text)
    if kind == "host":
        return text.rstrip(".").lower()
    if kind == "ip":
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address (a network is kind cidr)") from None
    if kind == "cidr":
        try:
            return str(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a network in CIDR notation: {exc}") from None
    return text


def _tag_list(value: object) -> object:
    """Tags may come as a list or as one string separated by ';' or ',' (a CSV cell)."""
    if isinstance(value, str):
        return [part.strip() for part in re.split(r"[;,]", value) if part.strip()]
    return value


class Asset(_Record):
    """One asset of the inventory, its identifier in canonical form."""

    kind: AssetKind
    identifier: str
    owner: str | None = None
    business_service: str | None = None
    criticality: int = Field(3, ge=1, le=4, description="1 is the most critical, 4 the least.")
    environment: str = Field("prod", description="prod, staging, dev, … (lower case).")
    data_classification: Classification = "internal"
    tags: list[str] = Field(default_factory=list)

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str) -> str:
        value = value.strip().lower()
        if not _ENVIRONMENT.match(value):
            raise ValueError(f"{value!r} is not an environment name like prod, staging or dev")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: object) -> object:
        return _tag_list(value)

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        return _canonical_identifier(kind, value) if kind is not None else value


class User(_Record):
    """An account as alerts name it, in lower case."""

    name: str
    department: str | None = None
    privilege: Privilege = "standard"
    owns: list[str] = Field(default_factory=list, description="Business services this person owns.")
    tags: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip().lower()
        if not value:
            raise ValueError("name is empty")
        return _bounded(value)

    @field_validator("owns", "tags", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _tag_list(value)


class Catalog(_Record):
    """What one inventory file holds."""

    assets: list[Asset] = Field(default_factory=list)
    users: list[User] = Field(default_factory=list)


# ---- parsers -------------------------------------------------------------------------------------


def format_of(filename: str, given: str | None = None) -> str:
    """The file's format: the one given, or by its extension."""
    if given is not None:
        if given not in FORMATS:
            raise ValueError(f"unknown format {given!r}; one of {', '.join(FORMATS)}")
        return given
    lowered = filename.lower()
    if lowered.endswith((".yaml", ".yml")):
        return "yaml"
    if lowered.endswith(".csv"):
        return "csv"
    raise ValueError(f"cannot tell the format of {filename!r} from its extension; say --format yaml or csv")


def parse(document: str, *, source: str, format_name: str) -> Catalog:
    """Parse an inventory file in the format named; raise InventoryFileError naming every problem's line."""
    return parse_yaml(document, source=source) if format_name == "yaml" else parse_csv(document, source=source)


def parse_yaml(document: str, *, source: str) -> Catalog:
    """A YAML file with `assets:` and `users:` lists (see assets.example.yaml)."""
    catalog = validate_yaml(document, Catalog, source=source, raises=InventoryFileError)
    root = yaml.compose(document, Loader=yaml.SafeLoader)

    def line_of(section: str, index: int) -> int:
        return node_at(root, [section, index]).start_mark.line + 1 if root is not None else 1

    problems = _duplicates(
        [((a.kind, a.identifier), line_of("assets", i)) for i, a in enumerate(catalog.assets)],
        [(u.name, line_of("users", i)) for i, u in enumerate(catalog.users)],
        source=source,
    )
    if problems:
        raise InventoryFileError(problems)
    return catalog


# CSV headers as spreadsheets spell them -> fields. A file is of assets or of users, by its header.
ASSET_COLUMNS = {
    "kind": "kind",
    "type": "kind",
    "identifier": "identifier",
    "id": "identifier",
    "asset": "identifier",
    "owner": "owner",
    "owner_team": "owner",
    "business_service": "business_service",
    "service": "business_service",
    "criticality": "criticality",
    "tier": "criticality",
    "environment": "environment",
    "env": "environment",
    "data_classification": "data_classification",
    "classification": "data_classification",
    "tags": "tags",
}
USER_COLUMNS = {
    "name": "name",
    "user": "name",
    "username": "name",
    "account": "name",
    "department": "department",
    "dept": "department",
    "privilege": "privilege",
    "privilege_level": "privilege",
    "owns": "owns",
    "owner_of": "owns",
    "tags": "tags",
}


def _header_key(text: str) -> str:
    return re.sub(r"[\s-]+", "_", text.strip().lower())


def parse_csv(document: str, *, source: str) -> Catalog:
    """A CSV file of assets (a header with `identifier`) or of users (`name`); lists are ';'-separated."""
    reader = csv.reader(io.StringIO(document, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InventoryFileError([f"{source}:1: (file): empty, no header"]) from None
    except csv.Error as exc:
        raise InventoryFileError([f"{source}:1: (file): not CSV: {exc}"]) from None
    keys = [_header_key(h) for h in header]
    if "identifier" in {ASSET_COLUMNS.get(k) for k in keys}:
        columns, model, section = ASSET_COLUMNS, Asset, "assets"
    elif "name" in {USER_COLUMNS.get(k) for k in keys}:
        columns, model, section = USER_COLUMNS, User, "users"  # type: ignore[assignment]
    else:
        raise InventoryFileError(
            [f"{source}:1: (header): needs an identifier column (assets) or a name column (users)"]
        )
    problems: list[str] = []
    fields: list[str] = []
    for number, (raw, key) in enumerate(zip(header, keys, strict=True), start=1):
        name = columns.get(key)
        if name is None:
            problems.append(f"{source}:1:{number}: (header): unknown column {raw!r}; one of {', '.join(columns)}")
        elif name in fields:
            problems.append(f"{source}:1:{number}: (header): column {raw!r} repeats {name}")
        fields.append(name or "")
    if problems:
        raise InventoryFileError(problems)

    records: list[tuple[Any, int]] = []
    line = reader.line_num + 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                records.extend(_csv_record(row, fields, header, model, source=source, line=line, problems=problems))
            line = reader.line_num + 1
    except csv.Error as exc:
        problems.append(f"{source}:{line}: (row): not CSV: {exc}")
    problems += _duplicates(
        [((r.kind, r.identifier), n) for r, n in records if isinstance(r, Asset)],
        [(r.name, n) for r, n in records if isinstance(r, User)],
        source=source,
    )
    if problems:
        raise InventoryFileError(problems)
    return Catalog.model_validate({section: [r for r, _ in records]})


def _csv_record(
    row: list[str],
    fields: list[str],
    header: list[str],
    model: type[Asset] | type[User],
    *,
    source: str,
    line: int,
    problems: list[str],
) -> list[tuple[Any, int]]:
    """The row as a record (an empty cell means the default), or its problems appended."""
    if len(row) > len(fields):
        problems.append(f"{source}:{line}: (row): {len(row)} cells where the header has {len(fields)}")
        return []
    row = row + [""] * (len(fields) - len(row))  # spreadsheets leave trailing empty cells out
    data = {name: cell.strip() for name, cell in zip(fields, row, strict=True) if cell.strip()}
    try:
        return [(model.model_validate(data), line)]
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            column = f":{fields.index(name) + 1}" if name in fields else ""
            where = header[fields.index(name)].strip() if name in fields else name or "(row)"
            problems.append(f"{source}:{line}{column}: {where}: {error['msg']}")
        return []


def _duplicates(
    assets: Iterable[tuple[tuple[str, str], int]], users: Iterable[tuple[str, int]], *, source: str
) -> list[str]:
    """Each identifier given twice: one upsert must not write a row twice, and which one wins is unclear."""
    problems = []
    first: dict[object, int] = {}
    for key, line in [*assets, *users]:
        if key in first:
            what = f"{key[0]} {key[1]}" if isinstance(key, tuple) else f"user {key}"
            problems.append(f"{source}:{line}: {what}: given again (first on line {first[key]})")
        else:
            first[key] = line
    return problems


# ---- the tables ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    """How an import changed the inventory."""

    assets_new: int
    assets_updated: int
    users_new: int
    users_updated: int


def _text_array(json_param: str, index: str) -> str:
    """SQL for the text[] at one position of a JSON array of lists (Postgres arrays must be rectangular)."""
    return (
        f"array(SELECT e.t FROM jsonb_array_elements_text({json_param}::jsonb -> ({index}::int - 1))"
        " WITH ORDINALITY AS e(t, i) ORDER BY e.i)"
    )


UPSERT_ASSETS = f"""
    INSERT INTO assets (kind, identifier, owner, business_service, criticality, environment,
                        data_classification, tags)
    SELECT a.kind, a.identifier, a.owner, a.business_service, a.criticality, a.environment,
           a.data_classification, {_text_array("$8", "a.n")}
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[], $7::text[])
         WITH ORDINALITY AS a(kind, identifier, owner, business_service, criticality, environment,
                              data_classification, n)
    ON CONFLICT (kind, identifier) DO UPDATE SET owner = EXCLUDED.owner,
        business_service = EXCLUDED.business_service, criticality = EXCLUDED.criticality,
        environment = EXCLUDED.environment, data_classification = EXCLUDED.data_classification,
        tags = EXCLUDED.tags, updated_at = now()
    RETURNING xmax = 0 AS inserted"""

UPSERT_USERS = f"""
    INSERT INTO users (name, department, privilege, owns, tags)
    SELECT u.name, u.department, u.privilege, {_text_array("$4", "u.n")}, {_text_array("$5", "u.n")}
    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(name, department, privilege, n)
    ON CONFLICT (name) DO UPDATE SET department = EXCLUDED.department, privilege = EXCLUDED.privilege,
        owns = EXCLUDED.owns, tags = EXCLUDED.tags, updated_at = now()
    RETURNING xmax = 0 AS inserted"""


async def import_catalog(conn: Conn, catalog: Catalog) -> Imported:
    """Upsert every asset and user in one transaction: a failure leaves the inventory as it was."""
    assets, users = catalog.assets, catalog.users
    async with conn.transaction():
        asset_rows = await conn.fetch(
            UPSERT_ASSETS,
            [a.kind for a in assets],
            [a.identifier for a in assets],
            [a.owner for a in assets],
            [a.business_service for a in assets],
            [a.criticality for a in assets],
            [a.environment for a in assets],
            [a.data_classification for a in assets],
            [a.tags for a in assets],
        )
        user_rows = await conn.fetch(
            UPSERT_USERS,
            [u.name for u in users],
            [u.department for u in users],
            [u.privilege for u in users],
            [u.owns for u in users],
            [u.tags for u in users],
        )
    assets_new = sum(r["inserted"] for r in asset_rows)
    users_new = sum(r["inserted"] for r in user_rows)
    return Imported(assets_new, len(asset_rows) - assets_new, users_new, len(user_rows) - users_new)


ASSET_COLUMNS_SQL = (
    "a.kind, a.identifier, a.owner, a.business_service, a.criticality, a.environment, a.data_classification, a.tags"
)
USER_COLUMNS_SQL = "u.name, u.department, u.privilege, u.owns, u.tags"


def _asset(row: Any) -> Asset:
    return Asset.model_validate({k: row[k] for k in Asset.model_fields})


def _user(row: Any) -> User:
    return User.model_validate({k: row[k] for k in User.model_fields})


async def list_(conn: Conn) -> tuple[list[Asset], list[User]]:
    """Every asset (most critical first) and every user."""
    assets = await conn.fetch(f"SELECT {ASSET_COLUMNS_SQL} FROM assets a ORDER BY a.criticality, a.kind, a.identifier")
    users = await conn.fetch(f"SELECT {USER_COLUMNS_SQL} FROM users u ORDER BY u.name")
    return [_asset(r) for r in assets], [_user(r) for r in users]


async def get_asset(conn: Conn, *, kind: AssetKind, identifier: str) -> Asset | None:
    """One asset by its kind and identifier (canonical or not)."""
    row = await conn.fetchrow(
        f"SELECT {ASSET_COLUMNS_SQL} FROM assets a WHERE a.kind = $1 AND a.identifier = $2",
        kind,
        _canonical_identifier(kind, identifier),
    )
    return None if row is None else _asset(row)


# ---- resolving what an incident names ------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """An asset an incident names: looked up as `looked_up`, matched exactly or by a network holding it."""

    kind: LookupKind
    looked_up: str
    asset: Asset
    by: Literal["exact", "cidr"] = "exact"


@dataclass(frozen=True)
class Unknown:
    """Something an incident names that the inventory does not know: kept, since it may matter most."""

    kind: LookupKind
    value: str


@dataclass(frozen=True)
class Inventory:
    """What the inventory says of an incident's hosts, addresses, accounts and resources."""

    assets: tuple[Found, ...] = ()
    users: tuple[User, ...] = ()
    unknown: tuple[Unknown, ...] = ()


def _lookups(values: Sequence[str], canonical: Any) -> tuple[dict[Any, str], list[str]]:
    """Canonical key -> the value as first given, and the values that cannot be canonical (unknown)."""
    keys: dict[Any, str] = {}
    invalid: list[str] = []
    for value in values:
        try:
            key = canonical(value)
        except ValueError:
            if value not in invalid:
                invalid.append(value)
            continue
        keys.setdefault(key, value)
    return keys, invalid


def _host_key(value: str) -> str:
    return _canonical_identifier("host", value)


def _user_key(value: str) -> str:
    key = value.strip().lower()
    if not key:
        raise ValueError("empty")
    return key


def _resource_key(value: str) -> str:
    return _canonical_identifier("cloud_resource", value)


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(value.strip())


def resource_names(value: str) -> list[str]:
    """The names a resource field may list a cloud resource by: the whole field, then each name in it.

    Adapters write the field as a bare name or as "<type> <name>[, <name>…]": "Instance i-0abc",
    "S3Bucket logs, exports", "AWS::IAM::Role arn:aws:iam::…:role/x", "cloud instance i-0abc".
    """
    names = [value]
    for part in value.split(","):
        if words := part.split():
            names += [part, words[-1]]
    spelled = []
    for name in names:
        try:
            spelled.append(_resource_key(name))
        except ValueError:
            continue  # empty, or too long to be listed
    return list(dict.fromkeys(spelled))


async def resolve(
    conn: Conn,
    *,
    hosts: Sequence[str],
    ips: Sequence[str],
    users: Sequence[str],
    resources: Sequence[str],
    ips_if_known: Sequence[str] = (),
    resources_if_known: Sequence[str] = (),
) -> Inventory:
    """Look every name up (one query per kind); an address matches itself or the most specific network holding it.

    What the inventory lacks is listed as unknown, but for the ``*_if_known`` names: those are someone
    else's unless the inventory lists them (a public address: the attacker's, or the organisation's own).
    A resource matches by any of its ``resource_names``.
    """
    found: list[Found] = []
    known_users: list[User] = []
    unknown: list[Unknown] = []

    host_keys, bad_hosts = _lookups(hosts, _host_key)
    if host_keys:
        rows = await conn.fetch(
            f"SELECT {ASSET_COLUMNS_SQL} FROM assets a WHERE a.kind = 'host' AND a.identifier = ANY($1::text[])",
            list(host_keys),
        )
        for row in rows:
            found.append(Found("host", host_keys.pop(row["identifier"]), _asset(row)))
        unknown += [Unknown("host", value) for value in host_keys.values()]
    unknown += [Unknown("host", v) for v in bad_hosts]

    resources_found, resources_unknown = await _resolve_resources(conn, resources, resources_if_known)
    found += resources_found
    unknown += resources_unknown

    ip_keys, bad_ips = _lookups(ips, _address)
    every_ip = dict(ip_keys)
    for key, value in _lookups(ips_if_known, _address)[0].items():
        every_ip.setdefault(key, value)  # what is no address is no one's asset: not unknown either
    if every_ip:
        addresses = list(every_ip)
        rows = await conn.fetch(
            f"""SELECT DISTINCT ON (q.n) q.n, {ASSET_COLUMNS_SQL}
                FROM unnest($1::inet[]) WITH ORDINALITY AS q(ip, n)
                JOIN assets a ON a.address >>= q.ip
                ORDER BY q.n, masklen(a.address) DESC, a.kind = 'ip' DESC""",
            addresses,
        )
        for row in rows:
            address = addresses[row["n"] - 1]
            found.append(Found("ip", every_ip.pop(address), _asset(row), "exact" if row["kind"] == "ip" else "cidr"))
        unknown += [Unknown("ip", value) for key, value in every_ip.items() if key in ip_keys]
    unknown += [Unknown("ip", v) for v in bad_ips]

    user_keys, bad_users = _lookups(users, _user_key)
    if user_keys:
        rows = await conn.fetch(
            f"SELECT {USER_COLUMNS_SQL} FROM users u WHERE u.name = ANY($1::text[])", list(user_keys)
        )
        for row in rows:
            known_users.append(_user(row))
            user_keys.pop(row["name"])
        unknown += [Unknown("user", value) for value in user_keys.values()]
    unknown += [Unknown("user", v) for v in bad_users]
    return Inventory(tuple(found), tuple(known_users), tuple(one_name_per_system(found, unknown)))


def one_name_per_system(found: Sequence[Found], unknown: Sequence[Unknown]) -> list[Unknown]:
    """The unknown without what names, under another kind, a system found or listed already.

    Tools name an instance both as the alert's host and as its resource ("i-0abc", "Instance i-0abc"):
    one system, which is not unknown when the inventory lists it as either, nor unknown twice.
    """
    hosts = {f.looked_up.strip().lower() for f in found if f.kind == "host"}
    hosts |= {u.value.strip().lower() for u in unknown if u.kind == "host"}
    resources = {f.asset.identifier.lower() for f in found if f.kind == "resource"}
    return [
        u
        for u in unknown
        if not (u.kind == "host" and u.value.strip().lower() in resources)
        and not (u.kind == "resource" and any(name.lower() in hosts for name in resource_names(u.value)))
    ]


async def _resolve_resources(
    conn: Conn, named: Sequence[str], if_known: Sequence[str]
) -> tuple[list[Found], list[Unknown]]:
    """Cloud resources by any of their names; a ``named`` one that matches by none is unknown."""
    named_keys = {value.strip() for value in named}
    wanted: dict[str, tuple[str, list[str]]] = {}  # the value stripped -> as first given, its names
    unknown: list[Unknown] = []
    for value in [*named, *if_known]:
        key = value.strip()
        if key in wanted:
            continue
        wanted[key] = (value, resource_names(value))
        if not wanted[key][1] and key in named_keys:
            unknown.append(Unknown("resource", value))
    every = sorted({name for _, names in wanted.values() for name in names})
    if not every:
        return [], unknown
    rows = await conn.fetch(
        f"""SELECT {ASSET_COLUMNS_SQL} FROM assets a
            WHERE a.kind = 'cloud_resource' AND a.identifier = ANY($1::text[])""",
        every,
    )
    listed = {row["identifier"]: _asset(row) for row in rows}
    found: list[Found] = []
    for key, (value, names) in wanted.items():
        hits = [listed[name] for name in names if name in listed]
        found += [Found("resource", value, asset) for asset in hits]
        if names and not hits and key in named_keys:
            unknown.append(Unknown("resource", value))
    return found, unknown


async def show(conn: Conn, identifier: str) -> Inventory:
    """What the inventory knows of one identifier: a network (CIDR) as itself; else the host, the address
    (or the most specific network holding it), the account and the cloud resource of that name."""
    if "/" in identifier:
        try:
            ipaddress.ip_network(identifier, strict=True)
        except ValueError:
            pass  # not a network: a resource id may hold a slash
        else:
            network = await get_asset(conn, kind="cidr", identifier=identifier)
            return Inventory(assets=(Found("cidr", identifier, network),) if network else ())
    try:
        ips = [str(ipaddress.ip_address(identifier))]
    except ValueError:
        ips = []
    return await resolve(conn, hosts=[identifier], ips=ips, users=[identifier], resources=[identifier])


# ---- impact and severity ---------------------------------------------------------------------------


def is_crown_jewel(asset: Asset) -> bool:
    return asset.criticality == 1 or CROWN_JEWEL_TAG in asset.tags


@dataclass(frozen=True)
class Impact:
    """What an incident touches, by the inventory: the distinct assets and accounts, and what they weigh."""

    systems: tuple[Asset, ...]  # distinct, most critical first
    users: tuple[User, ...]
    business_services: tuple[str, ...]
    blast_radius: int  # distinct assets affected
    by_criticality: dict[int, int]  # criticality 1..4 -> how many of them
    data_at_risk: Classification | None  # the highest classification among them
    crown_jewels: tuple[Asset, ...]
    privileged_users: tuple[User, ...]
    unknown: tuple[Unknown, ...] = field(default=())


def impact(inventory: Inventory) -> Impact:
    """Weigh what the inventory found: several addresses in one network are one system."""
    distinct = {(f.asset.kind, f.asset.identifier): f.asset for f in inventory.assets}
    systems = tuple(sorted(distinct.values(), key=lambda a: (a.criticality, a.kind, a.identifier)))
    users = tuple(sorted({u.name: u for u in inventory.users}.values(), key=lambda u: u.name))
    counts = Counter(a.criticality for a in systems)
    classifications = [CLASSIFICATIONS.index(a.data_classification) for a in systems]
    return Impact(
        systems=systems,
        users=users,
        business_services=tuple(sorted({a.business_service for a in systems if a.business_service})),
        blast_radius=len(systems),
        by_criticality={level: counts.get(level, 0) for level in (1, 2, 3, 4)},
        data_at_risk=CLASSIFICATIONS[max(classifications)] if classifications else None,
        crown_jewels=tuple(a for a in systems if is_crown_jewel(a)),
        privileged_users=tuple(u for u in users if u.privilege in PRIVILEGED),
        unknown=inventory.unknown,
    )


@dataclass(frozen=True)
class Recommendation:
    """A more urgent severity than the incident has, and why."""

    current: Severity
    severity: Severity
    reasons: tuple[str, ...]


def _named(things: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(things[:limit])
    return shown + (f" and {len(things) - limit} more" if len(things) > limit else "")


def _describe(asset: Asset) -> str:
    service = f" ({asset.business_service})" if asset.business_service else ""
    return f"{asset.identifier}{service}"


def severity_rules(found: Impact) -> list[tuple[Severity, str]]:
    """Every rule the impact meets: the severity it calls for at least, and why."""
    rules: list[tuple[Severity, str]] = []
    domain_admins = [u.name for u in found.privileged_users if u.privilege == "domain_admin"]
    admins = [u.name for u in found.privileged_users if u.privilege == "admin"]
    restricted_jewels = [a for a in found.crown_jewels if a.data_classification == "restricted"]
    other_jewels = [a for a in found.crown_jewels if a not in restricted_jewels]
    restricted = [a for a in found.systems if a.data_classification == "restricted" and not is_crown_jewel(a)]
    notable = [
        a
        for a in found.systems
        if not is_crown_jewel(a)
        and a.data_classification != "restricted"
        and ((a.criticality == 2 and a.environment == "prod") or a.data_classification == "confidential")
    ]
    if domain_admins:
        rules.append((Severity.SEV1, f"domain admin account affected: {_named(domain_admins)}"))
    if restricted_jewels:
        names = [_describe(a) for a in restricted_jewels]
        rules.append((Severity.SEV1, f"crown jewel holding restricted data affected: {_named(names)}"))
    if other_jewels:
        rules.append((Severity.SEV2, f"crown jewel affected: {_named([_describe(a) for a in other_jewels])}"))
    if admins:
        rules.append((Severity.SEV2, f"admin account affected: {_named(admins)}"))
    if restricted:
        rules.append((Severity.SEV2, f"restricted data at risk on {_named([_describe(a) for a in restricted])}"))
    if found.blast_radius >= WIDE_BLAST_RADIUS:
        rules.append((Severity.SEV2, f"{found.blast_radius} systems affected (from {WIDE_BLAST_RADIUS} on: SEV2)"))
    if notable:
        names = [_describe(a) for a in notable]
        rules.append((Severity.SEV3, f"criticality-2 production or confidential systems affected: {_named(names)}"))
    return rules


def severity_recommendation(current: Severity, found: Impact) -> Recommendation | None:
    """A more urgent severity when the impact calls for one; never a less urgent one (people decide that)."""
    above = [(severity, why) for severity, why in severity_rules(found) if severity.urgency > current.urgency]
    if not above:
        return None
    above.sort(key=lambda rule: -rule[0].urgency)
    return Recommendation(current=current, severity=above[0][0], reasons=tuple(why for _, why in above))
