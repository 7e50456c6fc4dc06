"""Structured logging: one JSON object a line, carrying incident and event ids where known."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from shared.events import EventBase


def configure_logging(level: str = "INFO", fmt: str = "json", service: str | None = None) -> None:
    """Route every logger to stderr as JSON (or plain text for people at a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        static = {"service": service} if service else {}
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields=static,
            )
        )
    else:
        prefix = f"{service} " if service else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "uvicorn.access", "ioc_finder"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # httpx logs every request's whole URL at INFO, and a chat webhook's or a private calendar's URL is its
    # secret: Vigil logs the host of what it calls itself. Not even at DEBUG.
    for secret_urls in ("httpx", "httpcore"):
        logging.getLogger(secret_urls).setLevel(logging.WARNING)


def event_ids(event: EventBase) -> dict[str, str]:
    """The ids a log line about an event carries: `log.info(..., extra=event_ids(event))`."""
    return {"incident_id": event.subject, "event_id": event.id}
