"""Vigil's native alert: what producers publish on the raw alerts topic."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, field_validator


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


class Alert(BaseModel):
    """One alert from a monitoring tool or a person, in Vigil's native JSON schema."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=200, description="Unique within its source.")
    source: str = Field(min_length=1, max_length=100, description="Tool or person that raised it.")
    title: str = Field(min_length=1, max_length=500)
    description: str = Field("", max_length=20_000)
    severity: AlertSeverity
    time: AwareDatetime = Field(description="When the tool observed it (RFC 3339 with offset).")
    host: str | None = Field(None, max_length=255)
    user: str | None = Field(None, max_length=255)
    src_ip: IPv4Address | IPv6Address | None = None
    dst_ip: IPv4Address | IPv6Address | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form key/value tags.")
    raw: dict[str, Any] | None = Field(None, description="The tool's original record, kept as evidence.")

    @field_validator("severity", mode="before")
    @classmethod
    def _lower_severity(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("time")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

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

    @property
    def key(self) -> str:
        """Return the id that makes this alert unique across sources (deduplication key)."""
        return f"{self.source}:{self.id}"


ALERT_ADAPTER: TypeAdapter[Alert] = TypeAdapter(Alert)
