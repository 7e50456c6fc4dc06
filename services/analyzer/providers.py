"""Online threat-intel providers (AbuseIPDB, VirusTotal, GreyNoise, plug-ins) behind one interface.

A provider is pure: it says what request looks a value up (``request``), which headers carry its
API key (``auth_headers``, added when the request is sent, never stored) and what an answer means
(``answer``). Vigil does the rest the same way for every provider:

* An analysis consults the cache (``intel_provider_cache``) for the indicators it looks up (those its
  batch named and those whose kept verdict may be out of date, see ``handlers._look_up``; never an
  internal address) and, for a value no live answer covers, enqueues a lookup effect in its own
  transaction, at the provider's next free slot (``per_minute`` apart, ``per_day`` at most; the budget
  is in Postgres, so replicas share it), and notes that the incident waits for it. Incidents asking
  for one value within one TTL share one lookup (its idempotency key).
* The effects runner makes the call outside any transaction (timeouts, retries with backoff on 429
  and 5xx, a refusal for good on other 4xx) and, in the transaction that records the outcome, the
  answer goes into the cache (a failure too, briefly, so it is not asked again at once) and is noted
  for each incident that waited for it (its next analysis looks the value up again); each incident
  that no longer waits for anything is analysed again, and a new version of its analysis is
  published if a verdict changed (the same verdicts publish nothing).

Built in: ``abuseipdb``, ``virustotal``, ``greynoise``; others come from the
``vigil.intel_providers`` entry point group, a factory ``(options, api_key) -> provider``. None is
enabled unless intel.yaml lists it; API keys come from ``VIGIL_INTEL_API_KEYS``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import asyncpg
import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from services.analyzer import forensic_repository, intel
from services.analyzer.intel import Kind, Match, Verdict
from shared.addresses import is_external
from shared.consumer import HandlerContext
from shared.db import Conn
from shared.effects import Effect, EffectKind, PermanentEffectError, TransientEffectError, enqueue
from shared.effects.domain import bound_text, classify_http_status
from shared.errors import is_retriable, validation_reason
from shared.events import EVENT_ADAPTER, EffectOutcome, IncidentDetected, IncidentUpdated

log = logging.getLogger(__name__)

SERVICE = "analyzer"
ENTRY_POINT_GROUP = "vigil.intel_providers"
EFFECT_PREFIX = "intel.provider."
# A failed lookup is not asked again for this long (or the provider's TTL, if shorter).
ERROR_TTL = timedelta(hours=1)
# Lookups further out than this in a provider's budget are not enqueued: the value stays unknown to it.
MAX_BACKLOG = timedelta(days=1)
REQUEST_TIMEOUT_S = 15.0


class ProviderConfigError(ValueError):
    """A provider that cannot be used (unknown, no API key, bad options); the analyzer does not start."""


# ---- the interface -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderRequest:
    """An HTTP GET that looks one value up; nothing secret in it (it is shown in errors)."""

    url: str
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderAnswer:
    """What a provider says of a value: a verdict (None: nothing against it), and why."""

    verdict: Verdict | None
    confidence: int = 0
    tags: tuple[str, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)  # a few of its fields, for operators


@runtime_checkable
class IntelProvider(Protocol):
    """One online provider; a plug-in's factory ``(options, api_key)`` returns one."""

    name: str
    kinds: frozenset[Kind]  # what it can look up
    per_minute: int  # its default rate (the free tier's), unless intel.yaml says otherwise
    per_day: int | None

    def request(self, kind: Kind, value: str) -> ProviderRequest:
        """The request that looks ``value`` up (pure)."""
        ...

    def auth_headers(self) -> Mapping[str, str]:
        """The headers carrying the API key, added as the request is sent."""
        ...

    def answer(self, status: int, body: Any) -> ProviderAnswer:
        """What an answer (HTTP 200, or 404: nothing known) means; raise ValueError for one it cannot read."""
        ...


ProviderFactory = Callable[[Mapping[str, Any], SecretStr | None], IntelProvider]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _options(model: type[_Options], name: str, options: Mapping[str, Any]) -> Any:
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        raise ProviderConfigError(f"providers.{name}.options: {validation_reason(exc)}") from exc


