"""Which failures the consume loop, relay and runners wait out, and which stop the process."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import pytest

from shared.errors import Raced, is_retriable


def test_a_unix_socket_that_is_not_there_is_a_server_down_and_retried(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(FileNotFoundError) as missing:
        sock.connect(str(tmp_path / ".s.PGSQL.5432"))
    assert is_retriable(missing.value)


def test_a_missing_file_is_a_bug_and_not_retried(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        (tmp_path / "rules.yaml").read_text()
    assert not is_retriable(missing.value)


def test_a_pool_resetting_a_dropped_connection_is_retried_and_other_client_errors_are_not() -> None:
    assert is_retriable(asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"))
    # The same, noticed as the pool rolls the connection back (a Postgres restart cut an outbox COPY).
    assert is_retriable(asyncpg.InterfaceError("cannot perform operation: another operation is in progress"))
    assert not is_retriable(asyncpg.InternalClientError("something else went wrong"))
    assert not is_retriable(asyncpg.InterfaceError("the server does not support this"))


def test_a_batch_raced_by_another_replica_runs_again_and_a_plain_unique_violation_does_not() -> None:
    assert is_retriable(Raced("another detector stored some of these alerts meanwhile"))
    assert not is_retriable(asyncpg.UniqueViolationError("duplicate key value violates unique constraint"))
