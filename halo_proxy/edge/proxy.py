"""The streaming reverse proxy: one request in, one upstream request out, bodies streamed both ways.

Correctness rules (RFC 9110 section 7.6, RFC 9112 section 6) and their tests are listed in
`tests/test_proxy.py` and `tests/edge/`. Nothing here knows about tracking: callers pass extra response headers in.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Iterable

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..config import Tenant
from ..metrics import Metrics
from .admission import error_page
from .boundary import TRUSTED_ONLY_HEADERS, underscore_alias
from .inject import (
    COUNTED_SKIPS,
    DECODE_ERROR,
    TOO_LARGE,
    DecodeError,
    InjectedPages,
    Injector,
    Plan,
    Recoder,
    TooLarge,
    plan_injection,
    script_tag,
)
from .tenancy import Client
from .upstream import UpstreamError, UpstreamPool, UpstreamResponse, parse_origin

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1), plus the framing headers we never copy because each side of the
# proxy frames its own message.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade",
    )
)
# Headers of the client request we replace with our own values, or pass only from a trusted proxy.
REPLACED_REQUEST = frozenset(("host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "content-length",
                              "x-real-ip", "forwarded"))
# Never copied from the client request as is: hop-by-hop, replaced, and Via (extended below).
_NOT_COPIED = HOP_BY_HOP | REPLACED_REQUEST | {"via"}
# From a peer that is not a trusted proxy, also what origins read as the visitor's scheme, URL or address.
_NOT_COPIED_UNTRUSTED = _NOT_COPIED | TRUSTED_ONLY_HEADERS
VIA_TOKEN = "halotrack"
BODYLESS_STATUS = frozenset((204, 304))
CHUNK = 64 * 1024


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def upstream_request_headers(request: web.Request, tenant: Tenant, client: Client,
                             content_length: int | None) -> list[tuple[str, str]]:
    """The headers sent upstream: client headers minus hop-by-hop ones and underscore spellings of the guarded
    ones (`X_Forwarded_For`), with the forwarding headers set. `Forwarded` passes only from a trusted proxy;
    `X-Real-IP` is always HaloTrack's own."""
    incoming = request.headers
    drop = _NOT_COPIED if client.trusted else _NOT_COPIED_UNTRUSTED
    if "Connection" in incoming:
        drop = drop | connection_tokens(incoming)
    out = [(name, value) for name, value in incoming.items()
           if (lname := name.lower()) not in drop and not ("_" in lname and underscore_alias(lname))]
    host = request.host
    out.append(("Host", host if tenant.upstream_host == "original" else _upstream_host(tenant.upstream)))
    if "Transfer-Encoding" in incoming:
        out.append(("Transfer-Encoding", "chunked"))  # the body is sent upstream with chunked framing
    elif content_length is not None:
        out.append(("Content-Length", str(content_length)))  # normalised: `0005` leaves as `5`
    if client.trusted and "Forwarded" in incoming:
        out += (("Forwarded", value) for value in incoming.getall("Forwarded"))
    via = incoming.get("Via")
    ip = client.ip or "unknown"
    out += (
        ("X-Forwarded-For", client.forwarded_for or ip),
        ("X-Forwarded-Proto", "https" if client.https else "http"),
        ("X-Forwarded-Host", host),
        ("X-Real-IP", ip),
        ("Via", f"{via}, 1.1 {VIA_TOKEN}" if via else f"1.1 {VIA_TOKEN}"),
    )
    return out


@functools.lru_cache(maxsize=256)
def _upstream_host(upstream: str) -> str:
    """The Host header for an upstream URL (the port only when it is not the scheme's default)."""
    up = URL(upstream)
    return up.raw_host if up.is_default_port() else f"{up.raw_host}:{up.port}"


# The dashboard's session cookie (routes/dashboard.py): never set by the upstream.
DASHBOARD_COOKIE = "halo_dashboard"


def response_headers(raw: list[tuple[str, str]], tenant: Tenant, request: web.Request,
                     https: bool) -> CIMultiDict[str]:
    """Upstream response headers minus hop-by-hop ones; each Set-Cookie kept as its own line, except one that
    would set HaloTrack's dashboard session cookie (only HaloTrack's sign-in sets it)."""
    drop = HOP_BY_HOP
    rewrite = False
    for name, value in raw:
        lname = name.lower()
        if lname == "connection":
            drop = drop | {t.strip().lower() for t in value.split(",")}
        elif lname == "location" or lname == "content-location" or (
                lname == "set-cookie" and _sets_own_cookie(value)):
            rewrite = True
    if not rewrite:
        return CIMultiDict([(name, value) for name, value in raw if name.lower() not in drop])
    out: CIMultiDict[str] = CIMultiDict()
    public = f"{'https' if https else 'http'}://{request.host}"
    for name, value in raw:
        lname = name.lower()
        if lname in drop:
            continue
        if lname == "location" or lname == "content-location":
            value = rewrite_location(value, tenant, public)
        elif lname == "set-cookie" and _sets_own_cookie(value):
            continue
        out.add(name, value)
    return out


