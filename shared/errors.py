"""The three kinds of failure a consumer knows: invalid, retriable, and everything else."""

from __future__ import annotations

import asyncpg
from aiokafka.errors import KafkaError


class VigilError(Exception):
    """Root of Vigil's own exceptions."""


class InvalidMessage(VigilError):
    """The message can never be handled: dead-letter it with this reason and move on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeadLetterLimitExceeded(VigilError):
    """Too many messages were dead-lettered: stop rather than empty a topic into the dead-letter queue."""


class InvalidTransition(VigilError):
    """An incident cannot move from its state by this command."""


def is_retriable(exc: BaseException) -> bool:
    """Return True for failures that pass by themselves: a lost connection, a busy broker, a conflict."""
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in {
            "KafkaConnectionError",
            "RequestTimedOutError",
            "NodeNotReadyError",
            "KafkaTimeoutError",
        }
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.SerializationError
        | asyncpg.DeadlockDetectedError
        | asyncpg.TooManyConnectionsError
        | asyncpg.CannotConnectNowError,
    ):
        return True
    return isinstance(exc, ConnectionError | TimeoutError | OSError)
