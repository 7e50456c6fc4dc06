"""Hostile text in the APIs' text fields is stored and shown verbatim, never run as SQL, a template or a command.

An operator's note, an edit's title and reason, an assignment's note, a task's done note, an incident's
title from the detector, a silence's comment and a maintenance window's name carry SQL, Jinja, shell
and HTML/JS; each comes back byte for byte from the
API that stores it and from the reporter's read API (through the events the coordinator emits), and the
tables the SQL names are still there.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from services.coordinator import api as coordinator_api
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.coordinator.tasks_api import tasks_router
from services.detector import suppression_api
from services.reporter import api as reporter_api
from services.reporter.handlers import handle as reporter_handle
from shared import identity
from shared.consumer import HandlerContext, Inbound, write_context
from shared.events import IncidentDetected
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import serve_app
from tests.integration.test_merge import outbox_events

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

HOSTILE = [
    "'; DROP TABLE reporter_timeline; -- \" OR 1=1",
    "{{ 7*7 }} {% for x in range(3) %}{{x}}{% endfor %} ${7*7} #{7*7} %s %(name)s {0}",
    "$(touch /tmp/vigil-hostile) `id` ; rm -rf ~ | cat /etc/passwd && echo $HOME > x",
    '<script>alert("x")</script><img src=x onerror=alert(1)> &amp; &lt;b&gt;',
    "\u202egnp.exe \\N \\\\ \r\n\t tabs, ünïcödé, 🚨",
]
INCIDENT = "inc-hostile"


async def test_hostile_text_is_stored_and_shown_verbatim(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    coordinator = Coordinator(load_oncall())
    detected = IncidentDetected(
        source="/vigil/detector", subject=INCIDENT, data=snapshot(title="detector: " + HOSTILE[0])
    )
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="coordinator", names=names)
        await coordinator.on_detected(ctx, detected)
        await write_context(conn, ctx)
        token = (await identity.create_token(conn, name="ops", role="admin", created_by="test")).text
    headers = {"Authorization": f"Bearer {token}"}

    def runtime(service: str) -> Runtime:
        return Runtime(service=service, settings=secured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]

    coordinator_app = build_app(
        runtime("coordinator"),
        [
            *coordinator_api.routers(runtime("coordinator"), coordinator),
            tasks_router(runtime("coordinator"), coordinator.templates, on_done=coordinator.on_task_done),
        ],
    )
    task_ids = [
        row["id"]
        for row in await pool.fetch(
            "SELECT id FROM coordinator_tasks WHERE incident_id = $1 AND state = 'open' ORDER BY position", INCIDENT
        )
    ]
    assert len(task_ids) >= len(HOSTILE), "the incident's runbook has a task for each text"
    detector_app = build_app(runtime("detector"), [suppression_api.router(runtime("detector"))])
    async with (
        serve_app(coordinator_app, name="coordinator-api") as coordinator_url,
        serve_app(detector_app, name="detector-api") as detector_url,
        httpx.AsyncClient(headers=headers) as client,
    ):
        for n, text in enumerate(HOSTILE):
            noted = await client.post(
                f"{coordinator_url}/api/v1/incidents/{INCIDENT}/notes", json={"actor": "x", "note": text}
            )
            assert noted.status_code == 200, noted.text
            edited = await client.post(
                f"{coordinator_url}/api/v1/incidents/{INCIDENT}/edit",
                json={"actor": "x", "reason": text, "title": text},
            )
            assert edited.status_code == 200, edited.text
            assert edited.json()["title"] == text
            assigned = await client.post(
                f"{coordinator_url}/api/v1/incidents/{INCIDENT}/assign",
                json={"actor": "x", "person": f"scribe-{n}@example.com", "role": "scribe", "note": text},
            )
            assert assigned.status_code == 200, assigned.text
            done = await client.post(
                f"{coordinator_url}/api/v1/tasks/{task_ids.pop(0)}/done", json={"actor": "x", "note": text}
            )
            assert done.status_code == 200, done.text
            assert done.json()["note"] == text

            silenced = await client.post(
                f"{detector_url}/api/v1/silences",
                json={"matchers": ["host=web-01"], "duration_s": 600, "comment": text},
            )
            assert silenced.status_code == 201, silenced.text
            shown = await client.get(f"{detector_url}/api/v1/silences/{silenced.json()['id']}")
            assert shown.json()["comment"] == text
            window = await client.post(
                f"{detector_url}/api/v1/maintenance-windows",
                json={
                    "name": text[:200],
                    "matchers": ["host=db-01"],
                    "starts_at": "2030-01-01T00:00:00Z",
                    "ends_at": "2030-01-01T01:00:00Z",
                    "comment": text,
                },
            )
            assert window.status_code == 201, window.text
            assert (window.json()["name"], window.json()["comment"]) == (text[:200], text)

    # The reporter reads what the coordinator said, as its consumer would, and shows it.
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        events = [detected, *await outbox_events(pool, "coordinator")]
        await reporter_handle(ctx, [Inbound[Any](event_id=e.id, item=e, record=None) for e in events])
        await write_context(conn, ctx)
    reporter_app = build_app(runtime("reporter"), reporter_api.routers(runtime("reporter")))
    async with serve_app(reporter_app, name="reporter-api") as base, httpx.AsyncClient(headers=headers) as client:
        incident = (await client.get(f"{base}/api/v1/incidents/{INCIDENT}")).json()
        timeline = (await client.get(f"{base}/api/v1/incidents/{INCIDENT}/timeline")).json()
    assert incident["title"] == HOSTILE[-1]
    said = "\n".join(f"{entry['summary']}" for entry in timeline)
    for text in HOSTILE:
        # A note, an edit's reason, an assignment's note and a task's note: each line holds the text whole.
        assert said.count(text) >= 4, f"{text!r} is not on the timeline verbatim wherever it was given"
    # The SQL was text: the table it names is still there, with the entries.
    assert await pool.fetchval("SELECT count(*) FROM reporter_timeline") >= len(HOSTILE)