def _key(name: str, api_key: SecretStr | None) -> SecretStr:
    if api_key is None or not api_key.get_secret_value():
        raise ProviderConfigError(f"providers.{name}: no API key (VIGIL_INTEL_API_KEYS={name}:KEY)")
    return api_key


def _tags(*groups: Sequence[Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(t).strip() for group in groups for t in group if t and str(t).strip()))


# ---- AbuseIPDB -----------------------------------------------------------------------------------


class AbuseIPDBOptions(_Options):
    base_url: str = "https://api.abuseipdb.com"
    max_age_days: int = Field(90, ge=1, le=365, description="Reports this recent count (maxAgeInDays).")
    malicious_at: int = Field(75, ge=1, le=100, description="abuseConfidenceScore from which it is malicious.")
    suspicious_at: int = Field(25, ge=1, le=100, description="abuseConfidenceScore from which it is suspicious.")


class AbuseIPDB:
    """AbuseIPDB API v2 ``GET /api/v2/check``: an address's abuse confidence score (0-100) from reports.

    Malicious from ``malicious_at``, suspicious from ``suspicious_at``, at the score's confidence;
    an address on AbuseIPDB's whitelist is benign-listed. Free tier: 1,000 checks a day.
    """

    name = "abuseipdb"
    kinds: frozenset[Kind] = frozenset({"ip"})
    per_minute = 60
    per_day: int | None = 1000

    def __init__(self, options: Mapping[str, Any], api_key: SecretStr | None) -> None:
        self.options: AbuseIPDBOptions = _options(AbuseIPDBOptions, self.name, options)
        self._api_key = _key(self.name, api_key)

    def request(self, kind: Kind, value: str) -> ProviderRequest:
        return ProviderRequest(
            url=f"{self.options.base_url.rstrip('/')}/api/v2/check",
            params={"ipAddress": value, "maxAgeInDays": str(self.options.max_age_days)},
            headers={"Accept": "application/json"},
        )

    def auth_headers(self) -> Mapping[str, str]:
        return {"Key": self._api_key.get_secret_value()}

    def answer(self, status: int, body: Any) -> ProviderAnswer:
        data = body["data"]
        score = int(data["abuseConfidenceScore"])
        detail = {
            "abuse_confidence_score": score,
            "total_reports": data.get("totalReports"),
            "distinct_users": data.get("numDistinctUsers"),
            "last_reported_at": data.get("lastReportedAt"),
            "country": data.get("countryCode"),
            "usage_type": data.get("usageType"),
            "isp": data.get("isp"),
        }
        tags = _tags(["tor"] if data.get("isTor") else [])
        if data.get("isWhitelisted"):
            return ProviderAnswer("benign-listed", 75, tags, detail)
        if score >= self.options.malicious_at:
            return ProviderAnswer("malicious", score, tags, detail)
        if score >= self.options.suspicious_at:
            return ProviderAnswer("suspicious", score, tags, detail)
        return ProviderAnswer(None, score, tags, detail)


# ---- VirusTotal ----------------------------------------------------------------------------------


class VirusTotalOptions(_Options):
    base_url: str = "https://www.virustotal.com"
    malicious_at: int = Field(3, ge=1, description="Engines saying malicious from which it is malicious.")


