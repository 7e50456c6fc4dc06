"""Local threat-intelligence feeds: parse them, keep them in Postgres, look indicators up in them.

Parsers are pure (text in, entries out) and refuse a whole feed at its first bad line, so a feed is
loaded completely or not at all; only a value too long to keep (``MAX_VALUE_BYTES``) is passed over,
its line noted (``Entries.passed_over``): a URL feed may list one among thousands of good ones.
``load_feed`` and ``lookup`` are the only functions that touch the database; ``verdict_of`` turns
what matched into one verdict.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.addresses import unmapped
from shared.db import Conn
from shared.events import MAX_ENVELOPE_TEXT
from shared.yamlfile import validate_yaml

Kind = Literal["ip", "cidr", "domain", "url", "sha256", "sha1", "md5", "email"]
Verdict = Literal["malicious", "suspicious", "benign-listed"]
FeedFormat = Literal["list", "csv", "stix", "misp"]
KINDS: tuple[Kind, ...] = get_args(Kind)
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
FORMATS: tuple[FeedFormat, ...] = get_args(FeedFormat)
# The longest value kept, in UTF-8 bytes: values are keys of btree indexes (intel_entries, analyzer_indicators,
# analyzer_incident_features, the providers' cache and lookups), whose rows hold at most 2,704 bytes, and a URL
# with a long query or a cloud resource id may be longer.
MAX_VALUE_BYTES = 2_000
# The worst verdict wins: a value one feed lists as malicious stays malicious whatever another says.
VERDICT_RANK: dict[Verdict, int] = {"benign-listed": 0, "suspicious": 1, "malicious": 2}
# The analyzer's indicator kinds that are addresses, looked up by network containment.
_ADDRESS_KINDS = {"ip", "ipv4", "ipv6"}
_HASH_LENGTHS: dict[Kind, int] = {"md5": 32, "sha1": 40, "sha256": 64}
_HEX = re.compile(r"[0-9a-f]+")
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z][a-z0-9-]{0,62}")
_EMPTY_CELLS = {"", "none", "null", "n/a", "-"}
# A dotted quad as Python writes it (no leading zeros): valid and already canonical.
_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


class IntelError(ValueError):
    """A feed that cannot be loaded; ``line`` is where (1-based), when known."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


class TooLong(ValueError):
    """A value longer than MAX_VALUE_BYTES: passed over by a feed's parser, not refused."""


@dataclass(frozen=True)
class FeedDefaults:
    """What a feed's entries get when the feed itself does not say."""

    verdict: Verdict = "malicious"
    confidence: int = 50
    tags: tuple[str, ...] = ()


class Entry(NamedTuple):
    """One value a feed lists; its fields in the order the load copies them (a feed holds a million)."""

    kind: Kind
    value: str
    verdict: Verdict
    confidence: int
    tags: tuple[str, ...] = ()
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    expires_at: datetime | None = None


class Entries(list[Entry]):
    """A feed's entries, and where it lists values too long to keep (``line 7``), passed over."""

    def __init__(self, entries: Iterable[Entry] = (), passed_over: Iterable[str] = ()) -> None:
        super().__init__(entries)
        self.passed_over = list(passed_over)

    def summary(self) -> str | None:
        """What was passed over, for operators; None when nothing was."""
        if not self.passed_over:
            return None
        where = ", ".join(self.passed_over[:10]) + (" and more" if len(self.passed_over) > 10 else "")
        return f"{len(self.passed_over)} value(s) longer than {MAX_VALUE_BYTES} bytes passed over: {where}"


@dataclass(frozen=True)
class Match:
    """One live feed entry that an indicator matched (the entry itself: a network holds an address)."""

    source: str
    kind: Kind
    value: str
    verdict: Verdict
    confidence: int
    tags: tuple[str, ...]
    first_seen: datetime | None
    last_seen: datetime | None
    expires_at: datetime | None


class Assessment(NamedTuple):
    verdict: Verdict | None  # None: no feed lists it
    confidence: int
    tags: tuple[str, ...]
    feeds: tuple[str, ...]


# ---- values --------------------------------------------------------------------------------------

_DEFANGS = [
    (re.compile(r"^hxxp", re.I), "http"),
    (re.compile(r"^fxp", re.I), "ftp"),
    (re.compile(r"\[\s*(?:\.|dot)\s*\]|\(\s*(?:\.|dot)\s*\)|\{\s*(?:\.|dot)\s*\}", re.I), "."),
    (re.compile(r"\[\s*(?:@|at)\s*\]|\(\s*(?:@|at)\s*\)", re.I), "@"),
    (re.compile(r"\[:\]"), ":"),
    (re.compile(r"\[://\]"), "://"),
]


def fits(value: str) -> bool:
    """Whether a value is within MAX_VALUE_BYTES (a character is at most 4 bytes: most are not encoded to know)."""
    return len(value) * 4 <= MAX_VALUE_BYTES or len(value.encode()) <= MAX_VALUE_BYTES