def _sets_own_cookie(value: str) -> bool:
    return value.lstrip(" \t").startswith(DASHBOARD_COOKIE + "=")


def rewrite_location(value: str, tenant: Tenant, public_origin: str) -> str:
    """An absolute redirect to the upstream origin becomes one to the public origin (the visitor's scheme and
    the Host they asked for, already checked); others are untouched."""
    origin = tenant.upstream_origin
    if value.startswith(origin) and (len(value) == len(origin) or value[len(origin)] in "/?#"):
        return public_origin + value[len(origin):]
    return value


class ProxiedResponse(web.StreamResponse):
    """A streamed response whose headers leave with the first body bytes instead of in a write of their own.

    Upstream header bytes leave exactly as they came. They are decoded as UTF-8 when they are UTF-8, which
    aiohttp's serializer writes back unchanged; `raw_latin1` marks an answer whose bytes are not UTF-8 (a
    latin-1 `filename="café.pdf"`): those were decoded as latin-1 and are encoded back the same way here.
    """

    _send_headers_immediately = False
    raw_latin1 = False

    async def _write_headers(self) -> None:
        if not self.raw_latin1:
            await super()._write_headers()
            return
        request, writer = self._req, self._payload_writer
        assert request is not None and writer is not None
        version = request.version
        lines = [f"HTTP/{version[0]}.{version[1]} {self.status} {self.reason}"]
        lines += (f"{name}: {value}" for name, value in self.headers.items())
        text = "\r\n".join(lines)
        if _FORBIDDEN_HEADER_CHARS.search(text.replace("\r\n", "")):
            raise ValueError("a control character in the upstream's response headers")
        # aiohttp's StreamWriter keeps the serialized head here until the first body write (pinned 3.14.5;
        # tests/edge/test_proxy_boundary.py checks latin-1 bytes arrive unchanged).
        # Upstream text maps back to its bytes through latin-1; a header of HaloTrack's own that is not latin-1
        # (none should be) goes out as UTF-8 rather than failing the page.
        head = b"\r\n".join(line.encode("latin-1") if _latin1(line) else line.encode("utf-8", "replace")
                             for line in lines)
        writer._headers_buf = head + b"\r\n\r\n"  # type: ignore[attr-defined]
        writer._headers_written = False  # type: ignore[attr-defined]


_FORBIDDEN_HEADER_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


# How each upstream failure is answered: status, title, what the visitor reads.
FAILURES = {
    "connect_timeout": (504, "Gateway Timeout", "The site did not answer in time. Please try again in a moment."),
    "read_timeout": (504, "Gateway Timeout", "The site did not answer in time. Please try again in a moment."),
    "refused": (502, "Bad Gateway", "The site could not be reached. Please try again in a moment."),
    "tls": (502, "Bad Gateway", "A secure connection to the site could not be made."),
    "malformed": (502, "Bad Gateway", "The site sent an invalid response."),
    "reset": (502, "Bad Gateway", "The connection to the site was reset."),
}


