"""Baseline for the benchmark: the smallest fair aiohttp streaming reverse proxy.

    python bench/bare_proxy.py --port 8081 --upstream http://127.0.0.1:9001

One pooled `ClientSession` with keep-alive to the upstream; request and response bodies streamed; hop-by-hop
headers (and those named in `Connection`) stripped both ways; the client's Host passed through; redirects
and compressed bodies passed untouched. Nothing else: no routing, metrics, forwarding headers or error
pages. HaloTrack's cost over this baseline is the price of what it adds.

It runs on the same event loop as `halo-proxy serve` (uvloop when installed, `--loop auto`), so that the
comparison measures HaloTrack's code and not the choice of loop; `--loop asyncio` gives asyncio's own.
`--processes N` forks N processes sharing the port with SO_REUSEPORT, as `halo-proxy serve --workers N` does;
the first stops the others when it is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade",
))
SKIP_AUTO = frozenset(("Accept", "Accept-Encoding", "User-Agent", "Content-Type"))
CHUNK = 64 * 1024

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _strip(headers, drop_content_length: bool) -> CIMultiDict[str]:  # type: ignore[no-untyped-def]
    drop = HOP_BY_HOP
    if "Connection" in headers:
        drop = drop | {t.strip().lower() for v in headers.getall("Connection") for t in v.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lname = name.lower()
        if lname in drop or (drop_content_length and lname == "content-length"):
            continue
        out.add(name, value)
    return out


async def handle(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    url = URL(request.app[UPSTREAM] + request.raw_path, encoded=True)
    headers = _strip(request.headers, drop_content_length="Transfer-Encoding" in request.headers)
    data = request.content.iter_chunked(CHUNK) if request.body_exists else None
    try:
        upstream = await session.request(request.method, url, headers=headers, data=data, allow_redirects=False,
                                         skip_auto_headers=SKIP_AUTO, compress=None)
    except aiohttp.ClientError:
        return web.Response(status=502, text="Bad Gateway")
    async with upstream:
        chunked = "Transfer-Encoding" in upstream.headers
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=_strip(upstream.headers, drop_content_length=chunked))
        if request.method == "HEAD" or upstream.status in (204, 304) or upstream.status < 200:
            await response.prepare(request)
            await response.write_eof()
            return response
        if upstream.content_length is not None and not chunked:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    app[SESSION] = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                         auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
    yield
    await app[SESSION].close()


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Bare aiohttp streaming reverse proxy (benchmark baseline).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin URL, e.g. http://127.0.0.1:9001")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop: auto = uvloop when installed, as halo-proxy serve uses (default)")
    parser.add_argument("--processes", type=int, default=1, help="processes sharing the port (default 1)")
    args = parser.parse_args()
    if not 1 <= args.processes <= 64:
        parser.error("--processes must be 1..64")
    children: list[int] = []
    for _ in range(args.processes - 1):
        pid = os.fork()
        if pid == 0:
            children.clear()
            break
        children.append(pid)
    try:
        web.run_app(create_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None,
                    backlog=2048, loop=new_loop(args.loop), reuse_port=args.processes > 1)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    main()
