"""Settings for every Vigil process, read from the environment once, at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_NAMES = ("detector", "analyzer", "responder", "coordinator", "reporter")

# Each service serves /metrics, /healthz, /readyz (and its API, if any) on its own port.
DEFAULT_HTTP_PORTS = {
    "reporter": 8080,
    "detector": 8081,
    "analyzer": 8082,
    "responder": 8083,
    "coordinator": 8084,
}


# Postgres connections per service: the consume loop takes one per batch; the APIs, timers and the
# effects runner draw on the rest (the outbox relay and readiness probe have their own).
DEFAULT_POOL_SIZES = {
    "reporter": 8,
    "detector": 6,
    "analyzer": 4,
    "responder": 6,
    "coordinator": 6,
}


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster; the same code runs on Apache Kafka and the embedded broker."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers' certificates.")
    ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Client key for mutual TLS.")
    replication_factor: int = Field(1, ge=1, description="Replicas of each topic Vigil creates (3 in production).")
    enable_idempotence: bool = Field(
        False, description="Idempotent producer; leave off on brokers without it (the embedded one)."
    )
    fetch_max_wait_ms: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Longest a fetch waits at the broker for records. Apache Kafka answers as soon as there are "
        "any; the embedded broker waits this long, so it bounds how late a consumer sees a record.",
    )
    exact_end_offsets: bool = Field(
        False,
        description="The broker counts every record of a batch in a partition's end offset, as Apache Kafka does. "
        "The embedded broker answers the last batch's first offset + 1, so unless this is set the reporter's stream "
        "aggregations write one record per batch, for their changelogs to be read to the end when they recover.",
    )

    def client_options(self) -> dict[str, object]:
        """Return keyword arguments shared by every aiokafka client."""
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return options


class VigilSettings(BaseSettings):
    """Settings common to every Vigil service and tool."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore", populate_by_name=True)

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        validation_alias="DATABASE_URL",
        description="Postgres connection URL (DATABASE_URL); it may hold a password, so it is never shown.",
        repr=False,
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["json", "text"] = Field("json", description="Structured JSON or plain text logs.")
    http_host: str = Field("127.0.0.1", description="Address the service's HTTP server binds to.")
    http_port: int | None = Field(None, description="Port of the service's HTTP server; per-service default.")
    topic_prefix: str = Field("", description="Prefix for every topic name, to share one cluster.")
    consumer_batch_size: int = Field(2000, ge=1, description="Most records fetched per poll.")
    consumer_poll_ms: int = Field(200, ge=1, description="Longest wait for records in one poll.")
    crash_hold_s: float = Field(
        20.0,
        ge=0,
        le=300,
        description="After its consume loop stopped on an error it cannot retry, how long a service keeps serving "
        "/metrics (not ready) before it exits: longer than a scrape interval, so that the error is counted.",
    )
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="Objects a service allocates between the garbage collector's youngest passes (Python's own: "
        "700); 0 leaves Python's thresholds as they are. A batch of alerts is tens of thousands of objects, and "
        "a pass every 700 of them cost the detector a fifth of its time.",
    )
    consumer_loops: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Consume loops in one process, each a member of the service's group with its share of the "
        "partitions: while one waits for Postgres another runs. Per-service default (the detector runs 2).",
    )
    consumer_linger_ms: int | None = Field(
        None,
        ge=0,
        description="How long a poll that found records waits for more, to handle them as one batch; "
        "per-service default (the analyzer and reporter linger, as they do less per record in a bigger batch).",
    )
    session_timeout_ms: int = Field(10_000, description="Consumer group session timeout.")
    rebalance_timeout_ms: int = Field(10_000, description="Consumer group rebalance timeout.")
    dead_letter_ratio: float = Field(
        0.5, gt=0, le=1, description="Share of dead-lettered messages in a window that stops a consumer."
    )
    dead_letter_window: int = Field(1000, ge=10, description="Messages in the dead-letter ratio window.")
    db_pool_size: int | None = Field(
        None, ge=2, description="Largest number of pooled Postgres connections; per-service default."
    )
    correlation_window_s: int = Field(1800, description="Alerts on the same key within this join one incident.")
    detector_update_interval_s: float = Field(
        2.0,
        ge=0,
        description="Least time between two events that carry an open incident's new alerts (as Alertmanager's "
        "group_interval); those that come sooner wait in Postgres and go out together. A new incident, a change "
        "of type or severity, and its alerts' repeats and resolutions are published at once. 0: every batch's.",
    )
    heartbeat_missed_factor: float = Field(
        3.0,
        ge=0,
        le=100,
        description="A tool's heartbeat not seen for this many of its usual intervals raises an alert; 0: never.",
    )
    heartbeat_min_interval_s: float = Field(
        60.0, gt=0, description="A heartbeat's usual interval is taken as at least this, however quick its resends."
    )
    heartbeat_first_interval_s: float = Field(
        14_400.0, gt=0, description="The usual interval of a heartbeat seen once (Alertmanager's repeat_interval)."
    )
    api_token: SecretStr | None = Field(
        None, description="The API token the CLI sends (`vigil tokens create`); else the one `vigil up` saved."
    )
    oidc_issuer: str | None = Field(None, description="OIDC: the identity provider's issuer (`iss`).")
    oidc_audience: str | None = Field(None, description="OIDC: the audience Vigil's tokens carry (`aud`).")
    oidc_jwks: str | None = Field(None, description="OIDC: the provider's JWKS, a file path or an https URL.")
    oidc_name_claim: str = Field("email", description="OIDC: the claim naming the person (else `sub`).")
    oidc_role_claim: str = Field("vigil_role", description="OIDC: the claim holding the Vigil role (or roles).")
    protect_metrics: bool = Field(
        False, description="Ask for a viewer's token on /metrics too (give Prometheus one as its bearer token)."
    )
    api_max_bytes: int = Field(
        1_048_576, gt=0, description="Largest request body the APIs take (413 above); the HTTP ingest has its own."
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Local experiments only: requests without a token act as `anonymous` with every permission. "
        "A service on a non-loopback address with it set logs a warning at start-up; without it and with no "
        "API token, it refuses to start.",
    )
    reporter_url: str = Field("http://127.0.0.1:8080", description="Reporter API, used by the CLI.")
    stream_enabled: bool = Field(
        True,
        description="The reporter's windowed stream aggregations (faust): alerts per minute by source and "
        "outcome, incidents opened per hour, dead letters by reason, flapping alerts; in tables backed by changelogs.",
    )
    stream_flapping_threshold: int = Field(
        3,
        ge=1,
        description="An alert that changes state (resolves, or fires again) more often than this in one "
        "flapping window is flapping.",
    )
    stream_flapping_window_s: int = Field(
        3600, ge=60, le=7 * 24 * 3600, description="The flapping window, in seconds (tumbling, by the events' time)."
    )
    sla_file: Path | None = Field(
        None,
        validation_alias="VIGIL_SLA",
        description="SLA targets per severity (YAML); the shipped services/reporter/sla.yaml when unset. "
        "Checked at start-up.",
    )
    coordinator_url: str = Field("http://127.0.0.1:8084", description="Coordinator API, used by the CLI.")
    data_dir: Path = Field(Path(".vigil"), description="Where `vigil up` keeps the embedded Postgres data.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    effects_backoff_base_s: float = Field(
        1.0, gt=0, description="Ceiling of the first retry delay of a failed side effect (doubles per attempt)."
    )
    effects_backoff_cap_s: float = Field(300.0, gt=0, description="Longest retry delay of a failed side effect.")
    effects_poll_s: float = Field(
        1.0, gt=0, description="How often the effects runner looks for due effects when not woken by a new one."
    )
    # ---- HTTP ingest (the detector's /api/v1/alerts) and the CLI that talks to it ----
    ingest_max_bytes: int = Field(
        1024 * 1024, ge=1, description="Largest request body the detector's HTTP ingest reads (413 above)."
    )
    ingest_tokens: SecretStr | None = Field(
        None,
        description="`name:token` pairs, comma-separated, one per sending tool: the HTTP ingest then requires "
        "`Authorization: Bearer <token>` and records the name on each raw record; a token may not send alerts "
        "whose source (`name` or `name/...`) another token is named for.",
    )
    ingest_hmac_secret: SecretStr | None = Field(
        None,
        description="Secret for tools that sign instead: `X-Vigil-Signature: sha256=<hex HMAC-SHA256 of the body>`.",
    )
    ingest_publish_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for the broker to acknowledge an ingest request's records (503 after)."
    )
    detector_url: str = Field(
        "http://127.0.0.1:8081", description="Detector's HTTP ingest and suppression API, used by the CLI."
    )
    ingest_token: SecretStr | None = Field(
        None, description="Token the CLI sends to the HTTP ingest (one of VIGIL_INGEST_TOKENS' tokens)."
    )
    classification_rules: Path | None = Field(
        None,
        description="The detector's classification rules and severity policy (YAML); the shipped "
        "services/detector/classification.yaml when unset. Checked at start-up: a broken file stops the detector.",
    )
    correlation_rules: Path | None = Field(
        None,
        description="The detector's correlation rules (YAML, Sigma correlation shape); the shipped "
        "services/detector/correlation.yaml when unset. Checked at start-up (a broken file stops the detector) "
        "and re-read when it changes (a broken change is refused, the rules in force stay).",
    )
    inhibition_rules: Path | None = Field(
        None,
        description="The detector's inhibition rules (YAML): firing alerts that suppress related alerts; the shipped "
        "services/detector/inhibition.yaml when unset. Checked at start-up: a broken file stops the detector.",
    )
    responder_connectors: Path | None = Field(
        None,
        description="Where the responder's connectors send actions (YAML); the shipped "
        "services/responder/connectors.yaml, which sends nothing out, when unset. Checked at start-up.",
    )

    analyzer_url: str = Field("http://127.0.0.1:8082", description="Analyzer API (evidence), used by the CLI.")
    analyzer_noise_file: Path | None = Field(
        None,
        description="What the analyzer drops as noise (YAML: documentation ranges, the monitoring tools' own "
        "addresses, internal DNS suffixes); the shipped services/analyzer/noise.yaml when unset. Checked at start-up.",
    )
    analyzer_documentation_noise: bool | None = Field(
        None,
        description="Drop documentation addresses and example names (RFC 5737, 3849, 2606, 6761) as noise; "
        "unset: as the noise file says. The demo sets false: its attackers use them.",
    )

    analyzer_publish_interval_s: float = Field(
        10.0,
        ge=0,
        description="Least time between two versions of an incident's analysis that differ only in counts, times "
        "or indicators no feed lists; the latest waits for it in Postgres. A change of type, severity, "
        "risk level, verdict, tactic or asset tag is published at once. 0 publishes every change at once.",
    )

    intel_config: Path | None = Field(
        None,
        description="The analyzer's threat-intel feeds and online providers (YAML); the shipped "
        "services/analyzer/intel.yaml, which configures none, when unset. Checked at start-up.",
    )
    intel_api_keys: SecretStr | None = Field(
        None,
        description="API keys of the online intel providers, `name:key` pairs, comma-separated "
        "(e.g. `abuseipdb:KEY,virustotal:KEY`); never logged, never in an event.",
    )
    responder_url: str = Field("http://127.0.0.1:8083", description="Responder API, used by the CLI.")
    responder_dry_run: bool = Field(
        False,
        description="Simulate every response step: each is marked simulated with what it would have sent; "
        "nothing is executed.",
    )
    responder_approvals: Path | None = Field(
        None,
        description="The responder's approval policy (YAML); the shipped services/responder/approvals.yaml "
        "when unset. Checked at start-up.",
    )
    responder_guardrails: Path | None = Field(
        None,
        description="The responder's guardrails (YAML); the shipped services/responder/guardrails.yaml when "
        "unset. Checked at start-up.",
    )
    responder_repeat_window: str = Field(
        "30d", description="A target (an address, a domain) leased again within this is a repeat offender."
    )
    responder_repeat_durations: str = Field(
        "1h,6h,24h,7d",
        description="Least lease of a target's 1st, 2nd, 3rd… lease within the repeat window; the last is the cap. "
        "A playbook step's own lease, if longer, wins.",
    )
    responder_monitor_period: str = Field(
        "30m",
        description="How long the incident's new alerts are watched for the contained entities after containment.",
    )
    responder_monitor_alerts: int = Field(
        3, ge=1, description="Alerts on contained entities during the watch that make containment ineffective."
    )
    public_url: str | None = Field(
        None,
        description="Where people reach Vigil's web view (the reporter's address through its proxy, "
        "https://vigil.example.com): every notice links to its incident's page there, and the web view's "
        "forms must come from it. No link when unset.",
    )
    notifications_file: Path | None = Field(
        None,
        validation_alias="VIGIL_NOTIFICATIONS",
        description="Where the coordinator's notices go (channels, people, groups, routes; YAML); the shipped "
        "services/coordinator/notifications.yaml, which sends nothing, when unset. Checked at start-up.",
    )
    oncall_file: Path | None = Field(
        None,
        validation_alias="VIGIL_ONCALL",
        description="Who is on call and which schedule takes which incident (YAML); the shipped "
        "services/coordinator/oncall.yaml when unset. Checked at start-up.",
    )

    digests_file: Path | None = Field(
        None,
        validation_alias="VIGIL_DIGESTS",
        description="The incident review digests the coordinator sends on a schedule (YAML); the shipped "
        "services/coordinator/digests.yaml, which sends none, when unset. Checked at start-up.",
    )
    ticketing_file: Path | None = Field(
        None,
        validation_alias="VIGIL_TICKETING",
        description="Where follow-up tasks become tickets (GitHub Issues or Jira; YAML); the shipped "
        "services/coordinator/ticketing.yaml, which names no tracker, when unset. Checked at start-up.",
    )
    escalation_file: Path | None = Field(
        None,
        validation_alias="VIGIL_ESCALATION",
        description="The coordinator's escalation policies (YAML); the shipped services/coordinator/escalation.yaml "
        "when unset. Checked at start-up.",
    )

    @field_validator("public_url")
    @classmethod
    def _web_address(cls, value: str | None) -> str | None:
        """An http(s) address of a host, with a path at most: no credentials, query or fragment to leak in notices."""
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
            raise ValueError(f"{value!r} is not an http(s) address of a host without credentials")
        if parts.query or parts.fragment or any(c.isspace() or c in '"<>\\' for c in value):
            raise ValueError(f"{value!r} has a query, a fragment or characters no address has")
        return value.rstrip("/")

    def pool_size_for(self, service: str) -> int:
        """Return how many pooled Postgres connections the named service may open."""
        return self.db_pool_size if self.db_pool_size is not None else DEFAULT_POOL_SIZES.get(service, 5)

    def port_for(self, service: str) -> int:
        """Return the HTTP port the named service listens on."""
        return self.http_port if self.http_port is not None else DEFAULT_HTTP_PORTS[service]
