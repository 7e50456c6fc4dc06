"""The reporter's read API: incidents (filtered, searched, paged), one incident with everything known
of it, its timeline and history, and the alert history.

Lists answer with a JSON array; where more follow, the ``X-Next-Cursor`` header holds the cursor of
the next page and ``Link`` its URL (``rel="next"``). The same reads, as pages for people, are the web
view's (``web.py``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse

from services.reporter import reports, repository, stix, stream_api, web
from services.reporter.aggregates import Dimension, IncidentTimes, false_positive_rates, summarize
from services.reporter.measures import MILESTONES, SlaTargets, breaches, durations, load_sla
from services.reporter.queries import (
    AlertFilter,
    BadCursor,
    IncidentFilter,
    IncidentSort,
    Order,
    SuppressedChoice,
    UtcTime,
    decode_cursor,
    encode_cursor,
)
from services.reporter.reports import ExportKind
from services.reporter.stream import WindowView
from shared.auth import require
from shared.events import IncidentState, IncidentType, Severity
from shared.service import Runtime

States = Annotated[list[IncidentState] | None, Query(description="Only these states (repeat the parameter).")]
Severities = Annotated[list[Severity] | None, Query(description="Only these severities.")]
Types = Annotated[list[IncidentType] | None, Query(description="Only these types.")]
Since = Annotated[UtcTime | None, Query(description="Created at or after (ISO 8601; UTC unless it says).")]
Until = Annotated[UtcTime | None, Query(description="Created before (ISO 8601; UTC unless it says).")]
Text = Annotated[
    str | None, Query(max_length=500, description="Full-text search: title, reasons, analysis, hosts, indicators.")
]
Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(max_length=1000, description="`X-Next-Cursor` of the previous page.")]
ReportFormat = Literal["md", "html"]
ExportFormat = Literal["csv", "json"]
MEDIA_TYPES = {"md": "text/markdown; charset=utf-8", "html": "text/html; charset=utf-8"}
# What the report and export routes answer, as their OpenAPI document says.
REPORT_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/markdown": {"schema": {"type": "string"}}, "text/html": {"schema": {"type": "string"}}}}
}
EXPORT_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}, "application/json": {}}}
}
AlertStatus = Annotated[Literal["firing", "resolved"] | None, Query()]
SuppressedAlerts = Annotated[
    SuppressedChoice,
    Query(
        description="The alerts held back from incidents (silenced, in a maintenance window, inhibited; no incident): "
        "`include`d with the others, `exclude`d, or `only` them."
    ),
]


def _page(request: Request, response: Response, sort: str, order: str, after: tuple[Any, str] | None) -> None:
    if after is None:
        return
    cursor = encode_cursor(sort, order, *after)
    response.headers["X-Next-Cursor"] = cursor
    response.headers["Link"] = f'<{request.url.include_query_params(cursor=cursor)}>; rel="next"'


def _after(cursor: str | None, *, sort: str, order: str) -> tuple[Any, str] | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor, sort=sort, order=order)
    except BadCursor as exc:
        raise HTTPException(400, detail=str(exc)) from exc


def routers(runtime: Runtime, stream: WindowView | None = None) -> list[APIRouter]:
    """The query API, and the stream aggregations' windows (``stream``: none when they do not run)."""
    sla = load_sla(runtime.settings.sla_file)  # a bad file stops the start, with its reason
    router = APIRouter(prefix="/api/v1", tags=["incidents"], dependencies=[require(runtime, "incidents.read")])

    @router.get("/incidents")
    async def list_incidents(
        request: Request,
        response: Response,
        state: States = None,
        severity: Severities = None,
        type: Types = None,
        since: Since = None,
        until: Until = None,
        commander: str | None = None,
        source: Annotated[str | None, Query(description="An alert source (suricata, falco, …).")] = None,
        service: Annotated[str | None, Query(description="A business service the analysis names.")] = None,
        asset: Annotated[str | None, Query(description="An affected host, in any case.")] = None,
        indicator: Annotated[
            str | None, Query(description="An indicator's value (an address, a hash, …), however written.")
        ] = None,
        q: Text = None,
        id_prefix: Annotated[
            str | None, Query(min_length=1, max_length=200, description="Ids starting so (`vigil`'s short ids).")
        ] = None,
        sort: IncidentSort = "created_at",
        order: Annotated[
            Order, Query(description="`desc`: newest, most severe (SEV1) or most alerts first; `asc` the reverse.")
        ] = "desc",
        cursor: Cursor = None,
        limit: Limit = 100,
    ) -> list[dict[str, Any]]:
        filters = IncidentFilter(
            states=tuple(s.value for s in state or ()),
            severities=tuple(s.value for s in severity or ()),
            types=tuple(t.value for t in type or ()),
            since=since,
            until=until,
            commander=commander,
            source=source,
            service=service,
            asset=asset,
            indicator=indicator,
            text=q,
            id_prefix=id_prefix,
        )
        after = _after(cursor, sort=sort, order=order)
        async with runtime.pool.acquire() as conn:
            incidents, next_after = await repository.list_incidents(
                conn, filters=filters, sort=sort, order=order, after=after, limit=limit
            )
        _page(request, response, sort, order, next_after)
        return incidents

    @router.get("/incidents/{incident_id}")
    async def get_incident(incident_id: str) -> dict[str, Any]:
        """One incident with its alerts, indicators, analysis, actions, timeline and response times."""
        async with runtime.pool.acquire() as conn:
            incident = await repository.get_incident(conn, incident_id=incident_id)
            if incident is None:
                raise HTTPException(404, detail=f"no incident {incident_id}")
            incident["alerts"] = await repository.list_alerts(conn, incident_id=incident_id)
            incident["actions"] = await repository.list_actions(conn, incident_id=incident_id)
            incident["timeline"] = await repository.list_timeline(conn, incident_id=incident_id)
            incident["merged"] = await repository.list_merged(conn, incident_id=incident_id)
        analysis = incident.get("analysis") or {}
        incident["indicators"] = analysis.get("indicators", [])
        incident["response_times"] = _response_times(incident, sla)
        return incident

    @router.get("/incidents/{incident_id}/related")
    async def get_related(
        incident_id: str,
        since: Annotated[
            str, Query(pattern=r"^\d{1,4}[hdw]$", description="How far back to look: 24h, 30d, 8w.")
        ] = "30d",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Hunt for the same activity elsewhere: the other incidents naming this one's indicators, hosts or
        users (each with what it shares, the most shared first), and the alerts about its hosts that
        silences, maintenance windows or inhibitions held back from every incident."""
        units = {"h": 3600, "d": 86400, "w": 7 * 86400}
        start = datetime.now(UTC) - timedelta(seconds=int(since[:-1]) * units[since[-1]])
        async with runtime.pool.acquire() as conn:
            found = await repository.related(conn, incident_id=incident_id, since=start, limit=limit)
        if found is None:
            raise HTTPException(404, detail=f"no incident {incident_id}")
        return found

    @router.get("/incidents/{incident_id}/timeline")
    async def get_timeline(incident_id: str) -> list[dict[str, Any]]:
        async with runtime.pool.acquire() as conn:
            if not await repository.incident_exists(conn, incident_id=incident_id):
                raise HTTPException(404, detail=f"no incident {incident_id}")
            return await repository.list_timeline(conn, incident_id=incident_id)

    @router.get("/incidents/{incident_id}/history")
    async def get_history(incident_id: str) -> list[dict[str, Any]]:
        """Every event kept of the incident, as it came: envelope and data."""
        async with runtime.pool.acquire() as conn:
            if not await repository.incident_exists(conn, incident_id=incident_id):
                raise HTTPException(404, detail=f"no incident {incident_id}")
            events = await repository.list_history(conn, incident_id=incident_id)
        return [
            {
                "id": e.id,
                "type": e.type,
                "source": e.source,
                "time": e.time,
                "correlationid": e.correlationid,
                "causationid": e.causationid,
                "data": e.data,
            }
            for e in events
        ]

    @router.get("/alerts", tags=["alerts"])
    async def list_alerts(
        request: Request,
        response: Response,
        incident: Annotated[str | None, Query(description="Only this incident's alerts.")] = None,
        source: str | None = None,
        status: AlertStatus = None,
        since: Since = None,
        until: Until = None,
        suppressed: SuppressedAlerts = "include",
        cursor: Cursor = None,
        limit: Limit = 100,
    ) -> list[dict[str, Any]]:
        """The alert history, newest first: each occurrence with its incident, repeats (duplicates) and end;
        and the alerts held back from incidents (`suppressed`, with `suppressed_by`: the silence, maintenance
        window or inhibition that held them back, its id, name and why)."""
        filters = AlertFilter(
            incident_id=incident, source=source, status=status, since=since, until=until, suppressed=suppressed
        )
        after = _after(cursor, sort="time", order="desc")
        async with runtime.pool.acquire() as conn:
            alerts, next_after = await repository.list_alert_history(conn, filters=filters, after=after, limit=limit)
        _page(request, response, "time", "desc", next_after)
        return alerts

    @router.get("/metrics/response", tags=["metrics"])
    async def response_metrics(
        by: Dimension = "severity",
        since: Since = None,
        until: Until = None,
    ) -> dict[str, Any]:
        """MTTD, MTTA, MTTC, MTTR, resolution and effectiveness rates, false positives and SLA breaches
        of the incidents created in a period, per severity, type, source or business service."""
        async with runtime.pool.acquire() as conn:
            incidents = await repository.list_incident_times(conn, since=since, until=until)
        return response_report(incidents, by=by, sla=sla, now=datetime.now(UTC))

    @router.get("/incidents/{incident_id}/report", tags=["reports"], response_class=Response, responses=REPORT_CONTENT)
    async def incident_report(incident_id: str, format: ReportFormat = "html") -> Response:
        """The incident's post-mortem: summary, impact, timeline and its chart, evidence, actions, response
        times against targets, and sections for the team to fill in."""
        async with runtime.pool.acquire() as conn:
            bundle = await repository.incident_bundle(conn, incident_id=incident_id)
        if bundle is None:
            raise HTTPException(404, detail=f"no incident {incident_id}")
        text = reports.postmortem(bundle, fmt=format, sla=sla, now=datetime.now(UTC))
        return Response(text, media_type=MEDIA_TYPES[format])

    @router.get("/incidents/{incident_id}/ocsf", tags=["reports"])
    async def incident_ocsf(incident_id: str) -> dict[str, Any]:
        """The incident as an OCSF Incident Finding (class 2005, OCSF 1.5.0)."""
        async with runtime.pool.acquire() as conn:
            bundle = await repository.incident_bundle(conn, incident_id=incident_id)
        if bundle is None:
            raise HTTPException(404, detail=f"no incident {incident_id}")
        return reports.ocsf_finding(bundle)

    @router.get(
        "/incidents/{incident_id}/stix",
        tags=["reports"],
        response_class=Response,
        responses={200: {"content": {stix.MEDIA_TYPE: {"schema": {"type": "object"}}}}},
    )
    async def incident_stix(
        incident_id: str,
        min_verdict: Annotated[
            stix.MinVerdict, Query(description="Share `malicious` indicators only, `suspicious` and worse, or `any`.")
        ] = "suspicious",
        tlp: Annotated[
            stix.TlpLevel, Query(description="The TLP 2.0 marking; write `amber+strict` as `amber%2Bstrict`.")
        ] = "amber",
    ) -> Response:
        """The incident's external indicators and ATT&CK techniques as a STIX 2.1 bundle, for sharing."""
        async with runtime.pool.acquire() as conn:
            incident = await repository.get_incident(conn, incident_id=incident_id)
        # Unknown as the other exports say it: no row, or one no incident event has titled yet.
        if incident is None or incident.get("title") is None:
            raise HTTPException(404, detail=f"no incident {incident_id}")
        bundle = stix.indicator_bundle(incident, min_verdict=min_verdict, tlp=tlp)
        return Response(json.dumps(bundle, indent=2), media_type=stix.MEDIA_TYPE)

    @router.get("/reports/compliance", tags=["reports"], response_class=Response, responses=REPORT_CONTENT)
    async def compliance_report(since: Since = None, until: Until = None, format: ReportFormat = "html") -> Response:
        """Incidents of a period by severity, type and state, response times against SLA, actions and who
        approved them, open follow-ups, and whether the audit chain verifies."""
        async with runtime.pool.acquire() as conn:
            data = await repository.compliance_data(conn, since=since, until=until)
        text = reports.compliance(data, fmt=format, sla=sla, now=datetime.now(UTC))
        return Response(text, media_type=MEDIA_TYPES[format])

    @router.get("/export/{kind}", tags=["reports"], response_class=Response, responses=EXPORT_CONTENT)
    async def export(
        kind: ExportKind, since: Since = None, until: Until = None, format: ExportFormat = "json"
    ) -> Response:
        """The incidents, actions or timeline lines of the incidents created in a period, as CSV or JSON."""
        batches = repository.export_batches(runtime.pool, kind=kind, since=since, until=until)
        chunks = reports.export_chunks(batches, kind=kind, fmt=format)
        return StreamingResponse(chunks, media_type="text/csv" if format == "csv" else "application/json")

    return [router, stream_api.router(runtime, stream), web.router(runtime, sla)]


def response_report(incidents: list[IncidentTimes], *, by: Dimension, sla: SlaTargets, now: datetime) -> dict[str, Any]:
    """The response metrics of some incidents, as the API and `vigil metrics --json` give them."""
    return {
        "by": by,
        "incidents": len(incidents),
        "groups": [g.as_dict() for g in summarize(incidents, by=by, sla=sla, now=now)],
        "false_positive_rates": {
            kind: [
                {kind: r.key, "resolved": r.resolved, "false_positives": r.false_positives, "rate": r.rate}
                for r in false_positive_rates(incidents, by=kind)
            ]
            for kind in ("source", "rule")
        },
    }


def _response_times(incident: dict[str, Any], sla: SlaTargets) -> dict[str, Any]:
    """Milestones, each time-to-X in seconds, and the SLA targets missed."""
    milestones: dict[str, datetime | None] = {name: incident.get(f"{name}_at") for name in MILESTONES}
    return {
        "milestones": milestones,
        "durations": durations(milestones),
        "breaches": [
            {"measure": b.measure, "target_s": b.target_s, "actual_s": b.actual_s, "running": b.running}
            for b in breaches(milestones, incident.get("severity"), sla, now=datetime.now(UTC))
        ],
    }
