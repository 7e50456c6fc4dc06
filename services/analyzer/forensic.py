"""Forensic analysis: what each alert names (indicators and observables), in which field, and what is noise.

Pure: no I/O. Every normalised field of an alert and every value of the tool's raw record (as the
detector's summary carries it) is read; ioc-finder finds domains, URLs, IPv6 and e-mail addresses,
hashes and CVE ids in text (an expression finds IPv4 addresses), after ioc-fanger refangs `hxxp`,
`[.]` and `(dot)`; field names say which values are accounts, processes and command lines.
Documentation networks and example names, and the monitoring tools' own addresses, are dropped as
noise; private and reserved addresses are kept, marked internal.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args
from urllib.parse import urlsplit

from ioc_fanger import fang
from ioc_finder import find_iocs
from pydantic import BaseModel, ConfigDict, Field

from services.analyzer.intel import fits
from shared.addresses import is_internal as is_internal_address
from shared.addresses import unmapped
from shared.alerts import leaves
from shared.events import AlertSummary, Indicator, Observable
from shared.yamlfile import validate_yaml

Kind = Literal[
    "ipv4", "ipv6", "domain", "url", "md5", "sha1", "sha256", "email", "cve", "user", "process", "command_line",
    "cloud_resource",
]  # fmt: skip
INDICATOR_KINDS: frozenset[str] = frozenset(get_args(Indicator.model_fields["kind"].annotation))
OBSERVABLE_KINDS: frozenset[str] = frozenset(get_args(Observable.model_fields["kind"].annotation))

# ioc-finder result keys -> kinds
_IOC_KINDS: dict[str, Kind] = {
    "ipv4s": "ipv4",
    "ipv6s": "ipv6",
    "domains": "domain",
    "urls": "url",
    "md5s": "md5",
    "sha1s": "sha1",
    "sha256s": "sha256",
    "email_addresses": "email",
    "cves": "cve",
}
# IPv4 addresses are found by this expression rather than by ioc-finder, whose address grammar costs
# more than all its other kinds together (the text is refanged first, so `1.2.3[.]4` is found too).
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|\.\d)"
)
_FINDER_TYPES = [key for key in _IOC_KINDS if key != "ipv4s"]
_HASHES = frozenset({"md5", "sha1", "sha256"})
MAX_TEXT = 20_000  # of one field: descriptions and log lines are longer only when something is wrong
MAX_FIELDS = 20  # field names kept per indicator in the database (10 travel in the event)
MAX_ALERT_KEYS = 20  # alert keys kept per indicator in the database (5 travel in the event)

# Text that holds no dot, colon, at sign, bracket, long hex run or CVE id holds no indicator: ioc-finder
# is not worth calling on it (most raw values are numbers, flags and short words).
_MAY_HOLD = re.compile(r"[.:@\[\(]|[0-9a-f]{32}|cve-", re.IGNORECASE)
_BARE_HASH = re.compile(r"[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{64}", re.IGNORECASE)
_HASH_FIELD = re.compile(r"md5|sha|hash|digest|checksum", re.IGNORECASE)
_DEFANGED = re.compile(r"[\[\(\{]|hxxp|\bdot\b|\bat\b", re.IGNORECASE)

# Field names (the path's last segments, in lower case, list indexes dropped) that hold an account,
# a process or a command line, across Wazuh, Falco, ECS, OCSF, Sysmon, CrowdStrike and CloudTrail.
_FIELD_KINDS: tuple[tuple[Kind, re.Pattern[str]], ...] = (
    (
        "command_line",
        re.compile(
            r"(^|\.)((proc|process)(\.parent)?\.(cmdline|command_line|args_line)"
            r"|(parent_?|grand_?parent_?)?(cmd_?line|command_?line))$"
        ),
    ),
    (
        "process",
        re.compile(
            r"(^|\.)((proc|process)(\.parent)?\.(name|pname|executable|exe)"
            r"|(parent_?|grand_?parent_?)?(process_?name|image|image_?file_?name))$"
        ),
    ),
    (
        "user",
        re.compile(
            r"(^|\.)(user|user\.name|user_?name|src_?user|dst_?user|target_?user_?name|subject_?user_?name"
            r"|account_?name|sam_?account_?name|principal_?name)$"
        ),
    ),
    ("cloud_resource", re.compile(r"(^|\.)instance_?id$")),
)
_NOT_A_VALUE = frozenset({"", "-", "n/a", "na", "none", "null", "unknown", "undefined", "(none)"})
# Links back to the tools themselves (Alertmanager's generatorURL, CrowdStrike's FalconHostLink):
# they name the tool, not the attacker.
_TOOL_LINK = re.compile(r"(^|\.)(generator_?url|external_?url|\w*host_?link|alert_?url|permalink|\w*console_?url)$")

# Cloud resource ids: AWS ARNs, Azure resource ids, GCP full resource names and relative names.
_CLOUD_IDS = (
    re.compile(r"\barn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:(?:\d{12})?:[^\s\"'<>,;]+"),
    re.compile(r"/subscriptions/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}[^\s\"'<>,;]*", re.I),
    re.compile(r"//[a-z0-9.-]+\.googleapis\.com/projects/[^\s\"'<>,;]+"),
    re.compile(
        r"(?<![/\w])projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/"
        r"(?:zones|regions|locations|global|instances|buckets|serviceAccounts|topics|datasets|secrets)/[^\s\"'<>,;]+"
    ),
)
_AWS_INSTANCE = re.compile(r"i-[0-9a-f]{8,17}")

# RFC 5737, RFC 5771 (MCAST-TEST-NET), RFC 3849 and RFC 9637: addresses for documentation only.
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "233.252.0.0/24", "2001:db8::/32", "3fff::/20")
)
# RFC 2606 and RFC 6761: names for examples and tests, never a real host.
DOCUMENTATION_DOMAINS = frozenset(
    {"example", "example.com", "example.net", "example.org", "test", "invalid", "localhost"}
)
# Names that only resolve inside an organisation (RFC 6762, RFC 8375, ICANN's .internal, common habits).
INTERNAL_SUFFIXES = frozenset({"internal", "local", "localdomain", "home.arpa", "lan", "corp", "intranet"})
# Reserved ranges that `shared.addresses` does not call internal but are never someone's public address.
_RESERVED = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4", "255.255.255.255/32", "64:ff9b:1::/48")
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Tools(BaseModel):
    model_config = ConfigDict(extra="forbid")
    addresses: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)


class NoiseFile(BaseModel):
    """noise.yaml: what is dropped as noise, and which DNS suffixes are the organisation's own."""

    model_config = ConfigDict(extra="forbid")
    documentation: bool = True
    tools: _Tools = Field(default_factory=_Tools)
    internal_domains: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Noise:
    """What extraction drops, and which names count as internal. The default drops nothing."""

    documentation: bool = False
    networks: tuple[Network, ...] = ()
    domains: frozenset[str] = frozenset()  # a name equal to one of these, or under it, is noise
    internal_domains: frozenset[str] = frozenset()

    def drops_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if address.is_unspecified:
            return True
        networks = (*DOCUMENTATION_NETWORKS, *self.networks) if self.documentation else self.networks
        return any(address.version == n.version and address in n for n in networks)

    def drops_domain(self, name: str, tools: Iterable[str] = ()) -> bool:
        names = self.domains.union(tools)
        if self.documentation:
            names = names.union(DOCUMENTATION_DOMAINS)
        return any(_under(name, n) for n in names)

    def internal_domain(self, name: str) -> bool:
        return any(_under(name, n) for n in INTERNAL_SUFFIXES.union(self.internal_domains))


