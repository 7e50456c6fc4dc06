"""The detector's HTTP ingest: tools that speak HTTP post their alerts here, in their own format.

- ``POST /api/v1/alerts``: one record, a JSON array of records, or NDJSON (``application/x-ndjson``,
  or lines, detected when the body is not one JSON document); each record in any supported format,
  recognised by its shape, or all in the one named by ``?format=NAME``.
- ``POST /api/v1/alerts/alertmanager``: an Alertmanager webhook payload, exactly as Alertmanager sends it.
- ``POST /api/v1/alerts/pagerduty``: a PagerDuty Events API v2 event, answered as PagerDuty's Events API
  answers (202 ``{"status": "success", "message": "Event processed", "dedup_key": …}``; 400
  ``{"status": "invalid event", "message": "Event object is invalid", "errors": […]}``).

Nothing is stored here. Every record of a request is read by its format's adapter first, and a request
holding one bad record is refused whole (400 ``{"detail", "code", "index"}`` naming the first bad record,
counted from 0), so that a sender never has to work out which part went through. Then each record is
published to the raw alerts topic as it came, with the ``vigil_format`` header naming the format the
adapter recognised (and ``vigil_ingest_source`` naming the sending tool when tokens are configured),
keyed by its first alert's entity so that one entity's alerts stay on one partition (an Alertmanager
message by its group, a PagerDuty event by its alert: see ``raw_key``). ``202`` comes only
once the broker acknowledged every record; a broker that is down or slow gets ``503`` and the sender
retries (a record that got through before the failure then reaches the detector twice, which counts it
as a repeat of the same alert, never as a new one).

Authentication: with ``VIGIL_INGEST_TOKENS`` set, a request needs ``Authorization: Bearer <token>`` of
one of the configured sources; with ``VIGIL_INGEST_HMAC_SECRET`` set, it may instead carry
``X-Vigil-Signature: sha256=<hex HMAC-SHA256 of the body>``. A Vigil API token allowed ``alerts.ingest``
is accepted too. Anything else is refused with 401; the ingest is open only with
``VIGIL_ALLOW_UNAUTHENTICATED`` and no ingest token or secret set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from services.detector import suppression_api
from services.detector.adapters import FORMAT_HEADER, FORMATS, Parsed, Rejected, parse_record, storable
from services.detector.adapters.alertmanager import GROUP_LABEL as ALERTMANAGER_GROUP_LABEL
from services.detector.metrics import INGEST_RECORDS, INGEST_REFUSED, INGEST_REQUESTS
from shared import identity
from shared.auth import signature_valid
from shared.errors import is_retriable
from shared.service import Runtime
from shared.topics import ALERTS_RAW

log = logging.getLogger(__name__)

SOURCE_HEADER = "vigil_ingest_source"
SIGNATURE_HEADER = "X-Vigil-Signature"
# The source name recorded for a request authenticated by its signature.
HMAC_SOURCE = "hmac"
NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/json-lines",
    }
)
RETRY_AFTER_S = 5


class Refused(Exception):
    """The request is answered with ``status``; ``code`` says why in one word, ``detail`` in a sentence."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        index: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.index = index
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Record:
    """One record of a request, read by its adapter, as it goes on the raw topic."""

    index: int
    value: bytes
    parsed: Parsed


@dataclass(frozen=True)
class Accepted:
    """A request's records, each acknowledged by the broker."""

    records: list[Record]
    stored: list[RecordMetadata]

    def summary(self) -> dict[str, Any]:
        return {
            "status": "accepted",
            "accepted": len(self.records),
            "records": [
                {
                    "index": record.index,
                    "format": record.parsed.format,
                    "alerts": [alert.key for alert in record.parsed.alerts],
                    "skipped": record.parsed.skipped,
                    "partition": stored.partition,
                    "offset": stored.offset,
                }
                for record, stored in zip(self.records, self.stored, strict=True)
            ],
        }


# ---- pure pieces, shared with the CLI ----------------------------------------------------------


