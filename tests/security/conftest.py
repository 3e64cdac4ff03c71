"""Fixtures for the security corpus: the recording upstream, the real proxy in front of it, a raw client.

- `recorder`: a `Recorder` (tests/security/recorder.py) on 127.0.0.1, fresh for every case.
- `live_proxy`: the app `halo_proxy.app.create_app` builds for one tenant `shop` (host `shop.localhost`)
  whose upstream is the recorder, listening on 127.0.0.1. `await live_proxy.stop()` shuts it down; a case
  does so before it checks the recorder, so every upstream connection has been closed by the proxy and all
  the bytes it ever sent have arrived (no sleeps, no guessing when the proxy is done).
- `exchange(port, data)`: send exact bytes on one connection and read every response until the proxy
  closes, resets, or stays silent for `read_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from halo_proxy.app import CONFIG, METRICS, create_app
from halo_proxy.config import parse
from halo_proxy.edge.connections import ListenerRunner
from halo_proxy.metrics import Metrics
from tests.security.recorder import Recorder

HOST = "shop.localhost"


def proxy_settings(upstream_port: int):  # type: ignore[no-untyped-def]
    # 127.0.0.1 (where the corpus connects from) is deliberately NOT a trusted proxy.
    text = f"""
server:
  trusted_proxies: [10.0.0.0/8]
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    timeouts: {{connect_s: 0.5, read_s: 1.0}}
"""
    return parse(text, "test.yaml", {})


@dataclass
class Listener:
    port: int
    close: Callable[[], Awaitable[None]]


async def start_proxy(app: web.Application) -> Listener:
    """Serve `app` on 127.0.0.1, an ephemeral port, with the production listener (`ListenerRunner`: head
    deadline, connection cap, quiet bad-request handling), so the corpus meets exactly what `serve` runs."""
    runner = ListenerRunner(app, client=app[CONFIG].current.server.client, metrics=app[METRICS], access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Listener(port, runner.cleanup)


@dataclass
class LiveProxy:
    port: int
    app: web.Application
    _listener: Listener
    _stopped: bool = False

    async def stop(self) -> None:
        """Stop serving and close every connection (the upstream pool included). Idempotent."""
        if not self._stopped:
            self._stopped = True
            await self._listener.close()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    server = await Recorder().start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def live_proxy(recorder: Recorder) -> AsyncIterator[LiveProxy]:
    app = create_app(proxy_settings(recorder.port), Metrics())
    listener = await start_proxy(app)
    proxy = LiveProxy(listener.port, app, listener)
    try:
        yield proxy
    finally:
        await proxy.stop()


# ---------------------------------------------------------------------------------------------------------
# The raw client.


@dataclass
class Response:
    status: int
    head: bytes
    body: bytes


@dataclass
class Exchange:
    """What the client read on its one connection."""

    responses: list[Response] = field(default_factory=list)  # final responses, in order
    interim: list[int] = field(default_factory=list)  # 1xx statuses
    raw: bytes = b""
    rest: bytes = b""  # bytes after the last complete response (a partial or garbled one)
    ended: str = ""  # "closed", "reset" or "timeout": how reading stopped
    write_error: str = ""

    @property
    def statuses(self) -> list[int]:
        return [response.status for response in self.responses]

    def describe(self) -> str:
        lines = [f"client: statuses {self.statuses} (interim {self.interim}), reading ended by {self.ended}"
                 + (f", write failed: {self.write_error}" if self.write_error else "")]
        for response in self.responses:
            first = response.head.split(b"\r\n", 1)[0]
            lines.append(f"  {first.decode('latin-1')} | body {response.body[:120]!r}")
        if self.rest:
            lines.append(f"  unparsed rest: {self.rest[:200]!r}")
        return "\n".join(lines)


_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?$")


def _parse_response(buf: bytes, closed: bool) -> tuple[Response, int] | None:
    """The first response in `buf` and its length; None when incomplete (or not a response at all)."""
    end = buf.find(b"\r\n\r\n")
    if end == -1:
        return None
    head = buf[: end + 4]
    lines = head[:-4].split(b"\r\n")
    match = _STATUS_LINE.match(lines[0])
    if not match:
        return None
    status = int(match.group(1))
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    pos = end + 4
    if 100 <= status < 200 or status in (204, 304):
        return Response(status, head, b""), pos
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol == -1:
                return None
            size = int(buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", pos - 2)
                if trailer_end == -1:
                    return None
                return Response(status, head, body), trailer_end + 4
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos: pos + size]
            pos += size + 2
    if b"content-length" in fields:
        length = int(fields[b"content-length"])
        if len(buf) < pos + length:
            return None
        return Response(status, head, buf[pos: pos + length]), pos + length
    if not closed:
        return None  # a body delimited by the close: complete only once the connection has ended
    return Response(status, head, buf[pos:]), len(buf)


def parse_responses(raw: bytes, closed: bool, into: Exchange) -> None:
    pos = 0
    while pos < len(raw):
        parsed = _parse_response(raw[pos:], closed)
        if parsed is None:
            break
        response, used = parsed
        pos += used
        if 100 <= response.status < 200:
            into.interim.append(response.status)
        else:
            into.responses.append(response)
    into.rest = raw[pos:]


async def exchange(port: int, data: bytes, *, read_timeout_s: float = 2.0) -> Exchange:
    """Send `data` on one new connection, then read until the proxy closes it, resets it, or sends nothing for
    `read_timeout_s`. Cases end their last request with `Connection: close`, so a well-behaved proxy closes
    and no case waits out the timeout."""
    result = Exchange()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = bytearray()
    try:
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError as err:  # the proxy answered and closed before taking everything
            result.write_error = type(err).__name__
        while True:
            try:
                async with asyncio.timeout(read_timeout_s):
                    chunk = await reader.read(65536)
            except TimeoutError:
                result.ended = "timeout"
                break
            except ConnectionError:
                result.ended = "reset"
                break
            if not chunk:
                result.ended = "closed"
                break
            raw += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    result.raw = bytes(raw)
    parse_responses(result.raw, result.ended != "timeout", result)
    return result
