"""The web view in a real browser (headless Chromium, driven by Playwright): a person signs in with a
token, opens the incident list, goes to an incident the real detector, coordinator and reporter
handled, sees it as they should, and opens its post-mortem. Leaves a screenshot of the incident page
in ``test-artifacts/web-view-incident.png``."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.reporter import api as reporter_api
from shared import identity
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, TopicNames
from tests.factories import alert_dict
from tests.helpers import eventually, produce, serve_app
from tests.integration.test_reporter_pipeline import pipeline

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TITLE = 'Reverse shell <script>document.title="owned"</script> on db-01'

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(120),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"),
]


async def test_a_person_signs_in_finds_the_incident_and_reads_its_post_mortem(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    from playwright.async_api import async_playwright, expect

    first = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    alerts = [
        alert_dict(source="falco", host="db-01", title=TITLE, severity="critical", time=t.isoformat())
        for t in (first, first + timedelta(seconds=30))
    ]
    await produce(settings, names(ALERTS_RAW), [(None, json.dumps(a).encode(), []) for a in alerts])
    async with pipeline(settings, pool, names) as coordinator_url:
        incident_id = await eventually(
            lambda: pool.fetchval("SELECT id FROM reporter_incidents WHERE commander IS NOT NULL"), timeout=60
        )
        async with httpx.AsyncClient(base_url=coordinator_url) as http:
            acked = await http.post(f"/api/v1/incidents/{incident_id}/ack", json={"actor": "alice"})
            assert acked.status_code == 200, acked.text
        await eventually(
            lambda: pool.fetchval("SELECT state = 'acknowledged' FROM reporter_incidents WHERE id = $1", incident_id),
            timeout=60,
        )

    async with pool.acquire() as conn:
        token = (await identity.create_token(conn, name="dana@example.com", role="viewer", created_by="test")).text
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    runtime = Runtime(service="reporter", settings=secured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    async with (
        serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-web") as url,
        async_playwright() as p,
    ):
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: dialogs.append(dialog.message))
            page.set_default_timeout(15_000)

            # Not signed in: the view sends the person to sign in, then back to the list.
            await page.goto(f"{url}/ui")
            await expect(page.get_by_role("heading", name="Sign in to Vigil")).to_be_visible()
            await page.get_by_label("API token").fill(token)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Incidents")).to_be_visible()
            assert page.url == f"{url}/ui/incidents"
            await expect(page.locator("header")).to_contain_text("dana@example.com · viewer")

            # The incident in the list, its title as written, then its page.
            row = page.locator("table.incidents tbody tr").filter(has_text=incident_id)
            await expect(row).to_have_count(1)
            await expect(row.locator(".sev")).to_have_text("SEV1")
            await row.get_by_role("link", name=TITLE).click()
            await expect(page.locator("h1#title")).to_have_text(TITLE)
            assert page.url == f"{url}/ui/incidents/{incident_id}"

            summary = page.locator("#summary")
            await expect(summary.locator(".sev")).to_have_text("SEV1")
            await expect(summary).to_contain_text("system compromise")
            await expect(page.locator(".summary-line .state")).to_have_text("acknowledged")
            timeline = page.locator("#timeline")
            await expect(timeline.locator("svg")).to_be_visible()
            await expect(timeline.locator("svg")).to_contain_text("acknowledged +")
            await expect(timeline.locator("tbody tr").filter(has_text="alice")).not_to_have_count(0)
            await expect(timeline).to_contain_text("state detected -> acknowledged")
            await expect(timeline).to_contain_text(f"detected: {TITLE}")
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "web-view-incident.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the incident page: {shot}")

            # Its post-mortem, from the link a person clicks.
            await page.get_by_role("link", name="Post-mortem (HTML)").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text(f"Post-mortem: {TITLE}")
            await expect(page.locator("#timeline")).to_be_visible()

            # Nothing the alert said ran as script, anywhere.
            assert await page.title() == f"Post-mortem: {TITLE}"
            assert dialogs == []
        finally:
            await browser.close()