def split_records(body: bytes, *, ndjson: bool = False) -> list[bytes]:
    """The records a body holds: its lines for NDJSON, a JSON array's elements, else the body itself.

    A body that is not one JSON document but whose first line is one is read as NDJSON; anything
    else is returned whole, for the adapters to refuse with the reason.
    """
    if ndjson:
        return _lines(body)
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError):  # not UTF-8, or nested deeper than a parser goes:
        return [body]  # one record, for its adapter to refuse with the reason
    except ValueError:
        lines = _lines(body)
        if len(lines) > 1 and _is_json(lines[0]):
            return lines
        return [body.strip()] if body.strip() else []
    if isinstance(document, list):
        # Each element is a record of its own on the topic; it is the same JSON, re-encoded.
        return [_encoded(item) for item in document]
    return [body.strip()]


def _encoded(item: Any) -> bytes:
    try:
        return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # an unpaired surrogate (\ud800): escaped, for its adapter to refuse by index
        return json.dumps(item, separators=(",", ":")).encode()


def _lines(body: bytes) -> list[bytes]:
    return [line.strip() for line in body.split(b"\n") if line.strip()]


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    return True


def raw_key(parsed: Parsed) -> bytes | None:
    """The raw record's Kafka key: its first alert's entity, so one entity's alerts share a partition.

    An Alertmanager message is keyed by its group instead: every notification of a group carries the
    group's alerts, whichever comes first, and an alert stays in its group; so keyed, the message that
    says an alert fired and the later one that says it resolved are read in that order. A PagerDuty event
    is keyed by its alert (its ``dedup_key``): a resolve names no host, and keyed by its entity it could be
    read before the trigger it ends, on another partition, and be lost.
    """
    if not parsed.alerts:
        return None
    first = parsed.alerts[0]
    if parsed.format == "pagerduty":
        return first.key.encode()
    group = first.labels.get(ALERTMANAGER_GROUP_LABEL) if parsed.format == "alertmanager" else None
    return f"alertmanager:{group}".encode() if group else first.entity.encode()


def raw_headers(parsed: Parsed, *, source: str | None = None) -> list[tuple[str, bytes]]:
    """The raw record's headers: the format its adapter read it as, and who sent it when known."""
    headers = [(FORMAT_HEADER, parsed.format.encode())]
    if source is not None:
        headers.append((SOURCE_HEADER, source.encode()))
    return headers


def parse_tokens(text: str) -> list[tuple[str, str]]:
    """Read ``name:token,name:token`` into (name, token) pairs; raise ValueError naming what is wrong.

    The error never quotes a token.
    """
    pairs: list[tuple[str, str]] = []
    for n, item in enumerate((part.strip() for part in text.split(",")), start=1):
        if not item:
            continue
        name, colon, token = item.partition(":")
        name, token = name.strip(), token.strip()
        if not colon or not name or not token:
            raise ValueError(f"VIGIL_INGEST_TOKENS entry {n} is not `name:token`")
        pairs.append((name, token))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("VIGIL_INGEST_TOKENS names a source twice")
    if len({token for _, token in pairs}) != len(pairs):
        raise ValueError("VIGIL_INGEST_TOKENS gives two sources the same token")
    if not pairs:
        raise ValueError("VIGIL_INGEST_TOKENS is set but holds no `name:token` pair")
    return pairs


def bearer_source(authorization: str | None, tokens: Sequence[tuple[str, str]]) -> str | None:
    """The name of the source whose token the ``Authorization: Bearer`` header carries, else None."""
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    offered = presented.strip().encode()
    found = None
    for name, token in tokens:  # every token is compared, so timing tells nothing of which matched
        if secrets.compare_digest(offered, token.encode()):
            found = name
    return found


def read_records(records: Sequence[bytes], *, format_name: str | None) -> list[Record]:
    """Read every record with its adapter; refuse at the first that cannot be read (index from 0)."""
    if not records:
        raise Refused(400, "empty", "the request holds no record")
    read: list[Record] = []
    for index, value in enumerate(records):
        try:
            parsed = parse_record(value, format_name=format_name)
        except Rejected as exc:
            where = f"record at index {index}: " if len(records) > 1 else ""
            status = 413 if exc.code == "too_large" else 400
            raise Refused(status, exc.code, f"{where}{exc.reason}", index=index) from exc
        read.append(Record(index=index, value=storable(value, parsed), parsed=parsed))
    return read