def _under(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


class NoiseFileError(ValueError):
    """A noise file that cannot be used; the message names the problem's line."""


def parse_noise(document: str, *, source: str = "noise.yaml", documentation: bool | None = None) -> Noise:
    """Read a noise file; ``documentation`` overrides what the file says of the documentation ranges."""
    try:
        spec = validate_yaml(document, NoiseFile, source=source)
    except ValueError as exc:
        raise NoiseFileError(str(exc)) from exc
    networks: list[Network] = []
    for n, value in enumerate(spec.tools.addresses):
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise NoiseFileError(f"{source}: tools.addresses[{n}]: {value!r} is not an address or network") from None
    return Noise(
        documentation=spec.documentation if documentation is None else documentation,
        networks=tuple(networks),
        domains=frozenset(d.strip().lower().rstrip(".") for d in spec.tools.domains),
        internal_domains=frozenset(d.strip().lower().strip(".") for d in spec.internal_domains),
    )


SHIPPED_NOISE = Path(__file__).with_name("noise.yaml")


def load_noise(path: Path | None = None, *, documentation: bool | None = None) -> Noise:
    """The noise file at ``path``, or the one shipped with Vigil."""
    path = path or SHIPPED_NOISE
    return parse_noise(path.read_text(), source=str(path), documentation=documentation)


@functools.cache
def shipped_noise() -> Noise:
    return load_noise()


# ---- extraction -----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Sighting:
    """One value an alert names: its kind, canonical value, the field it was in, and whether it is internal."""

    kind: Kind
    value: str
    field: str
    internal: bool = False


@dataclass(frozen=True)
class AlertEvidence:
    """One alert as the evidence timeline shows it, with everything it names."""

    key: str
    time: datetime
    source: str
    format: str
    title: str
    severity: str
    host: str | None
    user: str | None
    sightings: tuple[Sighting, ...]
    raw: dict[str, Any] | None = None
    raw_cut: bool = False


def evidence_of(alert: AlertSummary, noise: Noise) -> AlertEvidence:
    """Return the alert with every indicator and observable its fields and raw record name."""
    return AlertEvidence(
        key=alert.key,
        time=alert.time,
        source=alert.source,
        format=alert.format,
        title=alert.title,
        severity=alert.severity.value,
        host=alert.host,
        user=alert.user,
        sightings=tuple(sorted(set(sightings(alert, noise)))),
        raw=alert.raw,
        raw_cut=alert.raw_cut,
    )


def sightings(alert: AlertSummary, noise: Noise) -> Iterator[Sighting]:
    """Yield what each field of the alert names; a value found in two fields is sighted twice.

    A value longer than intel.MAX_VALUE_BYTES (a URL with a long query, a resource id, a command line) is left
    out, not cut: feeds, providers, blocklists and shared STIX take an indicator as the exact value, and
    a cut one would be matched, blocked and shared as if it were. The alert's record keeps it whole.
    """
    return (s for s in _sightings(alert, noise) if fits(s.value))


def _sightings(alert: AlertSummary, noise: Noise) -> Iterator[Sighting]:
    # The link to the alert in its tool names the tool: its host is noise for this alert.
    tools = {host} if alert.url and (host := _host_of(alert.url)) else set()
    for name, address in (("src_ip", alert.src_ip), ("dst_ip", alert.dst_ip)):
        if address is not None and not noise.drops_address(address := unmapped(address)):
            yield Sighting("ipv4" if address.version == 4 else "ipv6", str(address), name, _internal(address))
    if alert.user:
        yield from _observable("user", alert.user, "user")
    texts: list[tuple[str, str]] = [
        ("title", alert.title),
        ("description", alert.description),
        ("host", alert.host or ""),
        ("rule", alert.rule or ""),
        ("category", alert.category or ""),
        ("resource", alert.resource or ""),
        *(("tags", t) for t in alert.tags),
    ]
    named = [(f"labels.{k}", v) for k, v in alert.labels.items()]
    named += [(f"raw.{path}", v) for path, v in leaves(alert.raw or {}) if isinstance(v, str)]
    for name, value in named:
        key = _key_of(name)
        if _TOOL_LINK.search(key):
            continue  # a link back to the tool
        texts.append((name, value))
        for kind, pattern in _FIELD_KINDS:
            if pattern.search(key):
                if kind != "cloud_resource" or _AWS_INSTANCE.fullmatch(value.strip()):
                    yield from _observable(kind, value, name)
                break
    yield from _in_texts(texts, noise, tools)


def _key_of(name: str) -> str:
    """A field's name for matching: the path below `labels` or `raw`, lower case, without list indexes."""
    return ".".join(p for p in name.lower().split(".")[1:] if not p.isdigit())


def _observable(kind: Kind, value: str, name: str) -> Iterator[Sighting]:
    value = value.strip()
    if value.lower() not in _NOT_A_VALUE and not value.lstrip("-").isdigit():
        yield Sighting(kind, value, name)


def _in_texts(texts: Sequence[tuple[str, str]], noise: Noise, tools: set[str]) -> Iterator[Sighting]:
    """What ioc-finder finds in the fields' text, each value sighted in every field that holds it.

    ioc-finder reads all of an alert's text in one call (it costs about as much per call as per
    kilobyte), and each value found is then looked for in each field.
    """
    fields: list[tuple[str, str]] = []
    written: list[str] = []  # each field's text as written (refanged), for what keeps its case: a URL's path
    for name, text in texts:
        text = text[:MAX_TEXT]
        if not text or not _MAY_HOLD.search(text):
            continue
        for pattern in _CLOUD_IDS:
            for match in pattern.finditer(text):
                yield Sighting("cloud_resource", match.group().rstrip(").,]"), name)
            # What a resource id holds (a finding's hex id, a region) is part of it, not an indicator.
            text = pattern.sub(" ", text)
        text = fang(text) if _DEFANGED.search(text) else text
        fields.append((name, text.lower()))
        written.append(text)
    if not fields:
        return
    joined = "\n".join(t for _, t in fields)
    found = find_iocs(joined, parse_from_url_path=False, included_ioc_types=_FINDER_TYPES)
    candidates: list[tuple[Kind, str]] = [(kind, v) for key, kind in _IOC_KINDS.items() for v in found.get(key, ())]
    as_written = "\n".join(written)
    if len(as_written) == len(joined):  # lower case kept every length (it nearly always does): spans agree
        candidates = [(kind, _as_written(v, joined, as_written) if kind == "url" else v) for kind, v in candidates]
    candidates += [("ipv4", v) for v in dict.fromkeys(_IPV4.findall(joined))]
    for kind, value in candidates:
        if kind == "url" and "://" not in value:
            continue  # docker.io/library/alpine, app.app/Contents/MacOS: a path, not a link
        judged = _judge(kind, value, "", noise, tools)
        if judged is None:
            continue
        wanted = value.lower()
        for name, text in fields:
            # Whole values only: 10.0.0.1 is not in 10.0.0.10, evil.com not in notevil.com.
            if wanted not in text or (kind != "url" and not stands_whole(kind, wanted, text)):
                continue
            if kind in _HASHES and _BARE_HASH.fullmatch(text.strip()) and not _HASH_FIELD.search(_key_of(name)):
                continue  # a bare hex value is an id (a sensor's, a detector's) unless its field says hash
            if kind == "domain" and not _stands_alone(wanted, text):
                continue
            yield Sighting(judged.kind, judged.value, name, judged.internal)


def _as_written(found: str, lowered: str, written: str) -> str:
    """A URL ioc-finder found in the lower-cased text, as the alert wrote it: a path's case is its own
    (``/bins/Mozi.m`` is not ``/bins/mozi.m``), and feeds list it as written."""
    start = lowered.find(found)
    if start == -1:
        return found
    scheme, sep, rest = written[start : start + len(found)].partition("://")
    # Scheme and host are the same in any case: lower, as intel keys them; the rest as written.
    cut = min((at for at in (rest.find(c) for c in "/?#") if at != -1), default=len(rest))
    return scheme.lower() + sep + rest[:cut].lower() + rest[cut:]


def stands_whole(kind: Kind, value: str, text: str) -> bool:
    """Whether the value stands alone somewhere in the text: a hash amid other hex digits, or a name amid
    a longer name (``10.0.0.1`` in ``10.0.0.10``, ``evil.com`` in ``notevil.com``), is not it.

    A scan, not a pattern per value: every alert names values of its own, and compiling a pattern
    for each cost more than the search.
    """
    is_hash = kind in _HASHES
    start = text.find(value)
    while start != -1:
        end = start + len(value)
        before = text[start - 1] if start else ""
        after = text[end] if end < len(text) else ""
        if is_hash:
            alone = not _hex(before) and not _hex(after)
        else:
            # After a name, a dot starts a longer name only if a word character follows it.
            longer = after == "." and end + 1 < len(text) and _word(text[end + 1])
            alone = not (_word(before) or before in (".", "@", "-")) and not (
                _word(after) or after in ("@", "-") or longer
            )
        if alone:
            return True
        start = text.find(value, start + 1)
    return False


def _hex(char: str) -> bool:
    return char != "" and char in "0123456789abcdef"


def _word(char: str) -> bool:
    # What a pattern's \w matches in text: letters and digits of any script, and the underscore.
    return char.isalnum() or char == "_"


def _stands_alone(domain: str, text: str) -> bool:
    """Whether the name appears somewhere other than as a directory of a path (`/Applications/app.app/`)."""
    for match in re.finditer(re.escape(domain), text):
        before = text[max(0, match.start() - 2) : match.start()]
        if not before.endswith(("/", "\\")) or before == "//":
            return True
    return False


def _judge(kind: Kind, value: str, name: str, noise: Noise, tools: set[str]) -> Sighting | None:
    """The sighting of a value ioc-finder found, in canonical form and marked internal; None for noise."""
    if kind in ("ipv4", "ipv6"):
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return None
        if noise.drops_address(address):
            return None
        return Sighting(kind, str(address), name, _internal(address))
    if kind in _HASHES:
        value = value.lower()
        return None if len(set(value)) == 1 else Sighting(kind, value, name)  # 000…0: a placeholder
    if kind == "cve":
        return Sighting(kind, value.upper(), name)
    host = value.lower().rstrip(".") if kind == "domain" else _host_of(value) if kind == "url" else None
    if kind == "email":
        value = value.lower()
        host = value.rpartition("@")[2]
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if noise.drops_domain(host, tools):
            return None
        return Sighting(kind, host if kind == "domain" else value, name, noise.internal_domain(host))
    if noise.drops_address(address):
        return None
    return Sighting(kind, value, name, _internal(address))


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url if "//" in url else f"//{url}").hostname
    except ValueError:
        return None


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Private, shared, loopback, link-local, multicast or otherwise reserved: not someone's public address."""
    return (
        is_internal_address(str(address))
        or address.is_multicast
        or any(address.version == n.version and address in n for n in _RESERVED)
    )


