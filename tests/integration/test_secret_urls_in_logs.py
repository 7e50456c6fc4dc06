"""A chat webhook's URL is its secret: calling it, as a notification does, logs its host, never the URL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from shared.effects.builtin import http_request
from shared.effects.domain import Effect
from shared.logs import configure_logging

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SECRET = "T000/B000/planted-webhook-secret-3c9d"


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads Vigil's logs
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/services/{SECRET}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def vigil_logging() -> Iterator[None]:
    """Vigil's own logging set up, as a service does; pytest's put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in loggers.items():
        logging.getLogger(name).setLevel(was)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_a_webhook_called_leaves_its_secret_url_out_of_the_logs(
    receiver: str, vigil_logging: None, capsys: pytest.CaptureFixture[str], level: str
) -> None:
    configure_logging(level, "json", service="coordinator")
    kind = http_request(name="notify.slack", allowed_urls={receiver})
    now = datetime.now(UTC)
    effect = Effect(
        id=1,
        service="coordinator",
        kind="notify.slack",
        key="INC-1:escalation:0:slack:alice",
        subject="INC-1",
        target="127.0.0.1",
        payload={"method": "POST", "url": receiver, "body": {"text": "paged"}, "headers": {}},
        attempts=1,
        not_before=now,
        created_at=now,
    )
    logging.getLogger("shared.effects").info("calling the webhook")  # the capture works: Vigil's line is there
    result = await kind.execute(effect)
    assert result["status_code"] == 200, result
    written = capsys.readouterr().err
    assert "calling the webhook" in written
    assert SECRET not in written
