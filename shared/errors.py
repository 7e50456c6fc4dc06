"""The three kinds of failure a consumer knows: invalid, retriable, and everything else."""

from __future__ import annotations

import socket

import asyncpg
from aiokafka.errors import KafkaError
from pydantic import ValidationError


class VigilError(Exception):
    """Root of Vigil's own exceptions."""


class InvalidMessage(VigilError):
    """The message can never be handled: dead-letter it with this reason and move on.

    ``code`` is a short, machine-readable reason (``not_json``, ``unknown_format``, …) carried in
    the dead letter's ``vigil_dlq_code`` header and in the dead-letter metric; ``reason`` is the
    human-readable text.
    """

    def __init__(self, reason: str, *, code: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class UnknownEventType(InvalidMessage):
    """A well-formed Vigil event of a type this version does not know (a newer producer's): skip it."""


class Raced(VigilError):
    """Another replica committed what this batch was about to write: run the batch again from its start.

    Retriable: the consume loop rolls the batch back and hands it over again, and the second pass
    finds what the other replica stored (an alert it stored is then a repeat).
    """


class DeadLetterLimitExceeded(VigilError):
    """Too many messages were dead-lettered: stop rather than empty a topic into the dead-letter queue."""


class InvalidTransition(VigilError):
    """An incident cannot move from its state by this command."""


def is_retriable(exc: BaseException) -> bool:
    """Return True for failures that pass by themselves: a lost connection, a busy broker, a conflict."""
    if isinstance(exc, Raced):
        return True
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
        | asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    ):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return True  # the pool's connection went away with the server
    if isinstance(exc, asyncpg.InternalClientError | asyncpg.InterfaceError) and "another operation" in str(exc):
        # The pool resetting (or a COPY starting on) a connection the server dropped in the middle of a
        # query: the client says so in either class, depending on where it notices.
        return True
    if isinstance(exc, FileNotFoundError) and exc.filename is None:
        return True  # a Unix socket that is not there: the local server is down (a missing file names itself)
    return isinstance(exc, ConnectionError | TimeoutError | socket.gaierror)


def validation_reason(exc: ValidationError) -> str:
    """Return a short, human-readable summary of a validation error (its first five problems)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5])
