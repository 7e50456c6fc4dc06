"""The reporter's web view against the real Postgres: the list and its filters and paging, one incident
with everything known of it, its reports, hostile text shown as text, and who may see the pages
(sign-in with a token, the session cookie, refusals)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from services.reporter import api as reporter_api
from services.reporter import handlers as reporter
from shared import identity
from shared.auth import SESSION_COOKIE
from shared.consumer import HandlerContext, Inbound
from shared.events import (
    Analysis,
    AttackTechnique,
    EventBase,
    Hypothesis,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEscalated,
    IncidentState,
    IncidentStateChanged,
    IncidentType,
    Indicator,
    LeaseChange,
    PlannedAction,
    ResponseLeaseChanged,
    ResponsePlan,
    ResponsePlanned,
    ResponseStepChanged,
    ResponseStepValidated,
    Risk,
    RiskFactor,
    RootCause,
    Severity,
    StateChange,
    StepChange,
    StepValidation,
)
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import COMMANDS, TopicNames
from tests.factories import T0, snapshot
from tests.helpers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

HOSTILE = '<script>alert("owned")</script> & <img src=x onerror=alert(1)> "quoted"'
RICH = "inc-rich"


def _detected(incident_id: str, n: int, *, title: str, severity: Severity, kind: IncidentType) -> IncidentDetected:
    host = f"web-{n:02d}"
    return IncidentDetected(
        source="/vigil/detector",
        subject=incident_id,
        time=T0 + timedelta(days=n, seconds=20),
        data=snapshot(
            title=title,
            severity=severity,
            type=kind,
            first_seen=T0 + timedelta(days=n),
            last_seen=T0 + timedelta(days=n),
            hosts=[host],
            new_alerts=[
                {
                    "key": f"falco:{n}",
                    "source": "falco",
                    "title": title if incident_id == "inc-hostile" else f"alert {n}",
                    "severity": "high",
                    "time": T0 + timedelta(days=n),
                    "host": host,
                    "rule": "rule-falco",
                }
            ],
        ),
    )


def _moved(incident_id: str, n: int, to: IncidentState, *, after_s: int) -> IncidentStateChanged:
    return IncidentStateChanged(
        source="/vigil/coordinator",
        subject=incident_id,
        time=T0 + timedelta(days=n, seconds=20 + after_s),
        data=StateChange(
            from_state=IncidentState.DETECTED,
            to_state=to,
            actor="carol",
            resolution="fixed" if to == IncidentState.RESOLVED else None,
        ),
    )


def _rich_story() -> list[EventBase]:
    """One incident with everything: analysis (risk, ATT&CK, root cause, indicators), a plan, a step that ran
    and was validated, a lease on its block, an escalation and an acknowledgement."""
    n = 9
    at = T0 + timedelta(days=n)
    step = "inc-rich:block-ip:203.0.113.45"
    return [
        _detected(
            RICH, n, title="Reverse shell on bastion-01", severity=Severity.SEV1, kind=IncidentType.SYSTEM_COMPROMISE
        ),
        IncidentAnalyzed(
            source="/vigil/analyzer",
            subject=RICH,
            time=at + timedelta(seconds=30),
            data=Analysis(
                type=IncidentType.SYSTEM_COMPROMISE,
                severity=Severity.SEV1,
                title="Reverse shell on bastion-01",
                indicators=[Indicator(kind="ipv4", value="203.0.113.45", verdict="malicious", feeds=["abuse-ch"])],
                affected_hosts=["bastion-01"],
                affected_users=["deploy"],
                alert_count=1,
                summary="interactive shell to 203.0.113.45 from a container",
                techniques=[
                    AttackTechnique(
                        id="T1059.004",
                        name="Command and Scripting Interpreter: Unix Shell",
                        tactics=["TA0002"],
                        alerts=1,
                        first_seen=at,
                        first_alert="falco:9",
                    )
                ],
                attack_version="17.1",
                root_cause=RootCause(
                    entry_vector=Hypothesis(
                        statement="exposed admin service on bastion-01", confidence=60, evidence=["falco:9"]
                    )
                ),
                risk=Risk(
                    score=87,
                    level="critical",
                    factors=[RiskFactor(factor="intel", points=25, max_points=25, reason="203.0.113.45 is listed")],
                ),
            ),
        ),
        ResponsePlanned(
            source="/vigil/responder",
            subject=RICH,
            time=at + timedelta(seconds=31),
            data=ResponsePlan(
                plan_id="plan-1",
                playbook="compromise",
                playbook_title="Contain a compromised host",
                incident_type=IncidentType.SYSTEM_COMPROMISE,
                severity=Severity.SEV1,
                actions=[
                    PlannedAction(
                        id="block-ip",
                        name="Block the attacker's address",
                        phase="containment",
                        description="block",
                        destructive=False,
                        requires_approval=False,
                        status="planned",
                    )
                ],
            ),
        ),
        ResponseStepChanged(
            source="/vigil/responder",
            subject=RICH,
            time=at + timedelta(seconds=40),
            data=StepChange(
                step_id=step,
                plan_id="plan-1",
                step="block-ip",
                phase="containment",
                name="Block the attacker's address",
                item="203.0.113.45",
                connector="blocklist",
                action="block_ip",
                from_state="running",
                state="succeeded",
                actor="responder",
                on_failure="continue",
            ),
        ),
        ResponseStepValidated(
            source="/vigil/responder",
            subject=RICH,
            time=at + timedelta(seconds=45),
            data=StepValidation(
                step_id=step,
                step="block-ip",
                name="Block the attacker's address",
                connector="blocklist",
                action="block_ip",
                outcome="validated",
                check="203.0.113.45 in the served ip list",
            ),
        ),
        ResponseLeaseChanged(
            source="/vigil/responder",
            subject=RICH,
            time=at + timedelta(seconds=46),
            data=LeaseChange(
                step_id=step,
                name="Block the attacker's address",
                target_kind="ip",
                target="203.0.113.45",
                action="block_ip",
                state="active",
                change="created",
                actor="responder",
                due_at=at + timedelta(hours=24),
                duration_s=86400,
            ),
        ),
        IncidentEscalated.model_validate(
            {
                "source": "/vigil/coordinator",
                "subject": RICH,
                "time": at + timedelta(seconds=50),
                "data": {
                    "commander": "carol",
                    "channel": "page",
                    "reason": "on call",
                    "title": "Reverse shell on bastion-01",
                    "type": "system_compromise",
                    "severity": "SEV1",
                    "classification_reason": "",
                    "severity_reason": "",
                    "alert_count": 1,
                    "hosts": ["bastion-01"],
                    "users": [],
                    "first_seen": at.isoformat(),
                    "last_seen": at.isoformat(),
                    "alerts": [],
                },
            }
        ),
        _moved(RICH, n, IncidentState.ACKNOWLEDGED, after_s=60),
    ]


def _story() -> list[EventBase]:
    """Eight incidents a day apart (SEV1..SEV4 in turn, breaches and leaks, two resolved), one titled
    with hostile markup, and the rich one."""
    events: list[EventBase] = []
    for n in range(8):
        incident_id = "inc-hostile" if n == 3 else f"inc-{n}"
        title = HOSTILE if n == 3 else ("Ransomware note on file server" if n == 5 else f"Port scan number {n}")
        kind = IncidentType.DATA_LEAK if n % 2 else IncidentType.SECURITY_BREACH
        events.append(_detected(incident_id, n, title=title, severity=list(Severity)[n % 4], kind=kind))
        if n in (2, 6):
            events.append(_moved(incident_id, n, IncidentState.RESOLVED, after_s=600))
    return events + _rich_story()


@pytest.fixture
async def seeded(pool: asyncpg.Pool, names: TopicNames) -> None:
    """The incidents through the reporter's own handlers."""
    events = _story()
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter.handle(ctx, [Inbound(e.id, e, None) for e in events])


