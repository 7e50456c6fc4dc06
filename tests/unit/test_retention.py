"""The ledger remembers an id at least as long as any topic its service reads keeps the event."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.settings import SERVICE_NAMES
from shared.topics import ALL_TOPICS, LEDGER_MARGIN, ledger_retention


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_no_topic_keeps_events_longer_than_the_ledger_remembers_them(service: str) -> None:
    consumed = [t for t in ALL_TOPICS if service in t.consumers and service not in t.ledger_exempt]
    assert consumed, f"{service} consumes nothing?"
    for topic in consumed:
        assert ledger_retention(service) >= timedelta(milliseconds=topic.retention_ms) + LEDGER_MARGIN, topic.name


def test_the_commands_topic_sets_the_coordinators_ledger() -> None:
    assert ledger_retention("coordinator") == timedelta(days=31)  # commands are kept 30 days
    # Raw alerts 3 days, coordination 7; the merge and detach commands it takes are idempotent by content.
    assert ledger_retention("detector") == timedelta(days=8)