class VirusTotal:
    """VirusTotal API v3: ``/api/v3/ip_addresses/{ip}``, ``/domains/{domain}``, ``/files/{hash}``,
    ``/urls/{unpadded base64url of the URL}``, read by ``last_analysis_stats``.

    Malicious when ``malicious_at`` engines or more say so (confidence 50 + 5 a engine, at most
    100); suspicious when at least one says malicious or suspicious (confidence 20 + 10 an engine,
    at most 70); 404 (NotFoundError): VirusTotal knows nothing of it. Tags: its suggested threat
    label and its own tags. Public API: 4 requests a minute, 500 a day.
    """

    name = "virustotal"
    kinds: frozenset[Kind] = frozenset({"ip", "domain", "url", "md5", "sha1", "sha256"})
    per_minute = 4
    per_day: int | None = 500
    _COLLECTIONS: Mapping[str, str] = {
        "ip": "ip_addresses",
        "domain": "domains",
        "url": "urls",
        "md5": "files",
        "sha1": "files",
        "sha256": "files",
    }

    def __init__(self, options: Mapping[str, Any], api_key: SecretStr | None) -> None:
        self.options: VirusTotalOptions = _options(VirusTotalOptions, self.name, options)
        self._api_key = _key(self.name, api_key)

    def request(self, kind: Kind, value: str) -> ProviderRequest:
        identifier = base64.urlsafe_b64encode(value.encode()).decode().rstrip("=") if kind == "url" else value
        return ProviderRequest(
            url=f"{self.options.base_url.rstrip('/')}/api/v3/{self._COLLECTIONS[kind]}/{identifier}",
            headers={"Accept": "application/json"},
        )

    def auth_headers(self) -> Mapping[str, str]:
        return {"x-apikey": self._api_key.get_secret_value()}

    def answer(self, status: int, body: Any) -> ProviderAnswer:
        if status == 404:
            return ProviderAnswer(None, 0, (), {"found": False})
        attributes = body["data"]["attributes"]
        stats = attributes.get("last_analysis_stats") or {}
        malicious, suspicious = int(stats.get("malicious", 0)), int(stats.get("suspicious", 0))
        detail = {
            "malicious": malicious,
            "suspicious": suspicious,
            "harmless": int(stats.get("harmless", 0)),
            "undetected": int(stats.get("undetected", 0)),
            "reputation": attributes.get("reputation"),
        }
        label = (attributes.get("popular_threat_classification") or {}).get("suggested_threat_label")
        tags = _tags([label] if label else [], (attributes.get("tags") or [])[:5])
        if malicious >= self.options.malicious_at:
            return ProviderAnswer("malicious", min(100, 50 + 5 * malicious), tags, detail)
        if malicious + suspicious > 0:
            return ProviderAnswer("suspicious", min(70, 20 + 10 * (malicious + suspicious)), tags, detail)
        return ProviderAnswer(None, 0, tags, detail)


# ---- GreyNoise -----------------------------------------------------------------------------------


class GreyNoiseOptions(_Options):
    base_url: str = "https://api.greynoise.io"


class GreyNoise:
    """GreyNoise Community API ``GET /v3/community/{ip}``: internet background noise and known services.

    ``classification`` malicious: malicious (confidence 80); a RIOT address (a known business
    service) or classification benign: benign-listed (80); other scanning noise: suspicious (30),
    tagged ``internet-scanner``; 404: not observed. The key is optional for the Community API.
    """

    name = "greynoise"
    kinds: frozenset[Kind] = frozenset({"ip"})
    per_minute = 10
    per_day: int | None = 50

    def __init__(self, options: Mapping[str, Any], api_key: SecretStr | None) -> None:
        self.options: GreyNoiseOptions = _options(GreyNoiseOptions, self.name, options)
        self._api_key = api_key

    def request(self, kind: Kind, value: str) -> ProviderRequest:
        return ProviderRequest(
            url=f"{self.options.base_url.rstrip('/')}/v3/community/{value}", headers={"Accept": "application/json"}
        )

    def auth_headers(self) -> Mapping[str, str]:
        return {"key": self._api_key.get_secret_value()} if self._api_key is not None else {}

    def answer(self, status: int, body: Any) -> ProviderAnswer:
        noise, riot = bool(body.get("noise")), bool(body.get("riot"))
        classification = body.get("classification")
        detail = {
            "noise": noise,
            "riot": riot,
            "classification": classification,
            "name": body.get("name"),
            "last_seen": body.get("last_seen"),
        }
        if status == 404:
            return ProviderAnswer(None, 0, (), detail)
        name = body.get("name")
        tags = _tags([name] if name and name != "unknown" else [], ["internet-scanner"] if noise else [])
        if classification == "malicious":
            return ProviderAnswer("malicious", 80, tags, detail)
        if riot or classification == "benign":
            return ProviderAnswer("benign-listed", 80, tags, detail)
        if noise:
            return ProviderAnswer("suspicious", 30, tags, detail)
        return ProviderAnswer(None, 0, tags, detail)