@pytest.fixture
async def tokens(pool: asyncpg.Pool) -> dict[str, str]:
    async with pool.acquire() as conn:
        return {
            role: (await identity.create_token(conn, name=f"{role}@example.com", role=role, created_by="test")).text
            for role in ("viewer", "ingest")
        }


@pytest.fixture
async def secured(settings: VigilSettings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """The reporter's app as it serves, with authentication on; yields its URL."""
    runtime = Runtime(
        service="reporter",
        settings=settings.model_copy(update={"allow_unauthenticated": False}),
        pool=pool,
        producer=None,  # type: ignore[arg-type]
        names=TopicNames(),
    )
    async with serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-web") as url:
        yield url


@pytest.fixture
async def browser(secured: str, tokens: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A viewer's client, signed in through the form as a person does, keeping the cookie."""
    async with httpx.AsyncClient(base_url=secured) as http:
        answer = await http.post("/ui/login", data={"token": tokens["viewer"], "next": "/ui/incidents"})
        assert answer.status_code == 303, answer.text
        yield http


def _titles(page: str) -> list[str]:
    """The incident titles a list page links to, in order, as their HTML text."""
    return (
        re.findall(r'<a href="/ui/incidents/[^"]+">([^<]*)</a>', page.split("<table", 1)[1]) if "<table" in page else []
    )


async def _listed(http: httpx.AsyncClient, **params: str | list[str]) -> list[str]:
    answer = await http.get("/ui/incidents", params=params)
    assert answer.status_code == 200, answer.text
    return _titles(answer.text)


async def test_the_list_shows_incidents_newest_first_and_each_filter_narrows_it(
    seeded: None, browser: httpx.AsyncClient
) -> None:
    everything = await _listed(browser)
    assert everything[0] == "Reverse shell on bastion-01"
    assert len(everything) == 9
    assert await _listed(browser, severity="SEV1") == [
        "Reverse shell on bastion-01",
        "Port scan number 4",
        "Port scan number 0",
    ]
    assert await _listed(browser, severity=["SEV3", "SEV4"], type="data_leak") == [
        "Port scan number 7",
        "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt; &#34;quoted&#34;",
    ]
    assert await _listed(browser, state="resolved") == ["Port scan number 6", "Port scan number 2"]
    assert await _listed(browser, state="acknowledged") == ["Reverse shell on bastion-01"]
    assert await _listed(browser, q="ransomware") == ["Ransomware note on file server"]
    # The dates of the form: from the first day, to the third included.
    days = [(T0 + timedelta(days=d)).date().isoformat() for d in (1, 3)]
    assert await _listed(browser, since=days[0], until=days[1], order="asc") == [
        "Port scan number 1",
        "Port scan number 2",
        "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt; &#34;quoted&#34;",
    ]
    # Nothing matches: the page says so.
    answer = await browser.get("/ui/incidents", params={"q": "no such words anywhere"})
    assert "No incident matches these filters" in answer.text
    # A value that cannot be used is said, never an error page.
    answer = await browser.get("/ui/incidents", params={"severity": "SEV9", "since": "yesterday"})
    assert answer.status_code == 200
    assert "there is no severity &#39;SEV9&#39;" in answer.text
    assert "since &#39;yesterday&#39; is neither a date" in answer.text
    assert len(_titles(answer.text)) == 9


async def test_paging_follows_the_cursor_with_the_filters_kept(seeded: None, browser: httpx.AsyncClient) -> None:
    seen: list[str] = []
    params: dict[str, str | list[str]] = {"type": "security_breach", "limit": "2"}
    for _ in range(5):
        answer = await browser.get("/ui/incidents", params=params)
        assert answer.status_code == 200
        seen += _titles(answer.text)
        following = re.search(r'href="/ui/incidents\?([^"]+)" rel="next"', answer.text)
        if following is None:
            break
        query = parse_qs(following.group(1).replace("&amp;", "&"))
        assert query["type"] == ["security_breach"] and query["limit"] == ["2"]
        params = {name: values[0] for name, values in query.items()}
    assert seen == ["Port scan number 6", "Port scan number 4", "Port scan number 2", "Port scan number 0"]
    # A cursor of another sort is refused in words, and the first page shown.
    answer = await browser.get("/ui/incidents", params={**params, "sort": "severity"})
    assert "the cursor belongs to sort=created_at" in answer.text


async def test_the_incident_page_shows_everything_known_and_links_its_reports(
    seeded: None, browser: httpx.AsyncClient
) -> None:
    answer = await browser.get(f"/ui/incidents/{RICH}")
    assert answer.status_code == 200, answer.text
    page = answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "script-src" not in answer.headers["content-security-policy"]  # default-src 'none': no script at all
    assert answer.headers["cache-control"] == "no-store"
    for shown in (
        '<h1 id="title">Reverse shell on bastion-01</h1>',
        '<span class="sev sev-SEV1">SEV1</span>',
        "system compromise",
        "<td>carol</td>",
        "acknowledged",
        # Analysis: risk, ATT&CK, root cause, indicators.
        "<strong>87</strong>/100 · critical",
        "<code>T1059.004</code> Command and Scripting Interpreter: Unix Shell",
        "exposed admin service on bastion-01",
        "<code>203.0.113.45</code>",
        # The response: the step, whether it worked, its lease.
        "Response: Contain a compromised host",
        "yes, validated",
        "2026-12-04 09:00:00",  # the lease ends a day after the first alert
        # The timeline, with its chart.
        "interactive shell to 203.0.113.45",
        "state detected -&gt; acknowledged",
    ):
        assert shown in page, shown
    timeline = page.split('id="timeline"', 1)[1].split("</section>", 1)[0]
    assert timeline.count("<svg") == 1 and "acknowledged +" in timeline
    assert timeline.count('<td class="time">') >= 7

    links = re.findall(r'href="(/ui/incidents/inc-rich/[^"]+)"', page)
    assert links == [f"/ui/incidents/{RICH}/{name}" for name in (
        "postmortem.html", "postmortem.md", "ocsf.json", "timeline.csv", "actions.csv"
    )]  # fmt: skip
    html, md, ocsf, timeline_csv, actions_csv = [await browser.get(link) for link in links]
    assert html.status_code == 200 and "<h1>Post-mortem: Reverse shell on bastion-01</h1>" in html.text
    assert md.headers["content-type"].startswith("text/plain") and "# Post-mortem: Reverse shell" in md.text
    assert ocsf.json()["class_uid"] == 2005
    rows = list(csv.DictReader(io.StringIO(timeline_csv.text)))
    assert rows[0]["incident_id"] == RICH and "detected" in rows[0]["summary"]
    assert "attachment" in timeline_csv.headers["content-disposition"]
    [action] = list(csv.DictReader(io.StringIO(actions_csv.text)))
    assert (action["incident_id"], action["state"], action["validated"]) == (RICH, "succeeded", "True")

    missing = await browser.get("/ui/incidents/inc-nowhere")
    assert missing.status_code == 404 and "There is no incident inc-nowhere." in missing.text


async def test_hostile_text_shows_verbatim_and_never_as_markup(seeded: None, browser: httpx.AsyncClient) -> None:
    escaped = "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;"
    for path in ("/ui/incidents", "/ui/incidents/inc-hostile", "/ui/incidents/inc-hostile/postmortem.html"):
        page = (await browser.get(path)).text
        assert escaped in page, path
        assert "<script" not in page and "<img" not in page, path
    # Typed into the search and paging fields, it comes back as text too.
    page = (await browser.get("/ui/incidents", params={"q": HOSTILE[:60], "sort": '"><b>x'})).text
    assert "<script" not in page and "<b>x" not in page


async def test_reports_page_compliance_and_exports(seeded: None, browser: httpx.AsyncClient) -> None:
    since, until = (T0 + timedelta(days=5)).date().isoformat(), (T0 + timedelta(days=9)).date().isoformat()
    page = (await browser.get("/ui/reports", params={"since": since, "until": until})).text
    period = f"since={since}&amp;until={until}"
    assert f'href="/ui/reports/compliance.html?{period}"' in page
    assert f'href="/ui/export/incidents.csv?{period}"' in page
    report = await browser.get("/ui/reports/compliance.html", params={"since": since, "until": until})
    assert report.status_code == 200 and "4 incident(s) created in the period." in report.text
    exported = await browser.get("/ui/export/incidents.csv", params={"since": since, "until": until})
    ids = [row["id"] for row in csv.DictReader(io.StringIO(exported.text))]
    assert ids == ["inc-5", "inc-6", "inc-7", RICH]
    bad = await browser.get("/ui/reports/compliance.md", params={"since": "soon"})
    assert bad.status_code == 400 and "from &#39;soon&#39; is neither a date" in bad.text


async def test_the_last_day_there_is_ends_a_period_without_an_error_page(
    seeded: None, browser: httpx.AsyncClient
) -> None:
    since = (T0 + timedelta(days=5)).date().isoformat()
    for path in ("/ui/incidents", "/ui/reports", "/ui/reports/compliance.html", "/ui/export/incidents.csv"):
        answer = await browser.get(path, params={"since": since, "until": "9999-12-31"})
        assert answer.status_code == 200, (path, answer.text[:300])
    listed = (await browser.get("/ui/incidents", params={"until": "9999-12-31"})).text
    assert "neither a date" not in listed and RICH in listed


async def test_pages_send_a_person_to_sign_in_and_keep_them_signed_in_with_the_cookie(
    seeded: None, secured: str, tokens: dict[str, str], pool: asyncpg.Pool
) -> None:
    async with httpx.AsyncClient(base_url=secured) as http:
        for path in ("/", "/ui", "/ui/"):
            answer = await http.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, "/ui/incidents")
        # Not signed in: to the sign-in page, which comes back here afterwards.
        answer = await http.get(f"/ui/incidents/{RICH}", params={"x": "1"})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fincidents%2Finc-rich%3Fx%3D1"
        form = await http.get(answer.headers["location"])
        assert 'name="next" value="/ui/incidents/inc-rich?x=1"' in form.text

        for token, status, said in (
            ("", 400, "Paste an API token."),
            ("vigil_notarealtoken_" + "x" * 40, 401, "That token is unknown, revoked or expired."),
            (tokens["ingest"], 403, "ingest@example.com (ingest) may not read incidents"),
        ):
            answer = await http.post("/ui/login", data={"token": token, "next": "/ui/incidents"})
            assert (answer.status_code, said in answer.text) == (status, True), answer.text
            assert SESSION_COOKIE not in http.cookies

        answer = await http.post("/ui/login", data={"token": tokens["viewer"], "next": f"/ui/incidents/{RICH}?x=1"})
        assert (answer.status_code, answer.headers["location"]) == (303, f"/ui/incidents/{RICH}?x=1")
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}={tokens['viewer']};")
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age=28800"):
            assert attribute.lower() in cookie.lower(), cookie
        assert "secure" not in cookie.lower()  # served over plain http here
        page = await http.get(f"/ui/incidents/{RICH}")
        assert page.status_code == 200 and "viewer@example.com · viewer" in page.text

        # Signing out forgets the token: the pages send to sign in again.
        answer = await http.post("/ui/logout")
        assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login")
        assert SESSION_COOKIE not in http.cookies
        assert (await http.get("/ui/incidents")).status_code == 303

        # A revoked token's cookie: sent to sign in, and the cookie dropped.
        http.cookies.set(SESSION_COOKIE, tokens["viewer"], domain="127.0.0.1", path="/ui")
        assert (await http.get("/ui/incidents")).status_code == 200
        async with pool.acquire() as conn:
            assert await identity.revoke_token(conn, tokens["viewer"].split("_")[1], revoked_by="test")
        answer = await http.get("/ui/incidents")
        assert answer.status_code == 303 and f'{SESSION_COOKIE}=""' in answer.headers["set-cookie"]

        # Never on to another site after signing in.
        for elsewhere in ("https://evil.example/", "//evil.example/ui/", "/\\evil.example", "/api/v1/incidents"):
            answer = await http.get("/ui/login", params={"next": elsewhere})
            assert 'name="next" value="/ui/incidents"' in answer.text, elsewhere


