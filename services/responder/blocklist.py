"""Vigil's own enforcement lists: values checked and normalised, kept in Postgres, served as EDLs.

Firewalls, proxies and DNS resolvers poll the lists as External Dynamic Lists (one entry a line,
``# comment`` lines at the top only) or load the nftables script. Adding an entry is a database
write in the caller's transaction (the effects runner's), so a rolled-back step blocks nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args
from urllib.parse import urlsplit

import idna

from shared.db import Conn

Kind = Literal["ip", "domain", "url", "sha256"]
KINDS: tuple[Kind, ...] = get_args(Kind)
MAX_VALUE_CHARS = 2048
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:(?!\d)")  # `host:8080/` is a port, not a scheme

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidEntry(ValueError):
    """A value that cannot go on a list; the message says why."""


# ---- normalisation (pure) ----------------------------------------------------------------------


# IPv4 addresses written as IPv6 (``::ffff:198.51.100.7``, as dual-stack listeners log them).
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_ip(value: str) -> IpNetwork:
    """An address or CIDR as a network; host bits of a CIDR are dropped (10.1.2.3/8 is 10.0.0.0/8). An IPv4
    address or network written as IPv6 is the IPv4 one: judged, and blocked, as the hosts it is."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise InvalidEntry(f"not an IP address or CIDR: {value!r}") from exc
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(IPV4_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # within ::ffff:0:0/96
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def format_ip(network: IpNetwork) -> str:
    """A single address without its /32 or /128, a wider network as a CIDR."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return network.with_prefixlen


def normalise_domain(value: str) -> str:
    """A lower-case ASCII (IDNA) domain without its trailing dot; ``*.`` in front is kept for EDLs."""
    text = value.strip().rstrip(".").lower()
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if not name:
        raise InvalidEntry(f"empty domain: {value!r}")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidEntry(f"not a valid domain: {value!r} ({exc})") from exc
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise InvalidEntry(f"a domain needs at least two labels: {value!r}")
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidEntry(f"not a valid domain: {value!r}")
    if labels[-1].isdigit():
        raise InvalidEntry(f"an IP address is not a domain: {value!r}")
    return f"*.{ascii_name}" if wildcard else ascii_name


def normalise_url(value: str) -> str:
    """A URL as EDLs expect it: no scheme, no fragment, host lower-cased (IDNA), path and query kept."""
    text = value.strip()
    if not text or any(c.isspace() for c in text):
        raise InvalidEntry(f"a URL cannot be empty or contain spaces: {value!r}")
    if not _SCHEME.match(text):  # EDLs list URLs without their scheme; take one without as http
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidEntry(f"only http and https URLs can be listed: {value!r}")
    if parts.username or parts.password:
        raise InvalidEntry(f"a URL with credentials cannot be listed: {value!r}")
    try:
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:
        raise InvalidEntry(f"not a valid URL: {value!r} ({exc})") from exc
    if not hostname:
        raise InvalidEntry(f"a URL needs a host: {value!r}")
    try:
        address = ipaddress.ip_address(hostname)
        host = f"[{address}]" if address.version == 6 else str(address)
    except ValueError:
        host = normalise_domain(hostname)
        if host.startswith("*."):
            raise InvalidEntry(f"a URL's host cannot be a wildcard: {value!r}") from None
    path = parts.path or "/"
    return f"{host}{f':{port}' if port else ''}{path}{f'?{parts.query}' if parts.query else ''}"


def normalise_sha256(value: str) -> str:
    text = value.strip().lower()
    if not _SHA256.match(text):
        raise InvalidEntry(f"not a SHA-256 (64 hex digits): {value!r}")
    return text


def normalise(kind: str, value: str) -> str:
    """The value as it is stored and served; raise InvalidEntry saying why it cannot be listed."""
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidEntry(f"longer than {MAX_VALUE_CHARS} characters")
    if kind == "ip":
        return format_ip(parse_ip(value))
    if kind == "domain":
        return normalise_domain(value)
    if kind == "url":
        return normalise_url(value)
    if kind == "sha256":
        return normalise_sha256(value)
    raise InvalidEntry(f"unknown list {kind!r}; the lists are {', '.join(KINDS)}")


# ---- rendering (pure) --------------------------------------------------------------------------


def render_edl(kind: Kind, values: Sequence[str]) -> str:
    """The list as plain text: a comment header, then one entry a line (no time: the body is the ETag)."""
    header = f"# Vigil blocklist: {kind}, {len(values)} entr{'y' if len(values) == 1 else 'ies'}\n"
    return header + "".join(f"{v}\n" for v in values)


def render_nftables(values: Iterable[str]) -> str:
    """An nftables script defining ``inet vigil`` sets of the listed IPs (overlaps merged, as intervals need)."""
    networks = [parse_ip(v) for v in values]
    v4 = list(ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv4Network)))
    v6 = list(ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv6Network)))
    lines = [
        "#!/usr/sbin/nft -f",
        "# Vigil blocklist. Reference the sets from your own chains, e.g. `ip saddr @blocklist_v4 drop`.",
        "# Loading the script again replaces the sets' elements.",
        "table inet vigil {}",
        "delete table inet vigil",
        "table inet vigil {",
    ]
    for name, type_, members in (("blocklist_v4", "ipv4_addr", v4), ("blocklist_v6", "ipv6_addr", v6)):
        lines += [f"\tset {name} {{", f"\t\ttype {type_}", "\t\tflags interval"]
        if members:  # `elements = { }` is a syntax error: an empty set has no elements line
            lines.append(f"\t\telements = {{ {', '.join(format_ip(m) for m in members)} }}")
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def etag(body: str) -> str:
    return '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'


# ---- repository --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    id: int
    kind: Kind
    value: str
    incident_id: str
    step_id: str
    reason: str
    created_at: datetime
    expires_at: datetime | None
    removed_at: datetime | None


async def add(
    conn: Conn,
    *,
    kind: str,
    value: str,
    incident_id: str,
    step_id: str,
    reason: str,
    expires_at: datetime | None = None,
) -> tuple[Entry, bool]:
    """List a value for a step; the same value from the same step again changes nothing. True when new."""
    normalised = normalise(kind, value)
    row = await conn.fetchrow(
        """INSERT INTO responder_blocklist (kind, value, incident_id, step_id, reason, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (kind, value, step_id) DO NOTHING
           RETURNING *""",
        kind,
        normalised,
        incident_id,
        step_id,
        reason,
        expires_at,
    )
    if row is not None:
        return Entry(**dict(row)), True
    existing = await conn.fetchrow(
        "SELECT * FROM responder_blocklist WHERE kind = $1 AND value = $2 AND step_id = $3", kind, normalised, step_id
    )
    assert existing is not None  # the conflict was with it, and entries are never deleted
    return Entry(**dict(existing)), False


async def remove(conn: Conn, *, kind: str, value: str, step_id: str) -> bool:
    """Take a step's entry off its list (its lease ended or it was rolled back); False when not listed."""
    removed = await conn.fetchval(
        """UPDATE responder_blocklist SET removed_at = now()
           WHERE kind = $1 AND value = $2 AND step_id = $3 AND removed_at IS NULL
           RETURNING true""",
        kind,
        normalise(kind, value),
        step_id,
    )
    return bool(removed)


async def listed_by(conn: Conn, *, kind: str, value: str) -> list[str]:
    """The steps whose entries list the value now (neither removed nor expired)."""
    rows = await conn.fetch(
        """SELECT step_id FROM responder_blocklist
           WHERE kind = $1 AND value = $2 AND removed_at IS NULL AND (expires_at IS NULL OR expires_at > now())
           ORDER BY step_id""",
        kind,
        normalise(kind, value),
    )
    return [r["step_id"] for r in rows]


async def list_active(conn: Conn, *, kind: Kind) -> list[str]:
    """The values a list serves now: neither removed nor expired, each once, sorted."""
    rows = await conn.fetch(
        """SELECT DISTINCT value FROM responder_blocklist
           WHERE kind = $1 AND removed_at IS NULL AND (expires_at IS NULL OR expires_at > now())
           ORDER BY value""",
        kind,
    )
    return [r["value"] for r in rows]


async def last_changed(conn: Conn, *, kind: Kind) -> datetime | None:
    """When the list last changed: an entry added, removed or expired; None for a list never used."""
    changed: datetime | None = await conn.fetchval(
        """SELECT max(greatest(created_at, removed_at, CASE WHEN expires_at <= now() THEN expires_at END))
           FROM responder_blocklist WHERE kind = $1""",
        kind,
    )
    return changed
