"""A real upstream site for proxy tests, raw-socket servers that misbehave on purpose, and scripted upstreams
whose handlers write exact bytes (`scripted`)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

SEEN = web.AppKey("seen", list)
CONNECTIONS = web.AppKey("connections", set)


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_sha256: str = ""
    body_len: int = 0
    peer: tuple = field(default_factory=tuple)


def create_upstream() -> web.Application:
    # Bodies are echoed as they arrive, not decoded: what the proxy forwards is what is measured.
    app = web.Application(client_max_size=1024**2, handler_args={"auto_decompress": False, "max_field_size": 32 * 1024})
    app[SEEN] = []
    app[CONNECTIONS] = set()

    def record(request: web.Request, digest: str = "", length: int = 0) -> Seen:
        peer = request.transport.get_extra_info("peername") if request.transport else ()
        seen = Seen(request.method, request.raw_path, list(request.headers.items()), digest, length, peer)
        request.app[SEEN].append(seen)
        request.app[CONNECTIONS].add(peer)
        return seen

    async def echo(request: web.Request) -> web.Response:
        hasher = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            hasher.update(chunk)
            length += len(chunk)
        seen = record(request, hasher.hexdigest(), length)
        return web.json_response({
            "method": seen.method, "raw_path": seen.raw_path, "headers": seen.headers,
            "sha256": seen.body_sha256, "length": length,
        })

    async def page(request: web.Request) -> web.Response:
        record(request)
        return web.Response(text="<!doctype html><html><body><h1>Hello</h1></body></html>",
                            content_type="text/html")

    async def cookies(request: web.Request) -> web.Response:
        record(request)
        resp = web.Response(text="cookies")
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/")
        resp.headers.add("Set-Cookie", "c=3; HttpOnly")
        if request.query.get("dashboard"):  # an upstream trying to plant HaloTrack's dashboard session
            resp.headers.add("Set-Cookie", " halo_dashboard=planted; Path=/_halo/dashboard; HttpOnly")
        return resp

    async def hop(request: web.Request) -> web.Response:
        record(request)
        resp = web.Response(text="hop")
        resp.headers["Connection"] = "X-Bar"
        resp.headers["X-Bar"] = "secret"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["X-Kept"] = "yes"
        return resp

    async def redirect(request: web.Request) -> web.Response:
        record(request)
        target = request.query.get("to", "/landing")
        return web.Response(status=302, headers={"Location": target})

    async def gzipped(request: web.Request) -> web.Response:
        record(request)
        body = gzip.compress(b"hello compressed world " * 100, mtime=0)
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding",
                                                "Content-Type": "text/plain", "ETag": '"abc"'})

    async def status(request: web.Request) -> web.StreamResponse:
        record(request)
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"ETag": '"v1"'} if code == 304 else None)

    async def big(request: web.Request) -> web.StreamResponse:
        record(request)
        size = int(request.query["bytes"])
        chunk = b"x" * (256 * 1024)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        sent = 0
        while sent < size:
            part = chunk[: min(len(chunk), size - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def chunked(request: web.Request) -> web.StreamResponse:
        record(request)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"part{i};".encode())
        await resp.write_eof()
        return resp

    async def truncated(request: web.Request) -> web.StreamResponse:
        record(request)
        resp = web.StreamResponse()
        resp.content_length = 100_000
        await resp.prepare(request)
        await resp.write(b"y" * 1000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        record(request)
        sock = web.WebSocketResponse(protocols=("chat",))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-me":
                    await sock.close(code=4001, message=b"bye")
                    break
                await sock.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    app.router.add_get("/page", page)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/hop", hop)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/gzip", gzipped)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/big", big)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/truncated", truncated)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@asynccontextmanager
async def raw_server(behaviour: str) -> AsyncIterator[int]:
    """A TCP server on loopback that misbehaves: `hang` (reads, never answers), `reset` (closes at once),
    `garbage` (answers a non-HTTP line), `bad_framing` (Content-Length and Transfer-Encoding together)."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if behaviour == "hang":
            await asyncio.sleep(3600)
        elif behaviour == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.close()
        elif behaviour == "garbage":
            writer.write(b"THIS IS NOT HTTP\r\n\r\n")
            await writer.drain()
            writer.close()
        elif behaviour == "bad_framing":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            await writer.drain()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def blackhole() -> AsyncIterator[int]:
    """A loopback port whose accept queue is full, so a new connect hangs until the client's timeout."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the backlog; further SYNs are dropped
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------------------------------------
# Scripted upstreams: plain TCP servers whose handlers write exact bytes.

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Script"], Awaitable[None]]


@dataclass
class Script:
    """What a scripted server saw: one entry per connection, the raw requests read on it."""

    connections: int = 0
    client_closed: int = 0  # connections the client closed after its last exchange
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    closed_by_peer: list[bool] = field(default_factory=list)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: its head, and its body decoded from Content-Length or chunked framing."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:] if ":" in line}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return head, body
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
    length = int(headers.get("content-length", "0"))
    return head, await reader.readexactly(length)


@asynccontextmanager
async def scripted(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, Script]]:
    script = Script()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        writers.append(writer)
        try:
            await handler(reader, writer, script)
        except (asyncio.IncompleteReadError, ConnectionError):
            script.closed_by_peer.append(True)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1], script
    finally:
        for writer in writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()
