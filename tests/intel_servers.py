"""Local HTTP servers for the threat-intel tests: a feed's web server and the online providers' APIs.

Each answers as the real service documents it (paths, authentication headers, JSON shapes,
status codes), from data a test sets, and records every request it was sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[Request], Answer]


class Server:
    """An HTTP/1.1 server on 127.0.0.1 (a free port) answering each request with ``route``."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.requests: list[Request] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, target, _ = (await reader.readline()).decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get("content-length", "0")))
            parts = urlsplit(target)
            query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
            request = Request(method, unquote(parts.path), query, headers)
            self.requests.append(request)
            answer = self.route(request)
            head = {"Content-Length": str(len(answer.body)), "Connection": "close", **answer.headers}
            writer.write(
                f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}\r\n".encode()
                + "".join(f"{name}: {value}\r\n" for name, value in head.items()).encode()
                + b"\r\n"
                + answer.body
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def serving(route: Route) -> AsyncIterator[Server]:
    server = Server(route)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def as_json(status: int, data: Any) -> Answer:
    return Answer(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


# ---- the providers' APIs, as documented ------------------------------------------------------------


class ProviderApis:
    """AbuseIPDB (API v2), VirusTotal (API v3) and GreyNoise (Community API v3) on one server.

    ``known`` holds what each knows: AbuseIPDB and GreyNoise by address, VirusTotal by its object id
    (an address, a domain, a hash, or a URL's unpadded base64url). Each checks its key header.
    """

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        self.abuseipdb: dict[str, dict[str, Any]] = {}
        self.virustotal: dict[str, dict[str, Any]] = {}
        self.greynoise: dict[str, dict[str, Any]] = {}
        self.status: int | None = None  # answer every request with this (e.g. 429, 503)
        self.refusals = 0  # while above zero, answer with ``status`` and count down, then answer normally

    def refuse(self, status: int, times: int) -> None:
        """Answer the next ``times`` requests with ``status``: decided by the server, not raced by a test."""
        self.status, self.refusals = status, times

    def __call__(self, request: Request) -> Answer:
        if self.status is not None:
            status = self.status
            if self.refusals:
                self.refusals -= 1
                if not self.refusals:
                    self.status = None
            return as_json(status, {"errors": [{"detail": "told so"}]})
        if request.path == "/abuseipdb/api/v2/check":
            return self._abuseipdb(request)
        if request.path.startswith("/virustotal/api/v3/"):
            return self._virustotal(request)
        if request.path.startswith("/greynoise/v3/community/"):
            return self._greynoise(request)
        return as_json(404, {"error": "no such route"})

    def _abuseipdb(self, request: Request) -> Answer:
        # https://docs.abuseipdb.com/#check-endpoint
        if request.headers.get("key") != self.keys["abuseipdb"]:
            return as_json(401, {"errors": [{"detail": "Authentication failed.", "status": 401}]})
        if request.headers.get("accept") != "application/json":
            return as_json(406, {"errors": [{"detail": "Accept: application/json", "status": 406}]})
        address = request.query.get("ipAddress", "")
        data = {
            "ipAddress": address,
            "isPublic": True,
            "ipVersion": 6 if ":" in address else 4,
            "isWhitelisted": False,
            "abuseConfidenceScore": 0,
            "countryCode": None,
            "usageType": None,
            "isp": None,
            "domain": None,
            "hostnames": [],
            "isTor": False,
            "totalReports": 0,
            "numDistinctUsers": 0,
            "lastReportedAt": None,
            **self.abuseipdb.get(address, {}),
        }
        return as_json(200, {"data": data})

    def _virustotal(self, request: Request) -> Answer:
        # https://docs.virustotal.com/reference/ip-info (domains, files, urls alike)
        if request.headers.get("x-apikey") != self.keys["virustotal"]:
            return as_json(401, {"error": {"code": "WrongCredentialsError", "message": "Wrong API key"}})
        collection, _, identifier = request.path.removeprefix("/virustotal/api/v3/").partition("/")
        types = {"ip_addresses": "ip_address", "domains": "domain", "files": "file", "urls": "url"}
        if collection not in types or identifier not in self.virustotal:
            return as_json(404, {"error": {"code": "NotFoundError", "message": f"{identifier} not found"}})
        attributes = {
            "last_analysis_stats": {"harmless": 60, "malicious": 0, "suspicious": 0, "undetected": 10, "timeout": 0},
            "reputation": 0,
            "tags": [],
            **self.virustotal[identifier],
        }
        return as_json(200, {"data": {"id": identifier, "type": types[collection], "attributes": attributes}})

    def _greynoise(self, request: Request) -> Answer:
        # https://docs.greynoise.io/reference/get_v3-community-ip
        if request.headers.get("key") != self.keys["greynoise"]:
            return as_json(401, {"message": "unauthorized"})
        address = request.path.removeprefix("/greynoise/v3/community/")
        if address not in self.greynoise:
            return as_json(
                404,
                {
                    "ip": address,
                    "noise": False,
                    "riot": False,
                    "message": "IP not observed scanning the internet or contained in RIOT data set.",
                },
            )
        return as_json(200, {"ip": address, "message": "Success", **self.greynoise[address]})


def url_id(url: str) -> str:
    """VirusTotal's id of a URL: its unpadded base64url."""
    return base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