class Proxy:
    """Forwards requests of a tenant to its upstream: pages through `pool`, WebSockets through `session`."""

    def __init__(self, pool: UpstreamPool, session: aiohttp.ClientSession, metrics: Metrics,
                 body_timeout_s: float = 30.0):
        self.pool = pool
        self.session = session
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s
        self.pages = InjectedPages()  # whole pages injected before, by their exact bytes

    async def forward(
        self,
        request: web.Request,
        tenant: Tenant,
        client: Client,
        extra_headers: Iterable[tuple[str, str]] = (),
        inject_prefix: str | None = None,
    ) -> web.StreamResponse:
        """Forward a request that `check_request` accepted. With `inject_prefix` (the reserved prefix), an HTML
        page in the answer gets the script tag (`inject.plan_injection` says when)."""
        incoming = request.headers
        if "Via" in incoming and VIA_TOKEN in incoming["Via"]:
            self.metrics.upstream_errors.labels(tenant=tenant.id, kind="loop").inc()
            return error_page(508, "Loop Detected", "This request has already passed through this proxy.")
        length = request.content_length if "Content-Length" in incoming else None
        headers = upstream_request_headers(request, tenant, client, length)
        if "Upgrade" in incoming and incoming["Upgrade"].lower() == "websocket":
            url = URL(tenant.upstream_origin + request.raw_path, encoded=True)
            return await self._websocket(request, tenant, url, CIMultiDict(headers))

        body = None
        chunked = False
        if request.body_exists:
            body = request.content.iter_chunked(CHUNK)
            chunked = "Transfer-Encoding" in incoming
        timeouts = tenant.timeouts
        started = time.perf_counter()
        try:
            upstream = await self.pool.request(
                parse_origin(tenant.upstream_origin), request.method, request.raw_path, headers, body,
                chunked=chunked, connect_timeout=timeouts.connect_s, read_timeout=timeouts.read_s,
                body_timeout=self.body_timeout_s)
        except UpstreamError as err:
            if err.kind == "client_body":
                return error_page(400, "Bad Request", "The request body could not be read.")
            if err.kind == "client_timeout":
                self.metrics.connection_timeouts.labels(kind="body").inc()
                response = error_page(408, "Request Timeout", "The request body did not arrive in time.")
                response.force_close()
                return response
            status, title, detail = FAILURES.get(err.kind, FAILURES["refused"])
            self.metrics.upstream_errors.labels(tenant=tenant.id, kind=err.kind).inc()
            return error_page(status, title, detail)
        self.metrics.upstream_time(tenant.id, time.perf_counter() - started)
        try:
            if inject_prefix is not None:
                plan = plan_injection(request.method, True, "Range" in incoming, upstream.status, upstream.headers)
                if type(plan) is Plan:
                    return await self._respond_injected(request, tenant, client, upstream, extra_headers, plan,
                                                        inject_prefix)
                if plan in COUNTED_SKIPS:
                    self.metrics.injection(tenant.id, plan, skipped=True)  # type: ignore[arg-type]
            return await self._respond(request, tenant, client, upstream, extra_headers)
        finally:
            upstream.release()

    async def _respond(self, request: web.Request, tenant: Tenant, client: Client, upstream: UpstreamResponse,
                       extra_headers: Iterable[tuple[str, str]], first: bytes | None = None) -> web.StreamResponse:
        response = _proxied(upstream, response_headers(upstream.headers, tenant, request, client.https),
                            extra_headers)
        try:
            writer = await response.prepare(request)
            if request.method == "HEAD" or upstream.status in BODYLESS_STATUS:
                # Keep the upstream's Content-Length on HEAD: it describes the GET body.
                await response.write_eof()
                return response
            # What the upstream has sent already goes out with the headers in one write; a small page that
            # arrived whole is one write and no wait. Headers never wait for a slow body.
            if first is None:
                first = upstream.read_nowait()
            if upstream.at_eof():
                await response.write_eof(first)
                return response
            if first:
                await response.write(first)
            elif writer is not None:
                writer.send_headers()
            while chunk := await upstream.read():
                await response.write(chunk)
            await response.write_eof()
        except UpstreamError as err:
            self._failed_mid_body(request, tenant, err)
        except ConnectionError:
            pass  # the visitor went away (aiohttp raises a plain ConnectionError too): nothing more to do
        return response

    async def _respond_injected(self, request: web.Request, tenant: Tenant, client: Client,
                                upstream: UpstreamResponse, extra_headers: Iterable[tuple[str, str]], plan: Plan,
                                prefix: str) -> web.StreamResponse:
        """`_respond` for an HTML page that gets the tag: the body goes through the injector (and the coding's
        decoder and encoder). A page that arrived whole leaves with a corrected Content-Length, else chunked; one
        whose exact bytes were injected before is answered from `pages` (`inject.InjectedPages`). A
        page the upstream compressed wrongly is passed on as it came when it arrived whole, and aborted (like an
        upstream failing mid-body) when the fault shows only after the headers went out."""
        tag = script_tag(prefix, plan.nonce)
        first = upstream.read_nowait()
        if upstream.at_eof():
            known = self.pages.get(tag, plan.coding, first)
            if known is not None:
                body, outcome = known
            else:
                injector = Injector(tag, (prefix + "/t.js").encode())
                try:
                    body = (Recoder(plan.coding, injector) if plan.coding else injector).feed_all(first)
                except DecodeError as err:
                    self.metrics.injection(tenant.id, TOO_LARGE if isinstance(err, TooLarge) else DECODE_ERROR)
                    return await self._respond(request, tenant, client, upstream, extra_headers, first)
                outcome = injector.outcome or DECODE_ERROR
                self.pages.put(tag, plan.coding, first, body, outcome)
            response = _proxied(upstream, response_headers(plan.headers, tenant, request, client.https),
                                extra_headers)
            response.headers["Content-Length"] = str(len(body))
            try:
                await response.prepare(request)
                await response.write_eof(body)
            except ConnectionError:
                pass
            self.metrics.injection(tenant.id, outcome)
            return response
        injector = Injector(tag, (prefix + "/t.js").encode())
        codec: Injector | Recoder = Recoder(plan.coding, injector) if plan.coding else injector
        response = _proxied(upstream, response_headers(plan.headers, tenant, request, client.https), extra_headers)
        try:
            writer = await response.prepare(request)
            out = codec.feed(first) if first else b""
            if out:
                await response.write(out)
            elif writer is not None:
                writer.send_headers()  # headers never wait for the insertion point
            while chunk := await upstream.read():
                out = codec.feed(chunk)
                if out:
                    await response.write(out)
            await response.write_eof(codec.finish())
            self.metrics.injection(tenant.id, injector.outcome or DECODE_ERROR)
        except DecodeError as err:
            self.metrics.injection(tenant.id, TOO_LARGE if isinstance(err, TooLarge) else DECODE_ERROR)
            log.warning("tenant %s sent a %s page that could not be injected (%s); aborted", tenant.id,
                        plan.coding, err)
            if request.transport is not None:
                request.transport.abort()
        except UpstreamError as err:
            self._failed_mid_body(request, tenant, err)
        except ConnectionError:
            pass
        return response

    def _failed_mid_body(self, request: web.Request, tenant: Tenant, err: UpstreamError) -> None:
        """The exchange failed after the headers went out: abort, never fake a complete body. When the visitor's
        own upload broke or stalled, or the visitor went away, that is not the upstream's failure."""
        if _client_gone(request):
            return
        if not err.kind.startswith("client_"):
            self.metrics.upstream_errors.labels(tenant=tenant.id, kind="aborted_mid_body").inc()
            log.warning("upstream of tenant %s failed mid-body: %s", tenant.id, err.kind)
        if request.transport is not None:
            request.transport.abort()

    async def _websocket(self, request: web.Request, tenant: Tenant, url: URL,
                         headers: CIMultiDict[str]) -> web.StreamResponse:
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                     "Sec-WebSocket-Protocol", "Content-Length"):
            headers.popall(name, None)
        ws_url = url.with_scheme("wss" if url.scheme == "https" else "ws")
        client = web.WebSocketResponse(autoping=False, max_msg_size=4 * 1024 * 1024)
        if not client.can_prepare(request).ok:  # checked before the origin is asked for anything
            return error_page(400, "Bad Request", "This is not a valid WebSocket handshake.")
        try:
            upstream = await self.session.ws_connect(
                ws_url, headers=headers, protocols=protocols, timeout=aiohttp.ClientWSTimeout(ws_close=10),
                autoping=False, max_msg_size=4 * 1024 * 1024,
            )
        except aiohttp.WSServerHandshakeError as err:
            self.metrics.upstream_errors.labels(tenant=tenant.id, kind="websocket_refused").inc()
            return error_page(502 if err.status < 400 else err.status, "Bad Gateway",
                              "The site refused the WebSocket connection.")
        except (TimeoutError, aiohttp.ClientError):
            self.metrics.upstream_errors.labels(tenant=tenant.id, kind="refused").inc()
            return error_page(502, "Bad Gateway", "The site could not be reached.")
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (),
                                       autoping=False, max_msg_size=4 * 1024 * 1024)
        try:
            await client.prepare(request)
        except (web.HTTPException, ConnectionError):
            await upstream.close()  # never leave the origin's side open when the visitor's side failed
            raise

        async def pump(src, dst) -> None:  # type: ignore[no-untyped-def]
            async for msg in src:
                if msg.type == WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                elif msg.type == WSMsgType.PING:
                    await dst.ping(msg.data)
                elif msg.type == WSMsgType.PONG:
                    await dst.pong(msg.data)
                else:
                    break
            code = src.close_code or 1000
            if not dst.closed:
                await dst.close(code=code, message=b"")

        async with upstream:
            tasks = [asyncio.ensure_future(pump(client, upstream)), asyncio.ensure_future(pump(upstream, client))]
            try:
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                for task in tasks:
                    task.cancel()
        if not client.closed:
            await client.close()
        return client


def _proxied(upstream: UpstreamResponse, headers: CIMultiDict[str],
             extra_headers: Iterable[tuple[str, str]]) -> ProxiedResponse:
    """The visitor's response for an upstream answer: its status and reason, these headers plus HaloTrack's own."""
    for name, value in extra_headers:
        headers.add(name, value)
    response = ProxiedResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    response.raw_latin1 = upstream.latin1
    return response


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
