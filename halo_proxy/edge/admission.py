"""Admission: what a request passes before a handler sees it.

HaloTrack's own routes (the reserved prefix, a sub-application: app.py) get it as middlewares, in this order:
1. `setup_tenancy`: Host -> tenant, the contract's JSON 400 or 421 before anything else;
2. `setup_client_address`: who sent the request (`tenancy.client_address`).
Their handlers find the tenant at `request[TENANT]` and the client at `request[CLIENT]`; a handler marked
`tenant_free` (health) is answered whatever the Host.

A request to be forwarded gets the same by one plain call, `admit`, from `edge.site`: the trust boundary
(`check_request`: HTTP version, Host, target, reserved path, framing), then Host -> tenant (421), as small HTML
pages. The forwarded path carries no middleware: each aiohttp middleware layer costs every proxied request
(measured: one no-op middleware, 8 → 32 garbage collections and about a fifth of the throughput under wrk).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from html import escape
from typing import NamedTuple, TypeVar

import orjson
from aiohttp import web

from ..config import Settings, Tenant
from ..metrics import UNKNOWN_TENANT, Metrics
from .boundary import Host, reaches_prefix
from .boundary import content_length as boundary_content_length
from .tenancy import Client, client_address, request_host

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

TENANT = web.RequestKey("halo_tenant", Tenant)
CLIENT = web.RequestKey("halo_client", Client)


class Refusal(NamedTuple):
    """A request refused at the trust boundary, before any tenant or upstream sees it."""

    status: int
    reason: str  # a label of halo_bad_requests_total
    detail: str


BAD_HOST = Refusal(400, "host", "The Host header is missing, repeated or not a host name.")
BAD_TARGET = Refusal(400, "target", "The request target must be a path.")
RESERVED_PATH = Refusal(400, "reserved_path", "This path is reserved.")
BAD_LENGTH = Refusal(400, "content_length", "The Content-Length header is not valid.")
BAD_CODING = Refusal(501, "transfer_encoding", "Only the chunked transfer coding is supported.")
BAD_VERSION = Refusal(505, "version", "Only HTTP/1.0 and HTTP/1.1 are served on this connection.")
_VERSIONS = ((1, 1), (1, 0))


def check_request(request: web.Request, reserved_prefix: str, *, forwarded: bool = True) -> Host | Refusal:
    """The request's Host, or why the request may not be forwarded: an HTTP version other than 1.0 and 1.1, a
    Transfer-Encoding other than plain `chunked`, a bad Host, a target that is not a path
    (absolute-form `GET http://evil/`), a path that an origin could read as one under the reserved prefix,
    or a Content-Length that is not a plain number matching the body aiohttp framed."""
    if request.version not in _VERSIONS:  # `GET / HTTP/2.0` over HTTP/1 would be answered as 1.1 upstream
        return BAD_VERSION
    host = request_host(request)
    if host is None:
        return BAD_HOST
    target = request.raw_path
    if target[:1] != "/" and not (target == "*" and request.method == "OPTIONS"):
        return BAD_TARGET
    query = target.find("?")
    if forwarded and reaches_prefix(target if query == -1 else target[:query], reserved_prefix):
        return RESERVED_PATH
    headers = request.headers
    if "Transfer-Encoding" in headers:  # aiohttp has decoded the chunked framing; any other coding would be lost
        codings = headers.getall("Transfer-Encoding")
        if len(codings) != 1 or codings[0].strip().lower() != "chunked":
            return BAD_CODING
    elif "Content-Length" in headers:
        values = headers.getall("Content-Length")
        length = boundary_content_length(values[0]) if len(values) == 1 else None
        if length is None or (length > 0) != request.body_exists:
            return BAD_LENGTH
    return host


REFUSAL_TITLES = {400: "Bad Request", 501: "Not Implemented", 505: "HTTP Version Not Supported"}


def error_page(status: int, title: str, detail: str) -> web.Response:
    body = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{status} {escape(title)}</title></head>"
        f"<body><h1>{status} {escape(title)}</h1><p>{escape(detail)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def tenant_free(handler: H) -> H:
    """Mark a route answered whatever the Host (the load balancer's health checks)."""
    handler.halo_tenant_free = True  # type: ignore[attr-defined]
    return handler


def _json_refusal(status: int, code: str, detail: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": code, "detail": detail}),
                        content_type="application/json")


def admit(request: web.Request, settings: Settings, metrics: Metrics, reserved_prefix: str,
          started: float) -> Tenant | web.Response:
    """A request to be forwarded: its tenant, or its refusal as a small HTML page. It first passes the trust
    boundary (`check_request`; refused on a closed connection, counted in halo_bad_requests_total), then
    Host -> tenant (421). A plain call, not a middleware: the forwarded path pays for no middleware layer."""
    checked = check_request(request, reserved_prefix)
    if type(checked) is Refusal:
        metrics.bad_requests.labels(reason=checked.reason).inc()
        metrics.count_request(UNKNOWN_TENANT, checked.status, time.perf_counter() - started)
        refused = error_page(checked.status, REFUSAL_TITLES[checked.status], checked.detail)
        refused.force_close()  # what follows on the connection cannot be trusted to be a request
        return refused
    tenant = settings.tenant_for_name(checked.name)  # type: ignore[union-attr]
    if tenant is None:
        metrics.count_request(UNKNOWN_TENANT, 421, time.perf_counter() - started)
        return error_page(421, "Misdirected Request", "This host is not served here.")
    return tenant


def setup_tenancy(app: web.Application, settings: Callable[[], Settings]) -> None:
    """Host -> tenant before anything else, for HaloTrack's own routes: the trust boundary's refusals (a bad Host,
    an absolute-form target, a Transfer-Encoding other than chunked, a bad Content-Length, an HTTP version other
    than 1.0/1.1) as the contract's JSON (`bad_<reason>`) on a closed connection, a host no tenant serves a JSON
    421. A `tenant_free` route (health) is answered whatever the Host."""

    @web.middleware
    async def tenancy(request: web.Request, handler: Handler) -> web.StreamResponse:
        if getattr(handler, "halo_tenant_free", False):
            return await handler(request)
        # The same boundary as a forwarded request (HTTP version, Host, target, framing), answered as JSON.
        checked = check_request(request, "", forwarded=False)
        if type(checked) is Refusal:
            refused = _json_refusal(checked.status, f"bad_{checked.reason}", checked.detail)
            refused.force_close()
            return refused
        tenant = settings().tenant_for_name(checked.name)  # type: ignore[union-attr]
        if tenant is None:
            return _json_refusal(421, "misdirected", "This host is not served here.")
        request[TENANT] = tenant
        return await handler(request)

    app.middlewares.append(tenancy)


def setup_client_address(app: web.Application, settings: Callable[[], Settings]) -> None:
    """Who sent the request (`tenancy.client_address`), for every request with a tenant."""

    @web.middleware
    async def client(request: web.Request, handler: Handler) -> web.StreamResponse:
        if TENANT in request:
            request[CLIENT] = client_address(request, settings().server.trusted_proxies)
        return await handler(request)

    app.middlewares.append(client)
