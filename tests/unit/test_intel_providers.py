"""Online intel providers without I/O: the documented requests and answers of AbuseIPDB, VirusTotal and
GreyNoise, the request budget, API keys, and the plug-in interface (with a test double, installed as a
distribution with a `vigil.intel_providers` entry point)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from services.analyzer import intel
from services.analyzer.providers import (
    AbuseIPDB,
    Budget,
    GreyNoise,
    IntelProvider,
    ProviderAnswer,
    ProviderConfigError,
    ProviderRequest,
    VirusTotal,
    load_providers,
    parse_api_keys,
    reserve,
)

KEY = SecretStr("k-0123456789")


def config(document: str) -> intel.IntelConfig:
    return intel.parse_config(document)


# ---- AbuseIPDB -----------------------------------------------------------------------------------


def abuse(score: int, **more: Any) -> dict[str, Any]:
    return {"data": {"ipAddress": "203.0.113.9", "abuseConfidenceScore": score, "isWhitelisted": False, **more}}


def test_abuseipdb_checks_an_address_with_its_key_in_a_header() -> None:
    provider = AbuseIPDB({"max_age_days": 30}, KEY)
    assert provider.request("ip", "203.0.113.9") == ProviderRequest(
        url="https://api.abuseipdb.com/api/v2/check",
        params={"ipAddress": "203.0.113.9", "maxAgeInDays": "30"},
        headers={"Accept": "application/json"},
    )
    assert provider.auth_headers() == {"Key": "k-0123456789"}
    assert provider.kinds == {"ip"}


@pytest.mark.parametrize(
    ("body", "verdict", "confidence"),
    [
        (abuse(100, totalReports=42), "malicious", 100),
        (abuse(75), "malicious", 75),
        (abuse(40), "suspicious", 40),
        (abuse(10), None, 10),
        (abuse(0, isWhitelisted=True), "benign-listed", 75),
    ],
)
def test_abuseipdb_scores_become_verdicts(body: dict[str, Any], verdict: str | None, confidence: int) -> None:
    found = AbuseIPDB({}, KEY).answer(200, body)
    assert (found.verdict, found.confidence) == (verdict, confidence)
    assert found.detail["abuse_confidence_score"] == body["data"]["abuseConfidenceScore"]


def test_abuseipdb_tags_tor_exits_and_refuses_an_undocumented_answer() -> None:
    assert AbuseIPDB({}, KEY).answer(200, abuse(90, isTor=True)).tags == ("tor",)
    with pytest.raises(KeyError):
        AbuseIPDB({}, KEY).answer(200, {"errors": []})


# ---- VirusTotal ----------------------------------------------------------------------------------


def vt(malicious: int, suspicious: int = 0, **attributes: Any) -> dict[str, Any]:
    stats = {"harmless": 60, "malicious": malicious, "suspicious": suspicious, "undetected": 10, "timeout": 0}
    return {"data": {"id": "x", "type": "domain", "attributes": {"last_analysis_stats": stats, **attributes}}}


def test_virustotal_asks_each_kind_at_its_collection() -> None:
    provider = VirusTotal({"base_url": "https://vt.test/"}, KEY)
    asked: list[tuple[intel.Kind, str]] = [
        ("ip", "203.0.113.9"),
        ("domain", "evil.example"),
        ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ("url", "http://evil.example/a"),
    ]
    paths = {kind: provider.request(kind, value).url for kind, value in asked}
    assert paths == {
        "ip": "https://vt.test/api/v3/ip_addresses/203.0.113.9",
        "domain": "https://vt.test/api/v3/domains/evil.example",
        "sha256": "https://vt.test/api/v3/files/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "md5": "https://vt.test/api/v3/files/d41d8cd98f00b204e9800998ecf8427e",
        # the URL's identifier: its base64url without padding, as VirusTotal documents
        "url": "https://vt.test/api/v3/urls/aHR0cDovL2V2aWwuZXhhbXBsZS9h",
    }
    assert provider.auth_headers() == {"x-apikey": "k-0123456789"}


def test_virustotal_engines_become_verdicts_and_not_found_is_no_verdict() -> None:
    provider = VirusTotal({}, KEY)
    label = {"popular_threat_classification": {"suggested_threat_label": "trojan.emotet/heodo"}}
    found = provider.answer(200, vt(9, 1, tags=["c2"], **label))
    assert (found.verdict, found.confidence, found.tags) == ("malicious", 95, ("trojan.emotet/heodo", "c2"))
    assert found.detail["malicious"] == 9
    assert provider.answer(200, vt(2)).verdict == "suspicious"
    assert provider.answer(200, vt(0, 1)).confidence == 30
    assert provider.answer(200, vt(0)) == ProviderAnswer(None, 0, (), provider.answer(200, vt(0)).detail)
    missing = {"error": {"code": "NotFoundError", "message": "Resource not found"}}
    assert provider.answer(404, missing).verdict is None
    assert VirusTotal({"malicious_at": 10}, KEY).answer(200, vt(9)).verdict == "suspicious"


# ---- GreyNoise -----------------------------------------------------------------------------------


def test_greynoise_community_noise_riot_and_not_observed() -> None:
    provider = GreyNoise({}, None)  # the Community API answers without a key, more sparingly
    assert provider.request("ip", "203.0.113.9").url == "https://api.greynoise.io/v3/community/203.0.113.9"
    assert provider.auth_headers() == {}
    assert GreyNoise({}, KEY).auth_headers() == {"key": "k-0123456789"}
    answers = {
        "malicious": {"ip": "1", "noise": True, "riot": False, "classification": "malicious", "name": "unknown"},
        "riot": {"ip": "1", "noise": False, "riot": True, "classification": "benign", "name": "Google"},
        "noise": {"ip": "1", "noise": True, "riot": False, "classification": "unknown", "name": "Shodan.io"},
    }
    found = {name: provider.answer(200, body) for name, body in answers.items()}
    assert (found["malicious"].verdict, found["malicious"].tags) == ("malicious", ("internet-scanner",))
    assert (found["riot"].verdict, found["riot"].tags) == ("benign-listed", ("Google",))
    assert (found["noise"].verdict, found["noise"].confidence) == ("suspicious", 30)
    not_observed = {"ip": "1", "noise": False, "riot": False, "message": "IP not observed scanning the internet."}
    assert provider.answer(404, not_observed).verdict is None


# ---- the budget ----------------------------------------------------------------------------------

NOW = datetime(2026, 11, 25, 23, 59, 0, tzinfo=UTC)


def test_lookups_are_spaced_by_the_rate_and_the_day_quota_moves_them_to_the_next_day() -> None:
    budget = Budget(next_slot=NOW - timedelta(hours=1), day=None, day_used=0)
    slots = []
    for _ in range(3):
        reserved = reserve(budget, now=NOW, per_minute=4, per_day=2)
        assert reserved is not None
        slot, budget = reserved
        slots.append(slot)
    assert slots[0] == NOW and slots[1] == NOW + timedelta(seconds=15)
    assert slots[2] == datetime(2026, 11, 26, tzinfo=UTC)  # two a day: the third waits for midnight (UTC)
    assert (budget.day, budget.day_used) == (date(2026, 11, 26), 1)


def test_a_budget_spent_for_over_a_day_enqueues_nothing() -> None:
    far = Budget(next_slot=NOW + timedelta(days=1, seconds=1), day=None, day_used=0)
    assert reserve(far, now=NOW, per_minute=60, per_day=None) is None


# ---- keys and configuration ----------------------------------------------------------------------


def test_api_keys_come_as_name_key_pairs_and_an_error_never_shows_one() -> None:
    keys = parse_api_keys(SecretStr("abuseipdb:abc123, virustotal:def456"))
    assert {name: key.get_secret_value() for name, key in keys.items()} == {
        "abuseipdb": "abc123",
        "virustotal": "def456",
    }
    assert parse_api_keys(None) == {}
    with pytest.raises(ProviderConfigError, match="pair 2 is not name:key") as caught:
        parse_api_keys(SecretStr("abuseipdb:abc123,secretwithoutname"))
    assert "secretwithoutname" not in str(caught.value)


def test_none_is_enabled_as_shipped_and_listing_one_enables_it() -> None:
    assert load_providers(intel.load_config(), {}) == []
    [enabled] = load_providers(config("providers:\n  greynoise:\n"), {})
    assert (enabled.provider.name, enabled.per_minute, enabled.per_day, enabled.ttl) == (
        "greynoise",
        GreyNoise.per_minute,
        GreyNoise.per_day,
        timedelta(hours=24),
    )
    assert enabled.effect_kind == "intel.provider.greynoise"
    assert load_providers(config("providers:\n  greynoise: {enabled: false}\n"), {}) == []


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("providers:\n  abuseipdb: {}\n", "providers.abuseipdb: no API key (VIGIL_INTEL_API_KEYS=abuseipdb:KEY)"),
        ("providers:\n  shodan: {}\n", "providers.shodan: no provider of that name is built in or installed"),
        ("providers:\n  virustotal: {options: {colour: red}}\n", "providers.virustotal.options: colour"),
    ],
)
def test_a_provider_that_cannot_be_used_stops_the_analyzer(document: str, reason: str) -> None:
    with pytest.raises(ProviderConfigError, match=re.escape(reason)):
        load_providers(config(document), {"virustotal": KEY})


# ---- the plug-in interface -----------------------------------------------------------------------

PLUGIN_MODULE = '''
from services.analyzer.providers import ProviderAnswer, ProviderRequest


class Passive:
    """A test double: answers from a table, its options and key as given."""

    name = "passive"
    kinds = frozenset({"domain"})
    per_minute = 30
    per_day = None

    def __init__(self, options, api_key):
        self.options = options
        self.api_key = api_key

    def request(self, kind, value):
        return ProviderRequest(url=self.options["base_url"] + "/" + value)

    def auth_headers(self):
        return {"Authorization": "Bearer " + self.api_key.get_secret_value()}

    def answer(self, status, body):
        return ProviderAnswer(body.get("verdict"), body.get("confidence", 0))


def make(options, api_key):
    return Passive(options, api_key)


def misnamed(options, api_key):
    provider = Passive(options, api_key)
    provider.name = "other"
    return provider


def not_a_provider(options, api_key):
    return object()
'''


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution (a dist-info on sys.path) with vigil.intel_providers entry points."""
    module = f"vigil_test_intel_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE)
    info = tmp_path / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    points = {"passive": "make", "misnamed": "misnamed", "not-a-provider": "not_a_provider"}
    lines = [f"{name} = {module}:{factory}" for name, factory in points.items()]
    (info / "entry_points.txt").write_text("\n".join(["[vigil.intel_providers]", *lines, ""]))
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def test_a_plugin_provider_is_loaded_from_its_entry_point_with_its_options_and_key(plugins: str) -> None:
    document = "providers:\n  passive: {per_day: 100, ttl_hours: 2, options: {base_url: 'https://p.test'}}\n"
    [loaded] = load_providers(config(document), {"passive": SecretStr("p-key")})
    provider = loaded.provider
    assert type(provider).__module__ == plugins and isinstance(provider, IntelProvider)
    assert (loaded.per_minute, loaded.per_day, loaded.ttl) == (30, 100, timedelta(hours=2))
    assert provider.request("domain", "evil.example") == ProviderRequest(url="https://p.test/evil.example")
    assert provider.auth_headers() == {"Authorization": "Bearer p-key"}
    assert provider.answer(200, {"verdict": "malicious", "confidence": 70}) == ProviderAnswer("malicious", 70)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("misnamed", "providers.misnamed: the factory returned a provider named 'other'"),
        ("not-a-provider", "providers.not-a-provider: the factory did not return a provider"),
    ],
)
def test_a_plugin_that_is_no_provider_stops_the_load(plugins: str, name: str, reason: str) -> None:
    with pytest.raises(ProviderConfigError, match=re.escape(reason)):
        load_providers(config(f"providers:\n  {name}: {{options: {{base_url: x}}}}\n"), {name: KEY})