def refang(text: str) -> str:
    """Undo the usual defanging (``hxxp://evil[.]example``, ``user[@]host``) of a shared indicator."""
    value = text.strip()
    for pattern, replacement in _DEFANGS:
        value = pattern.sub(replacement, value)
    return value


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address, also written with a port (``1.2.3.4:443``, ``[2001:db8::1]:443``); an IPv4 address
    written as IPv6 (``::ffff:1.2.3.4``) is the IPv4 one, as feeds name it."""
    try:
        return unmapped(ipaddress.ip_address(value))
    except ValueError:
        pass
    if value.startswith("[") and "]" in value:
        return unmapped(ipaddress.ip_address(value[1 : value.index("]")]))
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and "." in host:
        return ipaddress.ip_address(host)
    raise ValueError(f"not an IP address: {value!r}")


def infer_kind(value: str) -> Kind:
    """What kind of indicator a (refanged) value is; ValueError when it is none Vigil knows."""
    text = value.strip()
    lowered = text.lower()
    try:
        _address(text)
        return "ip"
    except ValueError:
        pass
    if "/" in text and "://" not in text:
        try:
            ipaddress.ip_network(text, strict=False)
            return "cidr"
        except ValueError:
            pass
    if "://" in text:
        return "url"
    if _HEX.fullmatch(lowered):
        for kind, length in _HASH_LENGTHS.items():
            if len(lowered) == length:
                return kind
    if "@" in text:
        return "email"
    if _DOMAIN.fullmatch(lowered.rstrip(".")):
        return "domain"
    raise ValueError(f"not an IP address, network, domain, URL, hash or e-mail address: {value!r}")


def _domain(value: str) -> str:
    name = value.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"not a domain name: {value!r}") from exc
    if not _DOMAIN.fullmatch(name):
        raise ValueError(f"not a domain name: {value!r}")
    return name


def normalise(kind: Kind, value: str) -> tuple[Kind, str]:
    """The canonical form of a value, so that one indicator is stored and matched one way.

    Addresses and networks as Python writes them (``2001:db8::1``, ``10.0.0.0/8``); a network of one
    address is that address; domains, hashes and e-mail addresses in lower case; a URL's scheme and
    host in lower case, its path as it was. TooLong for one over MAX_VALUE_BYTES.
    """
    found, normal = _normalise(kind, value)
    if not fits(normal):
        raise TooLong(f"{found} longer than {MAX_VALUE_BYTES} bytes")
    return found, normal


def _normalise(kind: Kind, value: str) -> tuple[Kind, str]:
    if "\x00" in value:  # no Postgres text holds one: refused here, with the line, not by the load's insert
        raise ValueError(f"a value holds a NUL character: {value!r}"[:300])
    text = refang(value)
    if not text:
        raise ValueError("empty value")
    if kind == "ip" and "/" not in text:
        return "ip", str(_address(text))
    if kind in ("ip", "cidr"):
        network = ipaddress.ip_network(text, strict=False)
        if network.num_addresses == 1:
            return "ip", str(network.network_address)
        return "cidr", str(network)
    if kind == "domain":
        return "domain", _domain(text)
    if kind == "url":
        parts = urlsplit(text)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"not a URL: {value!r}")
        return "url", urlunsplit(parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()))
    if kind in _HASH_LENGTHS:
        digest = text.lower()
        if len(digest) != _HASH_LENGTHS[kind] or not _HEX.fullmatch(digest):
            raise ValueError(f"not a {kind} hash: {value!r}")
        return kind, digest
    if kind == "email":
        local, at, domain = text.rpartition("@")
        if not at or not local or " " in local:
            raise ValueError(f"not an e-mail address: {value!r}")
        return "email", f"{local.lower()}@{_domain(domain)}"
    raise ValueError(f"unknown kind {kind!r}")


def indicator_key(kind: str, value: str) -> tuple[Kind, str]:
    """The normalised (kind, value) of an indicator as the analyzer names it (``ipv4``, ``ipv6`` too)."""
    if kind in _ADDRESS_KINDS:
        return normalise("ip", value)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    return normalise(kind, value)  # type: ignore[arg-type]


def classify(value: str, kind: Kind | None = None) -> tuple[Kind, str]:
    """The normalised (kind, value) of a feed's value, its kind inferred unless given; ValueError if unfit.

    The plain forms that make up most of a large feed (a dotted quad, a domain, a hash, with nothing
    to refang) are recognised by one regular expression each; anything else takes the full way
    (``refang``, ``infer_kind``, ``normalise``), which gives the same answer for those forms.
    """
    if "[" not in value and "(" not in value and "{" not in value:
        if _IPV4.fullmatch(value):
            if kind in (None, "ip"):
                return "ip", value
        elif "/" in value and "://" not in value:
            address, _, prefix = value.partition("/")
            if kind in (None, "ip", "cidr") and _IPV4.fullmatch(address) and prefix.isdigit() and int(prefix) < 32:
                return "cidr", str(ipaddress.IPv4Network(value, strict=False))
        else:
            lowered = value.lower()
            if len(lowered) in (32, 40, 64) and _HEX.fullmatch(lowered):
                found: Kind = "md5" if len(lowered) == 32 else "sha1" if len(lowered) == 40 else "sha256"
                if kind in (None, found):
                    return found, lowered
            elif (
                kind in (None, "domain")
                and lowered.isascii()
                and not lowered.startswith(("hxxp", "fxp"))
                and _DOMAIN.fullmatch(lowered)
            ):
                return "domain", lowered
    refanged = refang(value)
    return normalise(kind or infer_kind(refanged), refanged)


def _confidence(text: str | int) -> int:
    confidence = int(text)
    if not 0 <= confidence <= 100:
        raise ValueError(f"confidence must be 0-100, not {confidence}")
    return confidence


def _time(text: str | None) -> datetime | None:
    """An ISO 8601 time (``2024-01-02 03:04:05`` as abuse.ch writes it); no offset means UTC."""
    if text is None or text.strip().lower() in _EMPTY_CELLS:
        return None
    at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _line_of(text: str, needle: str) -> int | None:
    at = text.find(needle)
    return text.count("\n", 0, at) + 1 if at >= 0 else None


# ---- plain lists ---------------------------------------------------------------------------------


def parse_list(text: str, *, kind: Kind | None = None, defaults: FeedDefaults = FeedDefaults()) -> Entries:
    """One value per line; ``#`` starts a comment; each value's kind inferred unless ``kind`` is given."""
    entries = Entries()
    for number, line in enumerate(text.splitlines(), 1):
        value = line.strip()
        if " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if not value or value[0] == "#":
            continue
        try:
            found, normal = classify(value, kind)
        except TooLong:
            entries.passed_over.append(f"line {number}")
            continue
        except ValueError as exc:
            raise IntelError(str(exc), line=number) from exc
        entries.append(Entry(found, normal, defaults.verdict, defaults.confidence, defaults.tags))
    return entries