async def test_a_bearer_header_works_and_a_role_without_the_permission_gets_a_plain_page(
    seeded: None, secured: str, tokens: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=secured) as http:
        viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
        ingest = {"Authorization": f"Bearer {tokens['ingest']}"}
        assert (await http.get(f"/ui/incidents/{RICH}", headers=viewer)).status_code == 200
        for path in ("/ui/incidents", f"/ui/incidents/{RICH}", f"/ui/incidents/{RICH}/postmortem.html", "/ui/reports"):
            refused = await http.get(path, headers=ingest)
            assert refused.status_code == 403, path
            assert refused.headers["content-type"].startswith("text/html")
            assert "<h1>Not allowed</h1>" in refused.text
            assert "that takes the role viewer or above" in refused.text
            assert "Reverse shell" not in refused.text


async def test_without_authentication_required_pages_show_as_anonymous(
    seeded: None, settings: VigilSettings, pool: asyncpg.Pool
) -> None:
    assert settings.allow_unauthenticated
    runtime = Runtime(service="reporter", settings=settings, pool=pool, producer=None, names=TopicNames())  # type: ignore[arg-type]
    async with (
        serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-web") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        page = await http.get("/ui/incidents")
        assert page.status_code == 200 and "anonymous · admin" in page.text
        assert "Sign out" not in page.text
        # A token given is still checked, as the API does.
        answer = await http.get("/ui/incidents", headers={"Authorization": "Bearer vigil_notarealtoken_" + "x" * 40})
        assert answer.status_code == 303
        assert urlsplit(answer.headers["location"]).path == "/ui/login"


async def _commands_sent(pool: asyncpg.Pool) -> list[EventBase]:
    from shared import cloudevents

    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'reporter' ORDER BY id")
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


async def test_a_commander_acts_from_the_page_and_the_command_goes_out_in_their_name(
    seeded: None, secured: str, tokens: dict[str, str], pool: asyncpg.Pool, names: TopicNames
) -> None:
    waiting = ResponseStepChanged(
        source="/vigil/responder",
        subject="inc-0",
        data=StepChange(
            step_id="inc-0:block-ip:ab12", plan_id="plan-0", step="block-ip", phase="containment", name="Block",
            item="203.0.113.8", connector="blocklist", action="block", from_state="planned",
            state="awaiting_approval", actor="policy", on_failure="continue",
        ),
    )  # fmt: skip
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter.handle(ctx, [Inbound(waiting.id, waiting, None)])
        commander = await identity.create_token(conn, name="cora@example.com", role="commander", created_by="test")
        responder = await identity.create_token(conn, name="rui@example.com", role="responder", created_by="test")
    here = {"Origin": secured}
    page = "/ui/incidents/inc-0"
    async with httpx.AsyncClient(base_url=secured) as viewer:
        await viewer.post("/ui/login", data={"token": tokens["viewer"], "next": page})
        shown = (await viewer.get(page)).text
        assert 'id="act"' not in shown and "Approve</button>" not in shown
        refused = await viewer.post(f"{page}/commands", data={"command": "acknowledge"}, headers=here)
        assert refused.status_code == 403
        assert "viewer@example.com (viewer) may not acknowledge: that takes the role responder" in refused.text

    async with httpx.AsyncClient(base_url=secured) as http:
        await http.post("/ui/login", data={"token": commander.text, "next": page})
        shown = (await http.get(page)).text
        assert ">Acknowledge</button>" in shown and ">Resolve</button>" in shown and ">Approve</button>" in shown
        sent = await http.post(f"{page}/commands", data={"command": "acknowledge"}, headers=here)
        assert (sent.status_code, sent.headers["location"]) == (303, "/ui/incidents/inc-0?sent=acknowledge#act")
        assert "Sent: acknowledge." in (await http.get(sent.headers["location"])).text
        lesson = {"command": "note", "note": "the page reached cora fast", "kind": "went_well"}
        assert (await http.post(f"{page}/commands", data=lesson, headers=here)).status_code == 303
        step = {"command": "approve", "step_id": "inc-0:block-ip:ab12"}
        assert (await http.post(f"{page}/commands", data=step, headers=here)).status_code == 303
        for form, said in (
            ({"command": "deny", "step_id": "inc-0:block-ip:ab12"}, "a denial needs a reason"),
            ({"command": "approve", "step_id": "inc-1:block-ip:ab12"}, "is no step of incident inc-0"),
            ({"command": "note", "note": " "}, "write the note first"),
            ({"command": "reboot"}, "; one of acknowledge, resolve, note, approve, deny"),
        ):
            bad = await http.post(f"{page}/commands", data=form, headers=here)
            assert (bad.status_code, said in bad.text) == (400, True), bad.text
        # A form another site's page posts is refused, whatever cookie the browser would send.
        forged = await http.post(
            f"{page}/commands", data={"command": "acknowledge"}, headers={"Origin": "https://evil.example"}
        )
        assert forged.status_code == 403
        elsewhere = {"Referer": "https://evil.example/page"}
        assert (
            await http.post(f"{page}/commands", data={"command": "acknowledge"}, headers=elsewhere)
        ).status_code == 403
        assert (
            await http.post("/ui/incidents/inc-none/commands", data={"command": "acknowledge"}, headers=here)
        ).status_code == 404

    async with httpx.AsyncClient(base_url=secured) as http:
        await http.post("/ui/login", data={"token": responder.text, "next": page})
        shown = (await http.get(page)).text
        assert ">Acknowledge</button>" in shown and ">Resolve</button>" not in shown and "Approve</button>" not in shown
        resolve = {"command": "resolve", "resolution": "fixed"}
        assert (await http.post(f"{page}/commands", data=resolve, headers=here)).status_code == 403

    events = await _commands_sent(pool)
    assert [(e.type, e.subject, e.data.actor) for e in events] == [  # type: ignore[attr-defined]
        ("vigil.command.acknowledge.v1", "inc-0", "cora@example.com"),
        ("vigil.command.add_note.v1", "inc-0", "cora@example.com"),
        ("vigil.command.approve_step.v1", "inc-0", "cora@example.com"),
    ]
    assert events[1].data.lesson == "went_well"  # type: ignore[attr-defined]
    assert (events[2].data.step_id, events[2].data.role) == ("inc-0:block-ip:ab12", "commander")  # type: ignore[attr-defined]
    topics = await pool.fetch("SELECT topic FROM outbox WHERE service = 'reporter'")
    assert {r["topic"] for r in topics} == {TopicNames()(COMMANDS)}  # the app's names, as the fixture serves it
