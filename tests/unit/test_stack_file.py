"""The CLI finds the broker and database of the `vigil up` running from its directory, unless told otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import VigilSettings
from vigil.stack_file import STACK_FILE, forget_stack, save_stack, with_running_stack

EMBEDDED = "postgresql://postgres@/postgres?host=/srv/vigil/.vigil/pgdata"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIGIL_DATA_DIR", str(tmp_path))
    return tmp_path


def test_a_running_stack_names_its_database_and_broker(data_dir: Path) -> None:
    path = save_stack(data_dir, database_url=EMBEDDED, bootstrap_servers="127.0.0.1:39092")
    assert path.stat().st_mode & 0o777 == 0o600  # a database URL may hold a password
    settings = with_running_stack(VigilSettings())
    assert (settings.database_url, settings.kafka.bootstrap_servers) == (EMBEDDED, "127.0.0.1:39092")
    forget_stack(data_dir)
    assert with_running_stack(VigilSettings()).database_url != EMBEDDED


def test_the_environment_wins(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_stack(data_dir, database_url=EMBEDDED, bootstrap_servers="127.0.0.1:39092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://ops@db.internal/vigil")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092")
    settings = with_running_stack(VigilSettings())
    assert (settings.database_url, settings.kafka.bootstrap_servers) == (
        "postgresql://ops@db.internal/vigil",
        "kafka-1:9092",
    )


def test_a_stack_that_was_killed_names_nothing(data_dir: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (data_dir / STACK_FILE).write_text(
        json.dumps({"pid": int(ended.stdout), "database_url": EMBEDDED, "bootstrap_servers": "x:1"})
    )
    assert with_running_stack(VigilSettings()).database_url != EMBEDDED


@pytest.mark.parametrize("content", ["", "not json", "[]", json.dumps({"database_url": EMBEDDED})])
def test_an_unreadable_file_names_nothing(data_dir: Path, content: str) -> None:
    (data_dir / STACK_FILE).write_text(content)
    assert with_running_stack(VigilSettings()).database_url != EMBEDDED


def test_a_file_others_may_write_or_a_link_names_nothing(data_dir: Path, tmp_path: Path) -> None:
    path = save_stack(data_dir, database_url=EMBEDDED, bootstrap_servers="x:1")
    path.chmod(0o666)
    assert with_running_stack(VigilSettings()).database_url != EMBEDDED
    path.chmod(0o600)
    assert with_running_stack(VigilSettings()).database_url == EMBEDDED
    elsewhere = tmp_path / "planted.json"
    path.rename(elsewhere)
    (data_dir / STACK_FILE).symlink_to(elsewhere)
    assert with_running_stack(VigilSettings()).database_url != EMBEDDED
    with pytest.raises(OSError):  # saving never writes through the link
        save_stack(data_dir, database_url=EMBEDDED, bootstrap_servers="x:1")


@pytest.mark.parametrize("pid", [0, -1])
def test_a_process_group_is_no_stack(data_dir: Path, pid: int) -> None:
    (data_dir / STACK_FILE).write_text(json.dumps({"pid": pid, "database_url": EMBEDDED, "bootstrap_servers": "x"}))
    (data_dir / STACK_FILE).chmod(0o600)
    assert with_running_stack(VigilSettings()).database_url != EMBEDDED


def test_an_older_files_mode_is_made_private(data_dir: Path) -> None:
    (data_dir / STACK_FILE).write_text("{}")
    (data_dir / STACK_FILE).chmod(0o644)
    path = save_stack(data_dir, database_url=EMBEDDED, bootstrap_servers="x:1")
    assert path.stat().st_mode & 0o777 == 0o600
