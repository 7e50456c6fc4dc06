"""Where a running `vigil up` says which broker and database it started, for the CLI in another shell.

The embedded Postgres listens on a socket in the data directory, and the broker may be on a free
port: an operator's command would not find them by the defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shared.settings import VigilSettings

STACK_FILE = "stack.json"


def save_stack(data_dir: Path, *, database_url: str, bootstrap_servers: str) -> Path:
    """Say where this `vigil up` runs (only the local user reads it: a database URL may hold a password)."""
    path = data_dir / STACK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    found = {"pid": os.getpid(), "database_url": database_url, "bootstrap_servers": bootstrap_servers}
    # Never through a link planted in its place, and 0600 whatever mode an older file had.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(json.dumps(found) + "\n")
    return path


def forget_stack(data_dir: Path) -> None:
    (data_dir / STACK_FILE).unlink(missing_ok=True)


def with_running_stack(settings: VigilSettings) -> VigilSettings:
    """The settings with the database and broker of the `vigil up` running from here, where the environment
    names none: what DATABASE_URL or KAFKA_BOOTSTRAP_SERVERS say always wins."""
    path = settings.data_dir / STACK_FILE
    try:
        # Only a file of this user's that nobody else may write: a URL from anyone else's would send the
        # commands (and PGPASSWORD) where they chose.
        owned = path.lstat()
        if owned.st_uid != os.getuid() or owned.st_mode & 0o022 or not path.is_file() or path.is_symlink():
            return settings
        found = json.loads(path.read_text())
        pid = int(found["pid"])
        if pid <= 0:  # 0 and -1 would signal a process group, which always "exists"
            return settings
        os.kill(pid, 0)  # a stack that ended without removing its file (killed) names nothing
    except (OSError, ValueError, KeyError, TypeError):
        return settings
    if "database_url" not in settings.model_fields_set and isinstance(found.get("database_url"), str):
        settings.database_url = found["database_url"]
    if "bootstrap_servers" not in settings.kafka.model_fields_set and isinstance(found.get("bootstrap_servers"), str):
        settings.kafka.bootstrap_servers = found["bootstrap_servers"]
    return settings
