"""The streaming reverse proxy: one request in, one upstream request out, bodies streamed both ways.

Correctness rules (RFC 9110 section 7.6, RFC 9112 section 6) and their tests are listed in
`tests/test_proxy.py`. Nothing here knows about tracking: callers pass extra response headers in.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable
from html import escape

import aiohttp
from aiohttp import ClientTimeout, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .config import Tenant
from .metrics import Metrics

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
# Headers of the client request we replace with our own values.
REPLACED_REQUEST = frozenset(("host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "content-length"))
# Never copied from the client request as is: hop-by-hop, replaced, and Via (extended below).
_NOT_COPIED = HOP_BY_HOP | REPLACED_REQUEST | {"via"}
VIA_TOKEN = "halotrack"
BODYLESS_STATUS = frozenset((204, 304))
CHUNK = 64 * 1024
# Headers aiohttp would add to the upstream request on its own; we send only what the client sent.
SKIP_AUTO = frozenset(("Accept", "Accept-Encoding", "User-Agent", "Content-Type"))


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def upstream_request_headers(request: web.Request, tenant: Tenant, client_ip: str | None,
                             forwarded_for: str | None) -> CIMultiDict[str]:
    """The headers sent upstream: client headers minus hop-by-hop ones, with forwarding headers set."""
    incoming = request.headers
    if "Connection" in incoming:
        drop = _NOT_COPIED | connection_tokens(incoming)
    else:
        drop = _NOT_COPIED
    out: CIMultiDict[str] = CIMultiDict([(name, value) for name, value in incoming.items()
                                         if name.lower() not in drop])
    host = request.host
    out["Host"] = host if tenant.upstream_host == "original" else _upstream_host(tenant.upstream)
    if "Content-Length" in incoming and "Transfer-Encoding" not in incoming:
        out["Content-Length"] = incoming["Content-Length"]
    out["X-Forwarded-For"] = forwarded_for if forwarded_for else (client_ip or "unknown")
    out["X-Forwarded-Proto"] = request.scheme
    out["X-Forwarded-Host"] = host
    via = incoming.get("Via")
    out["Via"] = f"{via}, 1.1 {VIA_TOKEN}" if via else f"1.1 {VIA_TOKEN}"
    return out


@functools.lru_cache(maxsize=256)
def _upstream_host(upstream: str) -> str:
    """The Host header for an upstream URL (the port only when it is not the scheme's default)."""
    up = URL(upstream)
    return up.raw_host if up.is_default_port() else f"{up.raw_host}:{up.port}"


def response_headers(upstream: aiohttp.ClientResponse, tenant: Tenant, request: web.Request) -> CIMultiDict[str]:
    """Upstream response headers minus hop-by-hop ones; each Set-Cookie kept as its own line."""
    raw = upstream.headers
    drop = HOP_BY_HOP | connection_tokens(raw) if "Connection" in raw else HOP_BY_HOP
    if "Location" not in raw and "Content-Location" not in raw:
        return CIMultiDict([(name, value) for name, value in raw.items() if name.lower() not in drop])
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in raw.items():
        lname = name.lower()
        if lname in drop:
            continue
        if lname == "location" or lname == "content-location":
            value = rewrite_location(value, tenant, request)
        out.add(name, value)
    return out


def rewrite_location(value: str, tenant: Tenant, request: web.Request) -> str:
    """An absolute redirect to the upstream origin becomes one to the public origin; others are untouched."""
    origin = tenant.upstream_origin
    if value.startswith(origin) and (len(value) == len(origin) or value[len(origin)] in "/?#"):
        return f"{request.scheme}://{request.host}{value[len(origin):]}"
    return value


def error_page(status: int, title: str, detail: str) -> web.Response:
    body = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{status} {escape(title)}</title></head>"
        f"<body><h1>{status} {escape(title)}</h1><p>{escape(detail)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


class Proxy:
    """Forwards requests of a tenant to its upstream through one pooled client session."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics):
        self.session = session
        self.metrics = metrics
        self._timeouts: dict[tuple[float, float], ClientTimeout] = {}

    def timeout_for(self, tenant: Tenant) -> ClientTimeout:
        key = (tenant.timeouts.connect_s, tenant.timeouts.read_s)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = ClientTimeout(total=None, connect=None, sock_connect=key[0], sock_read=key[1])
            self._timeouts[key] = timeout
        return timeout

    async def forward(
        self,
        request: web.Request,
        tenant: Tenant,
        client_ip: str | None,
        forwarded_for: str | None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> web.StreamResponse:
        if VIA_TOKEN in request.headers.get("Via", ""):
            self.metrics.upstream_errors.labels(tenant=tenant.id, kind="loop").inc()
            return error_page(508, "Loop Detected", "This request has already passed through this proxy.")
        headers = upstream_request_headers(request, tenant, client_ip, forwarded_for)
        url = URL(tenant.upstream_origin + request.raw_path, encoded=True)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, tenant, url, headers)

        data = None
        if request.body_exists:
            data = request.content.iter_chunked(CHUNK)
        started = time.perf_counter()
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False,
                timeout=self.timeout_for(tenant), skip_auto_headers=SKIP_AUTO, compress=None,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as err:
            kind = "connect_timeout" if isinstance(err, aiohttp.ConnectionTimeoutError) else "read_timeout"
            return self._failed(tenant, kind, 504, "Gateway Timeout",
                                "The site did not answer in time. Please try again in a moment.")
        except aiohttp.ClientConnectorError:
            return self._failed(tenant, "refused", 502, "Bad Gateway",
                                "The site could not be reached. Please try again in a moment.")
        except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError):
            return self._failed(tenant, "malformed", 502, "Bad Gateway",
                                "The site sent an invalid response.")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError):
            return self._failed(tenant, "reset", 502, "Bad Gateway",
                                "The connection to the site was reset.")
        except aiohttp.ClientError:
            return self._failed(tenant, "other", 502, "Bad Gateway", "The site could not be reached.")
        self.metrics.upstream_time(tenant.id, time.perf_counter() - started)

        async with upstream:
            out_headers = response_headers(upstream, tenant, request)
            for name, value in extra_headers:
                out_headers.add(name, value)
            bodyless = request.method == "HEAD" or upstream.status in BODYLESS_STATUS or upstream.status < 200
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out_headers)
            if bodyless:
                # Keep the upstream's Content-Length on HEAD: it describes the GET body.
                await response.prepare(request)
                await response.write_eof()
                return response
            if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
                response.content_length = upstream.content_length
            else:
                response.headers.popall("Content-Length", None)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as err:
                if isinstance(err, ConnectionResetError) or _client_gone(request):
                    return response  # the visitor went away: nothing more to do
                # The upstream failed after the headers went out: abort, never fake a complete body.
                self.metrics.upstream_errors.labels(tenant=tenant.id, kind="aborted_mid_body").inc()
                log.warning("upstream of tenant %s failed mid-body: %s", tenant.id, type(err).__name__)
                if request.transport is not None:
                    request.transport.abort()
                return response
            except ConnectionResetError:
                return response
            await response.write_eof()
            return response

    def _failed(self, tenant: Tenant, kind: str, status: int, title: str, detail: str) -> web.Response:
        self.metrics.upstream_errors.labels(tenant=tenant.id, kind=kind).inc()
        return error_page(status, title, detail)

    async def _websocket(self, request: web.Request, tenant: Tenant, url: URL,
                         headers: CIMultiDict[str]) -> web.StreamResponse:
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                     "Sec-WebSocket-Protocol", "Content-Length"):
            headers.popall(name, None)
        ws_url = url.with_scheme("wss" if url.scheme == "https" else "ws")
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
            return self._failed(tenant, "refused", 502, "Bad Gateway", "The site could not be reached.")
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (),
                                       autoping=False, max_msg_size=4 * 1024 * 1024)
        await client.prepare(request)

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


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