def claimed_by_another(
    records: Sequence[Record], *, sender: str, senders: Collection[str]
) -> tuple[int, str, str] | None:
    """The first alert whose source (``name`` or ``name/…``) is another sender's with a token of its own:
    (its record's index, its source, that sender). A sender may send for sources no token names."""
    for record in records:
        for alert in record.parsed.alerts:
            owner = alert.source.split("/", 1)[0].lower()
            if owner != sender.lower() and owner in senders:
                return record.index, alert.source, owner
    return None


# ---- the ingest --------------------------------------------------------------------------------


class Ingest:
    """Reads, authenticates, validates and publishes one request's records."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.producer = runtime.producer
        self.topic = runtime.names(ALERTS_RAW)
        self.max_bytes = settings.ingest_max_bytes
        self.timeout_s = settings.ingest_publish_timeout_s
        self.pool = runtime.pool
        self.tokens = parse_tokens(settings.ingest_tokens.get_secret_value()) if settings.ingest_tokens else []
        self.token_names = frozenset(name.lower() for name, _ in self.tokens)
        secret = settings.ingest_hmac_secret
        self.hmac_secret = secret.get_secret_value().encode() if secret else None
        # Open to anyone only where the operator said so (a local experiment); else an API token with the
        # `alerts.ingest` permission, a configured ingest token, or an HMAC signature.
        self.open = settings.allow_unauthenticated and not self.tokens and self.hmac_secret is None

    async def accept(
        self, request: Request, *, format_name: str | None, split: bool, fixed_format: bool = False
    ) -> Accepted:
        """Take the request's records onto the raw topic, or raise Refused."""
        source = await self.authenticate(request)
        by_token = source is not None and self._token_named(request, source)
        if fixed_format and format_name not in FORMATS:
            raise Refused(
                503,
                "format_unavailable",
                f"this detector has no {format_name!r} format adapter (formats: {', '.join(FORMATS)}); "
                "upgrade it, then retry",
            )
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise Refused(
                415, "unsupported_encoding", f"content encoding {encoding[:40]!r} is not taken: send the body as it is"
            )
        media = _media_type(request.headers.get("content-type"))
        if media is not None and media not in NDJSON_TYPES and not _is_json_type(media):
            raise Refused(415, "unsupported_media_type", f"content type {media!r} is not JSON or NDJSON")
        body = await self.read_body(request)
        if source is None and not self.open:
            source = self.verify_signature(request, body)
        values = split_records(body, ndjson=media in NDJSON_TYPES) if split else [body.strip()]
        records = read_records(values, format_name=format_name)
        if by_token and (claimed := claimed_by_another(records, sender=source or "", senders=self.token_names)):
            index, alert_source, owner = claimed
            raise Refused(
                403,
                "source_of_another",
                f"record at index {index}: its alert's source {alert_source[:100]!r} is {owner!r}'s, which has a token "
                f"of its own: the {source!r} token may not send for it",
                index=index,
            )
        stored = await self.publish(records, source=source)
        for record in records:
            INGEST_RECORDS.labels(record.parsed.format).inc()
        log.debug(
            "ingest: %d record(s) accepted from %s",
            len(records),
            source or "an unauthenticated sender",
            extra={"formats": sorted({r.parsed.format for r in records})},
        )
        return Accepted(records=records, stored=stored)

    async def authenticate(self, request: Request) -> str | None:
        """The source a bearer token names; None when the ingest is open or a signature must decide."""
        if self.open:
            return None
        authorization = request.headers.get("authorization")
        if self.tokens and (source := bearer_source(authorization, self.tokens)):
            return source
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and identity.parse_token(token) is not None:
            try:
                async with self.pool.acquire() as conn:
                    principal = await identity.resolve(conn, token)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                raise Refused(
                    503,
                    "auth_unavailable",
                    "the API token cannot be checked now (the database is unavailable); retry later",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                ) from exc
            if principal is not None and identity.allows(principal.role, "alerts.ingest"):
                return principal.name
            if principal is not None:
                raise Refused(403, "forbidden", f"{principal.name} ({principal.role}) may not send alerts")
        if self.hmac_secret is not None and request.headers.get(SIGNATURE_HEADER):
            return None  # checked once the body is read
        raise _unauthorized()

    def _token_named(self, request: Request, source: str) -> bool:
        """Whether the request's bearer token is the ingest token of ``source`` (not an API token of that name)."""
        return bearer_source(request.headers.get("authorization"), self.tokens) == source

    def verify_signature(self, request: Request, body: bytes) -> str:
        if self.hmac_secret is not None and signature_valid(
            request.headers.get(SIGNATURE_HEADER), body, self.hmac_secret
        ):
            return HMAC_SOURCE
        raise _unauthorized()

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to be over the limit."""
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise Refused(400, "bad_request", "Content-Length is not a number") from None
            if size > self.max_bytes:
                raise self._too_large(size)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.max_bytes:
                    raise self._too_large(None)
        except ClientDisconnect:
            raise Refused(400, "incomplete_body", "the sender went away before the whole body came") from None
        return bytes(body)

    def _too_large(self, size: int | None) -> Refused:
        what = f"a body of {size} bytes" if size is not None else "the body"
        return Refused(
            413, "too_large", f"{what} is over the {self.max_bytes}-byte limit (VIGIL_INGEST_MAX_BYTES); send less"
        )

    async def publish(self, records: Sequence[Record], *, source: str | None) -> list[RecordMetadata]:
        """Publish every record and wait, within the timeout, until the broker acknowledged them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        futures: list[asyncio.Future[RecordMetadata]] = []
        try:
            async with asyncio.timeout_at(deadline):
                for record in records:
                    futures.append(
                        await self.producer.send(
                            self.topic,
                            key=raw_key(record.parsed),
                            value=record.value,
                            headers=raw_headers(record.parsed, source=source),
                        )
                    )
        except TimeoutError:
            raise self._abandon(futures, f"the broker did not take the records within {self.timeout_s:g}s") from None
        except MessageSizeTooLargeError:
            # The producer refuses it before sending: with its key, headers and the batch's framing, the record
            # is over the broker's request size though its body is within the limits above. A retry never helps.
            self._abandon(futures, "a later record is too large")  # those before it may still arrive: repeats
            raise Refused(413, "too_large", "the broker refuses a record this large; send smaller records") from None
        except KafkaError as exc:
            raise self._abandon(futures, f"the broker is unavailable: {exc!r}") from exc
        done, pending = await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0))
        if pending:
            raise self._abandon(futures, f"the broker did not acknowledge the records within {self.timeout_s:g}s")
        failures = [error for future in done if (error := future.exception()) is not None]
        if any(isinstance(error, MessageSizeTooLargeError) for error in failures):
            raise Refused(413, "too_large", "the broker refuses a record this large; send smaller records")
        if failures:
            raise self._abandon(futures, f"the broker refused the records: {failures[0]!r}")
        return [future.result() for future in futures]

    def _abandon(self, futures: Sequence[asyncio.Future[RecordMetadata]], reason: str) -> Refused:
        # The sender is told to retry; what was already handed to the producer may still arrive,
        # which the detector counts as a repeat. Say so in the log when it does.
        for future in futures:
            if not future.done():
                future.add_done_callback(_late_outcome)
            elif not future.cancelled():
                future.exception()  # retrieved: the failure is reported in the 503
        return Refused(503, "broker_unavailable", f"{reason}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)})


def _late_outcome(future: asyncio.Future[RecordMetadata]) -> None:
    if future.cancelled():
        return
    if (error := future.exception()) is not None:
        log.warning("ingest: a record of a request answered 503 was not stored either: %r", error)
    else:
        log.info("ingest: a record of a request answered 503 was stored after all; a retry is a repeat")


def _unauthorized() -> Refused:
    return Refused(
        401,
        "unauthorized",
        "a valid `Authorization: Bearer <token>` or `X-Vigil-Signature` is required",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _media_type(content_type: str | None) -> str | None:
    if content_type is None:
        return None  # nothing said: the body decides
    return content_type.split(";", 1)[0].strip().lower() or None


def _is_json_type(media: str) -> bool:
    return media in ("application/json", "text/json") or media.endswith("+json")


# ---- routes ------------------------------------------------------------------------------------


def _error(refused: Refused) -> JSONResponse:
    body: dict[str, Any] = {"detail": refused.detail, "code": refused.code}
    if refused.index is not None:
        body["index"] = refused.index
    return JSONResponse(body, status_code=refused.status, headers=refused.headers)


def _pagerduty_error(refused: Refused) -> JSONResponse:
    # PagerDuty's documented shape for an invalid event; the other statuses say their reason alike.
    status = "invalid event" if refused.status == 400 else refused.code
    message = "Event object is invalid" if refused.status == 400 else refused.detail
    body = {"status": status, "message": message, "errors": [refused.detail], "code": refused.code}
    return JSONResponse(body, status_code=refused.status, headers=refused.headers)


def _pagerduty_accepted(accepted: Accepted) -> JSONResponse:
    record = accepted.records[0]
    return JSONResponse(
        {"status": "success", "message": "Event processed", "dedup_key": pagerduty_dedup_key(record)},
        status_code=202,
    )


def pagerduty_dedup_key(record: Record) -> str | None:
    """The key PagerDuty would answer with: the event's own ``dedup_key``, else the alert's id."""
    try:
        sent = json.loads(record.value).get("dedup_key")
    except (ValueError, AttributeError):
        sent = None
    if isinstance(sent, str) and sent:
        return sent
    return record.parsed.alerts[0].id if record.parsed.alerts else None


# The ingest authenticates itself (API tokens, ingest tokens or an HMAC signature); the permission an
# API token needs is declared on each route for the documentation and the route matrix test.
INGEST_PERMISSION: dict[str, Any] = {"x-vigil-permission": "alerts.ingest"}


def routers(runtime: Runtime) -> list[APIRouter]:
    ingest = Ingest(runtime)
    router = APIRouter(prefix="/api/v1", tags=["ingest"])

    async def answer(
        route: str,
        run: Callable[[], Awaitable[Accepted]],
        accepted: Callable[[Accepted], JSONResponse],
        refused: Callable[[Refused], JSONResponse],
    ) -> Response:
        try:
            response = accepted(await run())
        except Refused as exc:
            INGEST_REFUSED.labels(route, exc.code).inc()
            level = logging.WARNING if exc.status in (401, 503) else logging.INFO
            log.log(level, "ingest %s refused (%d %s): %s", route, exc.status, exc.code, exc.detail)
            response = refused(exc)
        except Exception:
            INGEST_REQUESTS.labels(route, "500").inc()
            raise
        INGEST_REQUESTS.labels(route, str(response.status_code)).inc()
        return response

    def _accepted(accepted: Accepted) -> JSONResponse:
        return JSONResponse(accepted.summary(), status_code=202)

    @router.post("/alerts", status_code=202, openapi_extra=INGEST_PERMISSION)
    async def alerts(
        request: Request, format_name: Annotated[str | None, Query(alias="format", max_length=40)] = None
    ) -> Response:
        """Take one record, a JSON array of records or NDJSON, in any supported format (or ``?format=NAME``)."""
        return await answer(
            "alerts", lambda: ingest.accept(request, format_name=format_name, split=True), _accepted, _error
        )

    @router.post("/alerts/alertmanager", status_code=202, openapi_extra=INGEST_PERMISSION)
    async def alertmanager(request: Request) -> Response:
        """Take an Alertmanager webhook payload, as Alertmanager's `webhook_configs` send it."""
        return await answer(
            "alertmanager",
            lambda: ingest.accept(request, format_name="alertmanager", split=False, fixed_format=True),
            _accepted,
            _error,
        )

    @router.post("/alerts/pagerduty", status_code=202, openapi_extra=INGEST_PERMISSION)
    async def pagerduty(request: Request) -> Response:
        """Take a PagerDuty Events API v2 event and answer as PagerDuty's Events API does."""
        return await answer(
            "pagerduty",
            lambda: ingest.accept(request, format_name="pagerduty", split=False, fixed_format=True),
            _pagerduty_accepted,
            _pagerduty_error,
        )

    return [router, suppression_api.router(runtime)]