BUILT_IN: dict[str, ProviderFactory] = {"abuseipdb": AbuseIPDB, "virustotal": VirusTotal, "greynoise": GreyNoise}


# ---- composition ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Configured:
    """A provider as intel.yaml enables it: the provider, its cache TTL, its budget and concurrency."""

    provider: IntelProvider
    ttl: timedelta
    per_minute: int
    per_day: int | None
    concurrency: int

    @property
    def effect_kind(self) -> str:
        return EFFECT_PREFIX + self.provider.name


def parse_api_keys(secret: SecretStr | None) -> dict[str, SecretStr]:
    """``name:key,name:key`` (VIGIL_INTEL_API_KEYS) as keys by provider; an error never shows a key."""
    keys: dict[str, SecretStr] = {}
    if secret is None:
        return keys
    for number, pair in enumerate(secret.get_secret_value().split(","), 1):
        if not pair.strip():
            continue
        name, sep, key = pair.strip().partition(":")
        if not sep or not name.strip() or not key.strip():
            raise ProviderConfigError(f"VIGIL_INTEL_API_KEYS: pair {number} is not name:key")
        keys[name.strip()] = SecretStr(key.strip())
    return keys


def _factory(name: str) -> ProviderFactory:
    if name in BUILT_IN:
        return BUILT_IN[name]
    found = [point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == name]
    if not found:
        raise ProviderConfigError(f"providers.{name}: no provider of that name is built in or installed")
    if len({point.value for point in found}) > 1:
        raise ProviderConfigError(f"providers.{name}: installed more than once: {', '.join(p.value for p in found)}")
    factory: ProviderFactory = found[0].load()
    return factory