# ---- CSV (abuse.ch and alike) --------------------------------------------------------------------


class CsvColumns(BaseModel):
    """Which column holds what; the defaults are ThreatFox's CSV export."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: str = "ioc_value"
    kind: str | None = Field("ioc_type", description="Column naming each value's kind; none: inferred.")
    first_seen: str | None = "first_seen_utc"
    last_seen: str | None = "last_seen_utc"
    confidence: str | None = "confidence_level"
    tags: tuple[str, ...] = ("malware_printable", "threat_type", "tags")


# abuse.ch's type names -> Vigil's kinds; Vigil's own names are taken as they are.
_CSV_KINDS: dict[str, Kind] = {
    "ip:port": "ip",
    "ipv4": "ip",
    "ipv6": "ip",
    "ip-dst": "ip",
    "ip-src": "ip",
    "md5_hash": "md5",
    "sha1_hash": "sha1",
    "sha256_hash": "sha256",
    "hostname": "domain",
    **{kind: kind for kind in KINDS},
}
# abuse.ch's types of indicator Vigil keeps no kind for: their rows are passed over, not refused.
_CSV_PASSED_OVER = frozenset({"sha3_384_hash", "imphash", "ssdeep", "tlsh"})


def _csv_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    for row in reader:
        yield reader.line_num, [cell.strip() for cell in row]


def parse_csv(text: str, *, columns: CsvColumns | None = None, defaults: FeedDefaults = FeedDefaults()) -> Entries:
    """A CSV feed whose header is its first row or its last ``#`` comment line before the data.

    ``columns`` default to ThreatFox's.
    """
    columns = columns or CsvColumns()
    header: list[str] | None = None
    last_comment: list[str] | None = None
    entries = Entries()
    for number, row in _csv_rows(text):
        if not row or not any(row):
            continue
        if row[0].startswith("#"):
            # `# "first_seen_utc","ioc_id",...`: the first name keeps its quotes, the reader saw them mid-cell
            comment = [row[0].lstrip("#").strip().strip('"'), *row[1:]]
            if header is None and columns.value in comment:
                last_comment = comment
            continue
        if header is None:
            if columns.value in row:
                header = row
                continue
            if last_comment is None:
                raise IntelError(f"no header naming the value column {columns.value!r}", line=number)
            header = last_comment
        try:
            entry = _csv_entry(dict(zip(header, row, strict=False)), columns, defaults, number)
        except TooLong:
            entries.passed_over.append(f"line {number}")
            continue
        if entry is not None:
            entries.append(entry)
    return entries


def _csv_entry(cells: Mapping[str, str], columns: CsvColumns, defaults: FeedDefaults, number: int) -> Entry | None:
    def cell(name: str | None) -> str | None:
        if name is None:
            return None
        found = cells.get(name)
        return None if found is None or found.lower() in _EMPTY_CELLS else found

    try:
        value = cell(columns.value)
        if value is None:
            raise ValueError(f"no value in column {columns.value!r}")
        kind_name = cell(columns.kind)
        value = refang(value)
        if kind_name is None:
            kind = infer_kind(value)
        elif kind_name.lower() in _CSV_KINDS:
            kind = _CSV_KINDS[kind_name.lower()]
        elif kind_name.lower() in _CSV_PASSED_OVER:
            return None
        else:
            raise ValueError(f"unknown indicator type {kind_name!r}")
        kind, value = normalise(kind, value)
        confidence_cell = cell(columns.confidence)
        tags = [tag.strip() for name in columns.tags for tag in (cell(name) or "").split(",")]
        return Entry(
            kind=kind,
            value=value,
            verdict=defaults.verdict,
            confidence=defaults.confidence if confidence_cell is None else _confidence(confidence_cell),
            tags=_tags([*defaults.tags, *tags]),
            first_seen=_time(cell(columns.first_seen)),
            last_seen=_time(cell(columns.last_seen)),
        )
    except TooLong:
        raise
    except ValueError as exc:
        raise IntelError(str(exc), line=number) from exc


def _tags(tags: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for t in (tag.strip() for tag in tags) if t.lower() not in _EMPTY_CELLS))


# ---- STIX 2.1 ------------------------------------------------------------------------------------

_STIX_PATHS: dict[tuple[str, str], Kind] = {
    ("ipv4-addr", "value"): "ip",
    ("ipv6-addr", "value"): "ip",
    ("domain-name", "value"): "domain",
    ("url", "value"): "url",
    ("email-addr", "value"): "email",
    ("file", "hashes.SHA-256"): "sha256",
    ("file", "hashes.SHA-1"): "sha1",
    ("file", "hashes.MD5"): "md5",
}
# Objects an indicator "indicates" whose names become its tags.
_STIX_NAMED = {"malware", "threat-actor", "intrusion-set", "campaign", "tool"}


def _stix_string(literal: str) -> str:
    if len(literal) < 2 or literal[0] != "'" or literal[-1] != "'":
        raise ValueError(f"not a string: {literal}")
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def _stix_verdict(indicator_types: Iterable[str], default: Verdict) -> Verdict:
    """What the producer said of an indicator (STIX's indicator-type vocabulary), else the feed's verdict:
    ``benign`` is listed benign; ``anomalous-activity`` with nothing worse (malicious activity, a compromise)
    is suspicious, as Vigil's own export writes a suspicious indicator."""
    said = set(indicator_types)
    if "benign" in said:
        return "benign-listed"
    if "anomalous-activity" in said and not said & {"malicious-activity", "compromised"}:
        return "suspicious"
    return default


def parse_stix(text: str, *, defaults: FeedDefaults = FeedDefaults()) -> Entries:
    """The indicators of a STIX 2.1 bundle whose patterns compare an address, domain, URL, e-mail or hash.

    Every ``=`` comparison of such a value in a pattern is an entry (``[a] OR [b]`` lists both);
    indicators that test nothing of the kind (a registry key, say) are left out. ``valid_until`` is
    the entry's expiry; what the indicator ``indicates`` (malware, actor, campaign) are its tags.
    """
    import stix2
    from stix2.exceptions import STIXError
    from stix2patterns.v21.pattern import Pattern

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntelError(f"not JSON: {exc.msg}", line=exc.lineno) from exc
    try:
        bundle = stix2.parse(data, allow_custom=True, version="2.1")
    except (STIXError, ValueError, TypeError) as exc:
        raise IntelError(f"not a STIX 2.1 bundle: {exc}", line=1) from exc
    objects = list(getattr(bundle, "objects", None) or [bundle])
    names = {o["id"]: o["name"] for o in objects if o["type"] in _STIX_NAMED and "name" in o}
    indicated: dict[str, list[str]] = {}
    for o in objects:
        if o["type"] == "relationship" and o["relationship_type"] == "indicates" and o["target_ref"] in names:
            indicated.setdefault(o["source_ref"], []).append(names[o["target_ref"]])
    entries = Entries()
    for o in objects:
        if o["type"] != "indicator" or o.get("pattern_type", "stix") != "stix":
            continue
        line = _line_of(text, o["id"])
        try:
            comparisons = Pattern(o["pattern"]).inspect().comparisons
            verdict = _stix_verdict(o.get("indicator_types", ()), defaults.verdict)
            confidence = o.get("confidence", defaults.confidence)
            tags = _tags([*defaults.tags, *o.get("labels", ()), *indicated.get(o["id"], ())])
            for object_type, tests in comparisons.items():
                for path, operator, literal in tests:
                    kind = _STIX_PATHS.get((object_type, ".".join(path)))
                    if kind is None or operator != "=":
                        continue
                    try:
                        found, value = normalise(kind, _stix_string(literal))
                    except TooLong:
                        entries.passed_over.append(f"line {line}" if line else o["id"])
                        continue
                    entries.append(
                        Entry(
                            kind=found,
                            value=value,
                            verdict=verdict,
                            confidence=_confidence(confidence),
                            tags=tags,
                            first_seen=o.get("valid_from"),
                            last_seen=o.get("modified"),
                            expires_at=o.get("valid_until"),
                        )
                    )
        except (ValueError, STIXError) as exc:
            raise IntelError(f"indicator {o['id']}: {exc}", line=line) from exc
    return entries


# ---- MISP ----------------------------------------------------------------------------------------

_MISP_KINDS: dict[str, Kind] = {
    "ip-src": "ip",
    "ip-dst": "ip",
    "domain": "domain",
    "hostname": "domain",
    "url": "url",
    "link": "url",
    "md5": "md5",
    "sha1": "sha1",
    "sha256": "sha256",
    "email": "email",
    "email-src": "email",
    "email-dst": "email",
}


def _misp_tag(name: str) -> str | None:
    """A MISP tag as a Vigil tag: a galaxy's value (``misp-galaxy:threat-actor="APT28"`` -> APT28); no TLP."""
    if name.lower().startswith("tlp:"):
        return None
    galaxy = re.fullmatch(r'misp-galaxy:[^=]+="(.*)"', name)
    return galaxy.group(1) if galaxy else name


def _misp_attribute(
    attribute: Mapping[str, Any], tags: Sequence[str], defaults: FeedDefaults, passed_over: list[str], where: str
) -> Iterator[Entry]:
    kinds = str(attribute.get("type", "")).split("|")
    values = str(attribute.get("value", "")).split("|")
    if len(kinds) != len(values):
        raise ValueError(f"type {attribute.get('type')!r} and value {attribute.get('value')!r} do not pair up")
    # MISP's to_ids false: context, not for detection; listed, but only as suspicious.
    to_ids = attribute.get("to_ids", True) not in (False, "0", 0)
    verdict = defaults.verdict if to_ids or defaults.verdict != "malicious" else "suspicious"
    own = [t for tag in attribute.get("Tag", ()) if (t := _misp_tag(str(tag.get("name", ""))))]
    stamp = attribute.get("timestamp")
    last_seen = _time(attribute.get("last_seen")) or (
        datetime.fromtimestamp(int(stamp), UTC) if stamp not in (None, "") else None
    )
    for kind_name, value in zip(kinds, values, strict=True):
        kind = _MISP_KINDS.get(kind_name)
        if kind is None:
            continue  # a port or file name beside an address or hash; a registry key, a mutex
        try:
            found, normal = normalise(kind, value)
        except TooLong:
            passed_over.append(where)
            continue
        yield Entry(
            kind=found,
            value=normal,
            verdict=verdict,
            confidence=defaults.confidence,
            tags=_tags([*defaults.tags, *tags, *own]),
            first_seen=_time(attribute.get("first_seen")),
            last_seen=last_seen,
        )


def _misp_event_entries(
    event: Mapping[str, Any], text: str, defaults: FeedDefaults, passed_over: list[str]
) -> Iterator[Entry]:
    tags = [t for tag in event.get("Tag", ()) if (t := _misp_tag(str(tag.get("name", ""))))]
    attributes = [*event.get("Attribute", ())]
    for obj in event.get("Object", ()):
        attributes.extend(obj.get("Attribute", ()))
    for attribute in attributes:
        uuid = str(attribute.get("uuid", ""))
        line = _line_of(text, uuid) if uuid else None
        try:
            yield from _misp_attribute(attribute, tags, defaults, passed_over, f"line {line}" if line else repr(uuid))
        except ValueError as exc:
            raise IntelError(f"attribute {uuid or attribute.get('value')!r}: {exc}", line=line) from exc


def parse_misp(text: str, *, defaults: FeedDefaults = FeedDefaults()) -> Entries:
    """A MISP event (``{"Event": ...}``, a REST search's ``{"response": [...]}``) or a list of attributes."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntelError(f"not JSON: {exc.msg}", line=exc.lineno) from exc
    if isinstance(data, dict) and isinstance(data.get("response"), list):
        events = [item.get("Event", item) for item in data["response"]]
    elif isinstance(data, dict) and "Event" in data:
        events = [data["Event"]]
    elif isinstance(data, dict) and "Attribute" in data:
        events = [data]
    elif isinstance(data, list):
        events = [{"Attribute": data}]
    else:
        raise IntelError("neither a MISP event nor a list of attributes", line=1)
    entries = Entries()
    for event in events:
        entries.extend(_misp_event_entries(event, text, defaults, entries.passed_over))
    return entries


def read_misp_feed(directory: Path, *, defaults: FeedDefaults = FeedDefaults()) -> Entries:
    """A MISP feed folder: ``manifest.json`` naming each event, each in ``<uuid>.json``."""
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise IntelError(f"{manifest_path}: not JSON: {exc.msg}", line=exc.lineno) from exc
    entries = Entries()
    for uuid in manifest:
        event_path = directory / f"{uuid}.json"
        try:
            read = parse_misp(event_path.read_text(), defaults=defaults)
        except IntelError as exc:
            raise IntelError(f"{event_path}: {exc}") from exc
        entries.extend(read)
        entries.passed_over.extend(f"{event_path.name} {where}" for where in read.passed_over)
    return entries


def parse_feed(
    text: str,
    *,
    feed_format: FeedFormat,
    defaults: FeedDefaults = FeedDefaults(),
    kind: Kind | None = None,
    columns: CsvColumns | None = None,
) -> Entries:
    if feed_format == "list":
        return parse_list(text, kind=kind, defaults=defaults)
    if feed_format == "csv":
        return parse_csv(text, columns=columns, defaults=defaults)
    if feed_format == "stix":
        return parse_stix(text, defaults=defaults)
    return parse_misp(text, defaults=defaults)


# ---- verdicts ------------------------------------------------------------------------------------


def verdict_of(matches: Sequence[Match]) -> Assessment:
    """One verdict of everything that matched: the worst, at the highest confidence any feed gave it.

    Tags and feeds come from every match, so an operator sees who else lists the value and why.
    """
    if not matches:
        return Assessment(None, 0, (), ())
    worst = max(VERDICT_RANK[m.verdict] for m in matches)
    confidence = max(m.confidence for m in matches if VERDICT_RANK[m.verdict] == worst)
    verdict = next(v for v, rank in VERDICT_RANK.items() if rank == worst)
    tags = tuple(sorted({tag for m in matches for tag in m.tags}))
    feeds = tuple(sorted({m.source for m in matches}))
    return Assessment(verdict, confidence, tags, feeds)


# ---- configuration -------------------------------------------------------------------------------


# Each refresh of a feed is an effect about `intel-feed:<name>`, the subject of the event its completion makes
# (feeds.py): a name longer than an event's subject leaves room for would fail every refresh, not the start.
FEED_SUBJECT_PREFIX = "intel-feed:"
MAX_FEED_NAME = MAX_ENVELOPE_TEXT - len(FEED_SUBJECT_PREFIX)


class FeedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1,
        max_length=MAX_FEED_NAME,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description=f"The feed's name, at most {MAX_FEED_NAME} characters: `{FEED_SUBJECT_PREFIX}<name>` is the "
        f"subject of its refreshes' events, of {MAX_ENVELOPE_TEXT} at most.",
    )
    format: FeedFormat
    path: str | None = None
    url: str | None = None
    refresh_minutes: int = Field(60, gt=0)
    verdict: Verdict = "malicious"
    confidence: int = Field(50, ge=0, le=100)
    kind: Kind | None = Field(None, description="For a list of one kind; otherwise each value's kind is inferred.")
    tags: tuple[str, ...] = ()
    columns: CsvColumns | None = None
    expire_hours: float | None = Field(
        None, gt=0, description="The feed stops counting when it has not loaded for this long; none: never."
    )
    headers_env: dict[str, Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=dict,
        description="Request headers from environment variables (e.g. {Auth-Key: THREATFOX_AUTH_KEY}), read when "
        "the feed is downloaded: the names are stored, never the values.",
    )
    max_mb: int = Field(512, gt=0, description="Largest download taken.")

    @model_validator(mode="after")
    def _one_location(self) -> FeedConfig:
        if (self.path is None) == (self.url is None):
            raise ValueError("give either path or url")
        if self.columns is not None and self.format != "csv":
            raise ValueError("columns are for csv feeds")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("url: not an http(s) URL with a host")
            if parts.username or parts.password:
                raise ValueError("url: no credentials in it (it is shown to operators); use headers_env")
        if self.headers_env and self.url is None:
            raise ValueError("headers_env is for a feed downloaded from a url")
        return self

    @property
    def location(self) -> str:
        return self.url or self.path or ""

    @property
    def defaults(self) -> FeedDefaults:
        return FeedDefaults(self.verdict, self.confidence, self.tags)


class ProviderConfig(BaseModel):
    """An online provider (``providers`` in intel.yaml): listing it enables it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    ttl_hours: float = Field(24, gt=0, description="How long an answer is kept before the value is asked again.")
    per_minute: int | None = Field(None, gt=0, description="Most lookups a minute; none: the provider's default.")
    per_day: int | None = Field(None, gt=0, description="Most lookups a day (UTC); none: the provider's default.")
    concurrency: int = Field(2, gt=0, description="Most lookups in flight at once.")
    options: dict[str, Any] = Field(default_factory=dict, description="Handed to the provider (e.g. base_url).")


class IntelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    feeds: list[FeedConfig] = []
    providers: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")], ProviderConfig] = {}

    @field_validator("providers", mode="before")
    @classmethod
    def _listed_enabled(cls, providers: Any) -> Any:
        # `abuseipdb:` with nothing under it: enabled with the provider's defaults.
        if isinstance(providers, dict):
            return {name: {} if options is None else options for name, options in providers.items()}
        return providers

    @model_validator(mode="after")
    def _unique_names(self) -> IntelConfig:
        names = [feed.name for feed in self.feeds]
        if len(names) != len(set(names)):
            raise ValueError(f"feed names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        return self


DEFAULT_CONFIG = Path(__file__).with_name("intel.yaml")


def load_config(path: Path | None = None) -> IntelConfig:
    """The analyzer's intel.yaml (``VIGIL_INTEL_CONFIG``, else the shipped one); YamlFileError says where and why."""
    path = path or DEFAULT_CONFIG
    return parse_config(path.read_text(), source=str(path))


def parse_config(document: str, *, source: str = "intel.yaml") -> IntelConfig:
    # An empty file (or one of comments only) configures no feed.
    if not document.strip() or all(line.lstrip().startswith("#") for line in document.splitlines() if line.strip()):
        return IntelConfig()
    return validate_yaml(document, IntelConfig, source=source)


# ---- Postgres ------------------------------------------------------------------------------------

# Numbers a change to what the feeds say, in commit order: a transaction-scoped lock, taken just before the
# number, serialises the changes' last moments (never their loads) until each commits.
NUMBER_CHANGE = "SELECT pg_advisory_xact_lock(hashtext('vigil.intel.changes'))"
CHANGE = "nextval('intel_changes')"


def _rows(tag: str) -> int:
    """How many rows a statement changed, from its command tag (``INSERT 0 5``, ``UPDATE 2``)."""
    return int(tag.rsplit(" ", 1)[-1])


_LOAD_COLUMNS = ("kind", "value", "verdict", "confidence", "tags", "first_seen", "last_seen", "expires_at")


async def load_feed(
    conn: Conn,
    *,
    source: str,
    entries: Iterable[Entry],
    replace: bool = True,
    expires_at: datetime | None = None,
) -> int:
    """Store a feed's entries in one transaction; with ``replace``, what it no longer lists goes.

    The entries go in by COPY into a temporary table, then into the feed table set-wise: a plain
    insert into a feed that holds nothing yet; else what the feed no longer lists is deleted (with
    ``replace``), new values inserted and changed ones updated (a value listed again keeps its
    earliest first_seen and latest last_seen), so refreshing an unchanged feed rewrites nothing.
    ``expires_at``: when the whole feed stops counting unless loaded again (its configured expiry).
    Returns how many distinct entries were loaded.
    """
    # A feed listing a value twice: the last says.
    distinct = {(e.kind, e.value): e for e in entries}
    # What a value is listed as (verdict, confidence, tags, times) repeats across a feed (a list's
    # values all share one): each distinct set travels once, and each value with its set's number.
    # Copying three plain columns a row costs a tenth of copying eight with an array among them.
    attributes: dict[tuple[Any, ...], int] = {}
    values = [
        (kind, value, attributes.setdefault(entry[2:], len(attributes))) for (kind, value), entry in distinct.items()
    ]
    async with conn.transaction():
        await conn.execute(
            """CREATE TEMPORARY TABLE intel_load (kind text, value text, attributes integer) ON COMMIT DROP;
               CREATE TEMPORARY TABLE intel_load_attributes (
                   attributes integer, verdict text, confidence smallint, tags text[],
                   first_seen timestamptz, last_seen timestamptz, expires_at timestamptz) ON COMMIT DROP"""
        )
        await conn.copy_records_to_table("intel_load", records=values, columns=("kind", "value", "attributes"))
        await conn.copy_records_to_table(
            "intel_load_attributes",
            records=[(number, *attribute) for attribute, number in attributes.items()],
            columns=("attributes", *_LOAD_COLUMNS[2:]),
        )
        await conn.execute("ANALYZE intel_load")  # no statistics on a temporary table otherwise: hash joins, not loops
        # One load of a feed at a time (a refresh and `vigil intel load` of the same feed wait for each other).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('vigil.intel.load'), hashtext($1))", source)
        held = await conn.fetchval("SELECT entries FROM intel_sources WHERE source = $1", source)
        if not held:
            # Nothing of this feed yet: nothing to compare with.
            inserted = await conn.execute(
                """INSERT INTO intel_entries (source, kind, value, verdict, confidence, tags, first_seen, last_seen,
                                              expires_at)
                   SELECT $1, kind, value, verdict, confidence, tags, first_seen, last_seen, expires_at
                     FROM intel_load JOIN intel_load_attributes USING (attributes)""",
                source,
            )
            changed = _rows(inserted) > 0
        else:
            deleted = "DELETE 0"
            if replace:
                deleted = await conn.execute(
                    """DELETE FROM intel_entries e WHERE e.source = $1
                       AND NOT EXISTS (SELECT 1 FROM intel_load l WHERE l.kind = e.kind AND l.value = e.value)""",
                    source,
                )
            # Set-wise: new values inserted, changed ones updated, the same ones left alone.
            updated = await conn.execute(
                """UPDATE intel_entries e SET
                       verdict = a.verdict, confidence = a.confidence, tags = a.tags,
                       first_seen = LEAST(e.first_seen, a.first_seen),
                       last_seen = GREATEST(e.last_seen, a.last_seen),
                       expires_at = a.expires_at
                     FROM intel_load l JOIN intel_load_attributes a USING (attributes)
                    WHERE e.source = $1 AND e.kind = l.kind AND e.value = l.value
                      AND ((e.verdict, e.confidence, e.tags, e.expires_at)
                               IS DISTINCT FROM (a.verdict, a.confidence, a.tags, a.expires_at)
                           OR LEAST(e.first_seen, a.first_seen) IS DISTINCT FROM e.first_seen
                           OR GREATEST(e.last_seen, a.last_seen) IS DISTINCT FROM e.last_seen)""",
                source,
            )
            inserted = await conn.execute(
                """INSERT INTO intel_entries (source, kind, value, verdict, confidence, tags, first_seen, last_seen,
                                              expires_at)
                   SELECT $1, l.kind, l.value, a.verdict, a.confidence, a.tags, a.first_seen, a.last_seen, a.expires_at
                     FROM intel_load l JOIN intel_load_attributes a USING (attributes)
                    WHERE NOT EXISTS (SELECT 1 FROM intel_entries e
                                       WHERE e.source = $1 AND e.kind = l.kind AND e.value = l.value)""",
                source,
            )
            changed = any(_rows(tag) > 0 for tag in (deleted, updated, inserted))
        # A feed that changed, or counts again after it expired: the analyzer looks its indicators up again.
        await conn.execute(NUMBER_CHANGE)
        await conn.execute(
            f"""INSERT INTO intel_sources (source, entries, expires_at, changed) VALUES ($1, $2, $3, {CHANGE})
               ON CONFLICT (source) DO UPDATE SET entries = $2, expires_at = $3, loaded_at = now(),
                   changed = CASE WHEN $4 OR intel_sources.expires_at <= now() THEN EXCLUDED.changed
                                  ELSE intel_sources.changed END""",
            source,
            len(values)
            if replace or not held
            else await conn.fetchval("SELECT count(*) FROM intel_entries WHERE source = $1", source),
            expires_at,
            changed,
        )
        await conn.execute("DROP TABLE intel_load, intel_load_attributes")
    return len(values)


@dataclass(frozen=True)
class FeedState:
    """What tells a kept verdict out of date: the last change to the feeds, and when each feed expires."""

    changed: int  # the number of the last change to what a feed says (0: none yet)
    expiries: Mapping[str, datetime]  # feed -> when it stops counting unless loaded again


async def feed_state(conn: Conn) -> FeedState:
    """The feeds' state, read before a lookup: what the lookup then finds is at least as new as ``changed``."""
    row = await conn.fetchrow(
        """SELECT coalesce(max(changed), 0) AS changed,
                  coalesce(array_agg(source) FILTER (WHERE expires_at IS NOT NULL), '{}') AS sources,
                  coalesce(array_agg(expires_at) FILTER (WHERE expires_at IS NOT NULL), '{}') AS expiries
             FROM intel_sources"""
    )
    assert row is not None  # an aggregate's one row
    return FeedState(row["changed"], dict(zip(row["sources"], row["expiries"], strict=True)))


# Exact matches by (kind, value) on the btree (a listed address too); addresses also by containment
# in a listed network, on the networks' GiST index. Expired entries are left out, and so are the matches of
# a feed past its expiry (`stale`: asked per match, so that the joins keep their index scans).
LOOKUP_SQL = """
SELECT q.i, e.source, e.kind, e.value, e.verdict, e.confidence, e.tags, e.first_seen, e.last_seen, e.expires_at,
       EXISTS (SELECT 1 FROM intel_sources s WHERE s.source = e.source AND s.expires_at <= now()) AS stale
  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(kind, value, i)
  JOIN intel_entries e ON e.kind = q.kind AND e.value = q.value
 WHERE e.expires_at IS NULL OR e.expires_at > now()
UNION ALL
SELECT q.i + cardinality($1::text[]), e.source, e.kind, e.value, e.verdict, e.confidence, e.tags, e.first_seen,
       e.last_seen, e.expires_at,
       EXISTS (SELECT 1 FROM intel_sources s WHERE s.source = e.source AND s.expires_at <= now())
  FROM unnest($3::inet[]) WITH ORDINALITY AS q(address, i)
  JOIN intel_entries e ON e.kind = 'cidr' AND e.network >>= q.address
 WHERE e.expires_at IS NULL OR e.expires_at > now()
"""


# Up to this many values a lookup's estimated cost stays far below jit_above_cost.
_JIT_FREE_VALUES = 20


async def lookup(conn: Conn, values: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[Match]]:
    """What live feed entries each (kind, value) matches, in one query for all of them.

    Kinds are Vigil's intel kinds or the analyzer's (``ipv4``, ``ipv6``); an address matches the
    networks that hold it. A value that is no valid indicator of its kind matches nothing.
    """
    result: dict[tuple[str, str], list[Match]] = {key: [] for key in values}
    exact: list[tuple[str, str]] = []  # normalised, in query order
    exact_asked: list[tuple[str, str]] = []  # as asked, in the same order
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    address_asked: list[tuple[str, str]] = []
    for key in dict.fromkeys(values):
        try:
            kind, value = indicator_key(*key)
        except ValueError:
            continue
        exact.append((kind, value))
        exact_asked.append(key)
        if kind == "ip":
            addresses.append(ipaddress.ip_address(value))
            address_asked.append(key)
    if not exact and not addresses:
        return result
    asked = exact_asked + address_asked
    arguments = ([k for k, _ in exact], [v for _, v in exact], addresses)
    if len(exact) + len(addresses) <= _JIT_FREE_VALUES:
        rows = await conn.fetch(LOOKUP_SQL, *arguments)
    elif conn.is_in_transaction():
        # Many values: without JIT. Over a million entries the planner's estimate of the containment
        # join passes jit_above_cost, and compiling would take a second where the query takes
        # milliseconds. SET LOCAL lasts to the end of the caller's transaction, OLTP work all of it.
        await conn.execute("SET LOCAL jit = off")
        rows = await conn.fetch(LOOKUP_SQL, *arguments)
    else:
        async with conn.transaction():
            await conn.execute("SET LOCAL jit = off")
            rows = await conn.fetch(LOOKUP_SQL, *arguments)
    for row in rows:
        if row["stale"]:
            continue
        result[asked[row["i"] - 1]].append(
            Match(
                source=row["source"],
                kind=row["kind"],
                value=row["value"],
                verdict=row["verdict"],
                confidence=row["confidence"],
                tags=tuple(row["tags"]),
                first_seen=row["first_seen"],
                last_seen=row["last_seen"],
                expires_at=row["expires_at"],
            )
        )
    for matches in result.values():
        matches.sort(key=lambda m: (-VERDICT_RANK[m.verdict], -m.confidence, m.source, m.value))
    return result