# ---- provenance -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a batch of alerts says of one value: where it was found, when, and by which alerts."""

    kind: Kind
    value: str
    internal: bool
    first_seen: datetime
    last_seen: datetime
    count: int = 0  # alerts that named it (``alert_keys`` holds the first of them)
    fields: list[str] = field(default_factory=list)
    alert_keys: list[str] = field(default_factory=list)


def tally(alerts: Sequence[AlertEvidence]) -> list[Tally]:
    """Fold new alerts' sightings into one tally per value, ordered by kind and value."""
    found: dict[tuple[str, str], Tally] = {}
    # The last alert that named each value: one alert naming it in several fields counts once. Not
    # ``alert_keys[-1]``, which stops at MAX_ALERT_KEYS.
    last_alert: dict[tuple[str, str], str] = {}
    for alert in sorted(alerts, key=lambda a: (a.time, a.key)):
        for s in alert.sightings:
            t = found.get((s.kind, s.value))
            if t is None:
                t = found[(s.kind, s.value)] = Tally(s.kind, s.value, s.internal, alert.time, alert.time)
            t.internal = t.internal or s.internal
            t.last_seen = max(t.last_seen, alert.time)
            if s.field not in t.fields:
                t.fields.append(s.field)
            if last_alert.get((s.kind, s.value)) != alert.key:
                last_alert[(s.kind, s.value)] = alert.key
                t.count += 1
                if len(t.alert_keys) < MAX_ALERT_KEYS:
                    t.alert_keys.append(alert.key)
    return [found[k] for k in sorted(found)]


class Named(NamedTuple):
    """A value an incident's alerts name, without its provenance (what the asset inventory is asked)."""

    kind: Kind
    value: str
    internal: bool


def indicator_keys(alerts: Sequence[AlertEvidence]) -> list[tuple[str, str]]:
    """The indicators the alerts name, as (kind, value), each once and in order: what threat intelligence is asked."""
    return sorted({(s.kind, s.value) for a in alerts for s in a.sightings if s.kind in INDICATOR_KINDS})


def indicator_of(row: Tally) -> Indicator | Observable:
    """What the analysis event carries of a stored tally: its provenance, bounded."""
    seen = {
        "kind": row.kind,
        "value": row.value,
        "fields": row.fields[:10],
        "first_seen": row.first_seen,
        "last_seen": row.last_seen,
        "count": row.count,
        "alert_keys": row.alert_keys[:5],
    }
    if row.kind in INDICATOR_KINDS:
        return Indicator.model_validate({**seen, "internal": row.internal})
    return Observable.model_validate(seen)
