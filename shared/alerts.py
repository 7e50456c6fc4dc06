"""Vigil's native alert: what producers publish on the raw alerts topic."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from shared.addresses import IPAddress


class AlertSeverity(StrEnum):
    """Severity as the monitoring tool saw it, before Vigil prioritises the incident."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {s: i for i, s in enumerate(AlertSeverity)}
MAX_FUTURE = timedelta(days=1)


AlertStatus = Literal["firing", "resolved"]
# What a record is: a real alert, a tool's own heartbeat (Alertmanager's Watchdog), or a test or
# canary finding. Only real alerts may open SEV1/SEV2 incidents.
AlertKind = Literal["alert", "heartbeat", "test"]


class Alert(BaseModel):
    """One alert from a monitoring tool or a person, in Vigil's native JSON schema.

    It is also what every format adapter normalises a tool's record into: the optional fields
    below carry the tool's own taxonomy (rule, category, tags, ATT&CK techniques) and severity,
    which classification reads before any keyword.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=200, description="Unique within its source.")
    source: str = Field(min_length=1, max_length=100, description="Tool or person that raised it.")
    title: str = Field(min_length=1, max_length=500)
    description: str = Field("", max_length=20_000)
    severity: AlertSeverity
    time: AwareDatetime = Field(description="When the tool observed it (RFC 3339 with offset).")
    host: str | None = Field(None, max_length=255)
    user: str | None = Field(None, max_length=255)
    src_ip: IPAddress | None = None
    dst_ip: IPAddress | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form key/value tags.")
    raw: dict[str, Any] | None = Field(None, description="The tool's original record, kept as evidence.")
    format: str = Field("native", max_length=40, description="The format it arrived in (set by the adapter).")
    status: AlertStatus = Field("firing", description="`resolved` when the tool says the condition ended.")
    kind: AlertKind = Field("alert", description="`heartbeat` or `test` records never open SEV1/SEV2 incidents.")
    rule: str | None = Field(None, max_length=500, description="The tool's rule or signature that fired.")
    category: str | None = Field(None, max_length=500, description="The tool's own category or finding type.")
    tags: list[str] = Field(default_factory=list, max_length=100, description="The tool's tags or groups.")
    techniques: list[str] = Field(
        default_factory=list, max_length=100, description="MITRE ATT&CK technique or tactic ids (T1059, TA0002)."
    )
    resource: str | None = Field(None, max_length=1000, description="Cloud or cluster resource concerned.")
    url: str | None = Field(None, max_length=2000, description="Where the tool shows this alert.")
    source_severity: str | None = Field(
        None, max_length=200, description="The tool's own severity, as it said it (e.g. `Wazuh level 12`)."
    )
    severity_reason: str | None = Field(
        None, max_length=500, description="How the tool's severity became `severity` (the mapping applied)."
    )

    @field_validator("severity", mode="before")
    @classmethod
    def _lower_severity(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("time")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        value = value.astimezone(UTC)
        # A time before 1970 or more than a day ahead is a clock or parsing error, not an alert.
        if value.year < 1970 or value > datetime.now(UTC) + MAX_FUTURE:
            raise ValueError("time is before 1970 or more than a day in the future")
        return value

    @property
    def entity(self) -> str:
        """Return what the alert is about: host, else address, else user, else its source.

        Alerts about one entity correlate into one incident, and producers use it as the Kafka
        key so that they land on one partition, in order.
        """
        if self.host:
            return f"host:{self.host.lower()}"
        if self.dst_ip:
            return f"ip:{self.dst_ip}"
        if self.src_ip:
            return f"ip:{self.src_ip}"
        if self.user:
            return f"user:{self.user.lower()}"
        return f"source:{self.source.lower()}"

    @functools.cached_property
    def key(self) -> str:
        """Return the id that makes this alert unique across sources (deduplication key)."""
        return f"{self.source}:{self.id}"


ALERT_ADAPTER: TypeAdapter[Alert] = TypeAdapter(Alert)


def leaves(record: Any) -> Iterator[tuple[str, Any]]:
    """Yield a JSON record's scalar values with their dotted paths (`data.srcip`, `tags.0`), in order.

    Iterative, so that a record nested deeper than Python's recursion limit is read like any other.
    """
    stack: list[tuple[str, Any]] = [("", record)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(f"{path}.{n}" if path else str(n), v) for n, v in enumerate(value)]
        else:
            yield path, value
            continue
        stack.extend(reversed(items))