def load_providers(config: intel.IntelConfig, api_keys: Mapping[str, SecretStr]) -> list[Configured]:
    """The providers intel.yaml enables, built; ProviderConfigError says why one cannot be."""
    configured = []
    for name, options in config.providers.items():
        if not options.enabled:
            continue
        factory = _factory(name)
        try:
            provider = factory(dict(options.options), api_keys.get(name))
        except ProviderConfigError:
            raise
        except Exception as exc:  # a plug-in's own failure: the analyzer does not start, saying why
            raise ProviderConfigError(f"providers.{name}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(provider, IntelProvider):
            raise ProviderConfigError(f"providers.{name}: the factory did not return a provider")
        if provider.name != name:
            raise ProviderConfigError(f"providers.{name}: the factory returned a provider named {provider.name!r}")
        if unknown := sorted(set(provider.kinds) - set(intel.KINDS)):
            raise ProviderConfigError(f"providers.{name}: kinds Vigil does not know: {', '.join(unknown)}")
        configured.append(
            Configured(
                provider=provider,
                ttl=timedelta(hours=options.ttl_hours),
                per_minute=options.per_minute or provider.per_minute,
                per_day=options.per_day if options.per_day is not None else provider.per_day,
                concurrency=options.concurrency,
            )
        )
    return configured


async def sync(conn: Conn, configured: Sequence[Configured]) -> None:
    """Record which providers this analyzer runs (at start-up); the others are disabled."""
    for c in configured:
        await conn.execute(
            """INSERT INTO intel_providers (name, enabled, kinds, ttl_s, per_minute, per_day)
               VALUES ($1, true, $2, $3, $4, $5)
               ON CONFLICT (name) DO UPDATE SET enabled = true, kinds = $2, ttl_s = $3, per_minute = $4,
                   per_day = $5, updated_at = now()""",
            c.provider.name,
            sorted(c.provider.kinds),
            max(1, int(c.ttl.total_seconds())),
            c.per_minute,
            c.per_day,
        )
    await conn.execute(
        "UPDATE intel_providers SET enabled = false, updated_at = now() WHERE name <> ALL($1) AND enabled",
        [c.provider.name for c in configured],
    )


async def status(conn: Conn) -> list[asyncpg.Record]:
    """Each provider: enabled, its budget, its cached answers and the lookups waiting to run (for operators)."""
    return await conn.fetch(
        """SELECT p.name, p.enabled, p.kinds, p.ttl_s, p.per_minute, p.per_day, p.next_slot, p.day, p.day_used,
                  (SELECT count(*) FROM intel_provider_cache c WHERE c.provider = p.name AND c.expires_at > now())
                      AS cached,
                  (SELECT count(*) FROM effects e WHERE e.service = $1 AND e.kind = $2 || p.name
                      AND e.status IN ('pending', 'running')) AS queued,
                  (SELECT count(*) FROM effects e WHERE e.service = $1 AND e.kind = $2 || p.name
                      AND e.status IN ('failed', 'parked')) AS failed
             FROM intel_providers p ORDER BY p.name""",
        SERVICE,
        EFFECT_PREFIX,
    )


# ---- the budget (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    next_slot: datetime
    day: date | None
    day_used: int


def reserve(budget: Budget, *, now: datetime, per_minute: int, per_day: int | None) -> tuple[datetime, Budget] | None:
    """The slot of the next lookup and the budget after it; None when it is over a day away.

    Slots are ``60 / per_minute`` seconds apart; once a (UTC) day has had ``per_day``, the next
    slot is the next day's first.
    """
    slot = max(now, budget.next_slot)
    day, used = budget.day, budget.day_used
    if per_day is not None:
        if day != slot.date():
            day, used = slot.date(), 0
        if used >= per_day:
            slot = max(slot, datetime.combine(slot.date() + timedelta(days=1), time(0), UTC))
            day, used = slot.date(), 0
    if slot - now > MAX_BACKLOG:
        return None
    return slot, Budget(slot + timedelta(seconds=60 / per_minute), day, used + 1)


# ---- what an analysis does -----------------------------------------------------------------------


@dataclass(frozen=True)
class Enabled:
    name: str
    kinds: frozenset[str]
    ttl: timedelta


def digest(keys: Sequence[tuple[str, str]], matches: Mapping[tuple[str, str], Sequence[Match]]) -> str:
    """A digest of the verdicts of the values looked up: a re-analysis that changes none publishes nothing."""
    verdicts = sorted([*key, *intel.verdict_of(matches.get(key, []))] for key in keys)
    return hashlib.sha256(json.dumps(verdicts, default=list).encode()).hexdigest()


async def enabled_providers(conn: Conn) -> list[Enabled]:
    """The providers enabled now, by name."""
    return [
        Enabled(r["name"], frozenset(r["kinds"]), timedelta(seconds=r["ttl_s"]))
        for r in await conn.fetch("SELECT name, kinds, ttl_s FROM intel_providers WHERE enabled ORDER BY name")
    ]


async def consult(
    conn: Conn,
    event: IncidentDetected | IncidentUpdated,
    matches: Mapping[tuple[str, str], list[Match]],
    *,
    internal: Collection[tuple[str, str]],
    enabled: Sequence[Enabled] | None = None,
) -> dict[tuple[str, str], list[Match]]:
    """The feeds' matches plus the cached answers of the enabled providers; lookups enqueued for the rest.

    ``matches`` is ``intel.lookup``'s answer for the indicators the analysis looks up (kinds as the
    analyzer names them). ``internal``: those of them forensics marked internal, never sent (a name
    under the organisation's own DNS suffixes, a URL or e-mail address on one, a private address).
    ``enabled``: the enabled providers, where the caller read them already (``enabled_providers``,
    once a batch). Does nothing more when no provider is enabled.
    """
    if enabled is None:
        enabled = await enabled_providers(conn)
    result = {key: list(found) for key, found in matches.items()}
    if not enabled:
        return result
    normal: dict[tuple[str, str], tuple[Kind, str]] = {}
    for key in result:
        if key in internal:
            continue  # marked internal: the organisation's own names and links leave it no more than its addresses
        try:
            normal[key] = intel.indicator_key(*key)
        except ValueError:
            continue
    # Never an internal address to a third party, nor a link to one; a network is nobody's indicator. Nor
    # a value too long for the indexes of its lookup and answer (forensics keeps none such).
    normal = {key: n for key, n in normal.items() if n[0] != "cidr" and intel.fits(n[1]) and _may_leave(*n)}
    rows = await conn.fetch(
        """SELECT c.kind, c.value, c.provider, c.verdict, c.confidence, c.tags, c.fetched_at, c.expires_at
             FROM unnest($1::text[], $2::text[]) AS q(kind, value)
             JOIN intel_provider_cache c ON c.kind = q.kind AND c.value = q.value
            WHERE c.expires_at > now()""",
        [k for k, _ in normal.values()],
        [v for _, v in normal.values()],
    )
    cached = {(r["provider"], r["kind"], r["value"]): r for r in rows}
    for key, (kind, value) in normal.items():
        for provider in enabled:
            if kind not in provider.kinds:
                continue
            row = cached.get((provider.name, kind, value))
            if row is None and await _ask(conn, provider, kind, value, incident_id=event.subject):
                # Answered while this analysis ran (its outcome committed meanwhile): take it now.
                row = await conn.fetchrow(
                    """SELECT verdict, confidence, tags, fetched_at, expires_at FROM intel_provider_cache
                       WHERE kind = $1 AND value = $2 AND provider = $3 AND expires_at > now()""",
                    kind,
                    value,
                    provider.name,
                )
            if row is not None and row["verdict"] is not None:
                result[key].append(
                    Match(
                        source=provider.name,
                        kind=kind,
                        value=value,
                        verdict=row["verdict"],
                        confidence=row["confidence"],
                        tags=tuple(row["tags"]),
                        first_seen=None,
                        last_seen=row["fetched_at"],
                        expires_at=row["expires_at"],
                    )
                )
                result[key].sort(key=lambda m: (-intel.VERDICT_RANK[m.verdict], -m.confidence, m.source, m.value))
    # Kept to analyse the incident again, as it was, when the answers it waits for arrive.
    stored = event.model_copy(update={"data": event.data.model_copy(update={"new_alerts": [], "part": 1, "parts": 1})})
    await conn.execute(
        """INSERT INTO intel_enrichment (incident_id, event, verdicts_digest) VALUES ($1, $2, $3)
           ON CONFLICT (incident_id) DO UPDATE SET event = $2, verdicts_digest = $3, updated_at = now()""",
        event.subject,
        stored.model_dump(mode="json"),
        digest(list(result), result),
    )
    return result


async def _lookup_status(conn: Conn, effect_kind: str, key: str) -> str | None:
    status: str | None = await conn.fetchval(
        "SELECT status FROM effects WHERE service = $1 AND kind = $2 AND key = $3 FOR UPDATE",
        SERVICE,
        effect_kind,
        key,
    )
    return status


async def _ask(conn: Conn, provider: Enabled, kind: Kind, value: str, *, incident_id: str) -> bool:
    """Enqueue a lookup of the value (unless one of this TTL's exists) and note that the incident waits.

    True when the lookup has already finished: its answer is in the cache (or its failure is).
    """
    effect_kind = EFFECT_PREFIX + provider.name
    now: datetime = await conn.fetchval("SELECT now()")
    # One lookup per value and TTL, whoever asks: its idempotency key.
    key = f"{provider.name}:{kind}:{value}:{int(now.timestamp() // provider.ttl.total_seconds())}"
    status = await _lookup_status(conn, effect_kind, key)
    if status in ("failed", "parked"):
        # It failed within this TTL, and its failure, kept a shorter while (ERROR_TTL), is gone: asked
        # again, once each such while, not left unknown to the provider until the TTL ends.
        key = f"{key}:retry:{int(now.timestamp() // ERROR_TTL.total_seconds())}"
        status = await _lookup_status(conn, effect_kind, key)
    if status is None:
        budget = await conn.fetchrow(
            "SELECT next_slot, day, day_used, per_minute, per_day FROM intel_providers WHERE name = $1 FOR UPDATE",
            provider.name,
        )
        if budget is None:
            return False  # not synced yet (the analyzer is starting): asked by the next analysis
        reserved = reserve(
            Budget(budget["next_slot"], budget["day"], budget["day_used"]),
            now=now,
            per_minute=budget["per_minute"],
            per_day=budget["per_day"],
        )
        if reserved is None:
            log.warning("%s: over a day of lookups queued; %s %s left unknown to it", provider.name, kind, value)
            return False
        slot, after = reserved
        await conn.execute(
            "UPDATE intel_providers SET next_slot = $2, day = $3, day_used = $4 WHERE name = $1",
            provider.name,
            after.next_slot,
            after.day,
            after.day_used,
        )
        await enqueue(
            conn,
            service=SERVICE,
            kind=effect_kind,
            key=key,
            subject=f"intel-provider:{provider.name}",
            target=provider.name,
            payload={"kind": kind, "value": value},
            not_before=slot,
        )
    elif status not in ("pending", "running"):
        return True  # asked and answered (or given up) within this TTL: nothing to wait for
    await conn.execute(
        "INSERT INTO intel_provider_waits (provider, kind, value, incident_id) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING",
        provider.name,
        kind,
        value,
        incident_id,
    )
    return False


# ---- the lookups, as effects ---------------------------------------------------------------------

Reanalyse = Callable[[HandlerContext, IncidentDetected | IncidentUpdated], Awaitable[None]]


class LookupPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["ip", "cidr", "domain", "url", "sha256", "sha1", "md5", "email"]
    value: str


def effect_kinds(configured: Sequence[Configured], *, reanalyse: Reanalyse) -> list[EffectKind]:
    """One effect kind per provider: its lookups, and what their answers do."""
    return [_effect_kind(c, reanalyse) for c in configured]


def _effect_kind(configured: Configured, reanalyse: Reanalyse) -> EffectKind:
    provider = configured.provider
    clients: list[httpx.AsyncClient] = []  # one per provider, kept: no new TLS context per lookup

    async def execute(effect: Effect) -> dict[str, Any]:
        try:
            lookup = LookupPayload.model_validate(effect.payload)
        except ValidationError as exc:
            raise PermanentEffectError(f"invalid {effect.kind} payload: {validation_reason(exc)}") from exc
        request = provider.request(lookup.kind, lookup.value)
        if not clients:
            clients.append(httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, follow_redirects=False))
        response = await clients[0].get(
            request.url, params=dict(request.params), headers={**request.headers, **provider.auth_headers()}
        )
        if response.status_code in (200, 404):
            try:
                found = provider.answer(response.status_code, response.json())
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                if response.status_code == 404:
                    message = f"HTTP 404 from {provider.name}: {bound_text(response.text, 200)}"
                    raise PermanentEffectError(message) from exc
                raise PermanentEffectError(f"{provider.name} answered what it does not document: {exc!r}") from exc
            return {
                "kind": lookup.kind,
                "value": lookup.value,
                "verdict": found.verdict,
                "confidence": found.confidence,
                "tags": list(found.tags),
                "detail": dict(found.detail),
            }
        message = f"HTTP {response.status_code} from {provider.name}: {bound_text(response.text, 200)}"
        if classify_http_status(response.status_code) == "permanent":
            raise PermanentEffectError(message)
        raise TransientEffectError(message)

    async def on_outcome(ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        await settle(ctx, effect, outcome, provider=provider.name, ttl=configured.ttl, reanalyse=reanalyse)

    return EffectKind(
        name=configured.effect_kind,
        execute=execute,
        timeout_s=REQUEST_TIMEOUT_S + 5,
        max_attempts=5,
        concurrency=configured.concurrency,
        per_target_concurrency=configured.concurrency,
        on_outcome=on_outcome,
    )


async def settle(
    ctx: HandlerContext,
    effect: Effect,
    outcome: EffectOutcome,
    *,
    provider: str,
    ttl: timedelta,
    reanalyse: Reanalyse,
) -> None:
    """In the transaction recording a lookup's outcome: cache it, then analyse again whoever waited for it."""
    kind, value = effect.payload["kind"], effect.payload["value"]
    answer = outcome.result if outcome.status == "succeeded" else {}
    await ctx.conn.execute(
        """INSERT INTO intel_provider_cache (kind, value, provider, verdict, confidence, tags, detail, error,
                                             expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + $9::interval)
           ON CONFLICT (kind, value, provider) DO UPDATE SET verdict = $4, confidence = $5, tags = $6, detail = $7,
               error = $8, fetched_at = now(), expires_at = now() + $9::interval""",
        kind,
        value,
        provider,
        answer.get("verdict"),
        int(answer.get("confidence") or 0),
        [str(t) for t in answer.get("tags", [])],
        answer.get("detail", {}),
        None if outcome.status == "succeeded" else outcome.error,
        ttl if outcome.status == "succeeded" else min(ttl, ERROR_TTL),
    )
    # Answers expired a day ago serve no one: a few go with each new one, so the cache stays bounded.
    await ctx.conn.execute(
        """DELETE FROM intel_provider_cache WHERE ctid = ANY(ARRAY(
               SELECT ctid FROM intel_provider_cache WHERE expires_at < now() - interval '1 day' LIMIT 100))"""
    )
    waiting = await ctx.conn.fetch(
        "DELETE FROM intel_provider_waits WHERE provider = $1 AND kind = $2 AND value = $3 RETURNING incident_id",
        provider,
        kind,
        value,
    )
    if waiting:  # their analyses kept the value's verdict without this answer: they look it up again
        await forensic_repository.add_answered(
            ctx.conn, incident_ids=sorted({row["incident_id"] for row in waiting}), kind=kind, value=value
        )
    # Each incident's row locked (in one order, so two outcomes cannot deadlock) before counting what it
    # still waits for: of two answers recorded at once, the later sees the earlier's wait gone.
    for incident_id in sorted({row["incident_id"] for row in waiting}):
        if (
            await ctx.conn.fetchval("SELECT 1 FROM intel_enrichment WHERE incident_id = $1 FOR UPDATE", incident_id)
            is None
        ):
            continue
        if await ctx.conn.fetchval("SELECT 1 FROM intel_provider_waits WHERE incident_id = $1 LIMIT 1", incident_id):
            continue  # it waits for other answers still: one new version when the last arrives
        await _reanalyse(ctx, incident_id, reanalyse)


async def _reanalyse(ctx: HandlerContext, incident_id: str, reanalyse: Reanalyse) -> None:
    """Analyse the incident again as its last event left it; publish the new version if a verdict changed."""
    row = await ctx.conn.fetchrow(
        "SELECT event, verdicts_digest FROM intel_enrichment WHERE incident_id = $1 FOR UPDATE", incident_id
    )
    if row is None:
        return
    event = EVENT_ADAPTER.validate_python(row["event"])
    if not isinstance(event, IncidentDetected | IncidentUpdated):
        return
    scratch = HandlerContext(conn=ctx.conn, service=ctx.service, names=ctx.names)
    savepoint = ctx.conn.transaction()
    await savepoint.start()
    try:
        await reanalyse(scratch, event)
        changed = await ctx.conn.fetchval(
            "SELECT verdicts_digest <> $2 FROM intel_enrichment WHERE incident_id = $1",
            incident_id,
            row["verdicts_digest"],
        )
    except Exception as exc:
        await savepoint.rollback()
        if is_retriable(exc):
            raise  # the database itself: the outcome is recorded again
        # The answer stays cached and the next analysis of the incident uses it; the runner goes on.
        log.exception("incident %s: analysing again with the providers' answers failed", incident_id)
        return
    if not changed:
        # No verdict changed: what the analysis wrote goes, with the version it recorded as published (its
        # event is not sent), and the incident's next event analyses it with the answers, cached.
        await savepoint.rollback()
        return
    await savepoint.commit()
    ctx.emitted.extend(scratch.emitted)
    ctx.audited.extend(scratch.audited)


def _may_leave(kind: str, value: str) -> bool:
    """Whether an indicator may be sent to a third party: not an internal address, nor a URL on one."""
    if kind == "ip":
        return is_external(value)
    if kind == "url":
        host = urlsplit(value).hostname or ""
        return is_external(host) if _is_address(host) else True
    return True


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
