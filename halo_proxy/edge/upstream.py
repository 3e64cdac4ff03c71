"""The upstream client: HTTP/1.1 to the client's site over pooled keep-alive connections, bodies streamed.

A general HTTP client does a lot on every request that a reverse proxy never needs (URL objects, cookie jars,
redirect handling, tracing hooks, a timer per read). This one does only the proxy's exchange, on asyncio
protocols, with httptools (llhttp, the parser Node.js uses) reading the responses:

- the request head is written in one call; a request body (Content-Length or chunked) is streamed with
  backpressure, and an upstream that answers before reading it all (413, 401 ...) is answered at once;
- response bodies are buffered only up to `HIGH_WATER`: above it the upstream socket stops being read until the
  visitor has taken the bytes, so memory stays flat whatever the size;
- one timer per exchange implements the read timeout as "no progress for `read_s`": it is re-armed lazily, not
  on every read, and a visitor reading slowly never counts as a silent upstream;
- interim responses (100 Continue, 103 Early Hints) are dropped; bodies of HEAD, 1xx, 204 and 304 are empty;
  a body without framing ends when the upstream closes;
- a connection goes back to the pool only after a complete exchange that both sides agreed to keep alive;
  idle connections are closed after `keepalive_s`, newest reused first;
- a request without a body that meets a pooled connection the upstream had just closed is sent once more on
  a new connection (RFC 9110 9.2.2 allows it for idempotent methods; nothing reached the upstream);
- failures are `UpstreamError`s with a `kind`: connect_timeout, read_timeout, refused, tls, reset, malformed, and
  client_body / client_timeout when the visitor's own request body was broken or stalled (for `body_timeout`,
  by default `read_timeout`).

WebSocket upgrades do not come here: the proxy hands them to aiohttp's client.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
from collections.abc import AsyncIterable
from dataclasses import dataclass

import httptools

HIGH_WATER = 256 * 1024  # buffered response bytes at which the upstream socket is paused
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))


class UpstreamError(Exception):
    """An exchange with the upstream failed; `kind` says how (a closed set, used as a metric label)."""

    def __init__(self, kind: str, detail: str = "", *, retryable: bool = False):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a tenant's upstream lives (the config allows an origin only, no path)."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@functools.lru_cache(maxsize=256)
def parse_origin(url: str) -> Origin:
    """`http://shop.internal:8080` -> Origin. The config has validated the URL already."""
    from yarl import URL

    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ValueError(f"not an http(s) origin: {url!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return Origin(parsed.scheme, parsed.raw_host, port)


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and headers as bytes. Values come from aiohttp's parser (utf-8 with surrogate escapes,
    so undecodable bytes go back out unchanged) or from HaloTrack itself; neither holds CR or LF."""
    parts = [method, " ", target, " HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


class UpstreamResponse:
    """Status, reason and headers of the upstream's answer, and its body as it arrives."""

    __slots__ = ("status", "reason", "headers", "keep_alive", "latin1", "_conn", "_chunks", "_size", "_eof",
                 "_error", "_waiter")

    def __init__(self, conn: _Connection, status: int, reason: str, headers: list[tuple[str, str]],
                 keep_alive: bool):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self.latin1 = False  # header text decoded as latin-1 because its bytes are not UTF-8
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # Fed by the connection.

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if not self._eof and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Read by the proxy.

    def at_eof(self) -> bool:
        """The whole body has arrived and has been read."""
        return self._eof and not self._chunks

    def read_nowait(self) -> bytes:
        """Every body byte that has arrived and not been read yet (b"" when none)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._conn.resume_reading()
        return data

    async def read(self) -> bytes:
        """The next body bytes; b"" at the end. Raises `UpstreamError` when the body cannot be completed."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.read_nowait()

    def release(self) -> None:
        """Done with this response: its connection goes back to the pool, or is closed when it cannot."""
        self._conn.finish()


class _Connection(asyncio.Protocol):
    """One connection to an upstream; one exchange at a time."""

    def __init__(self, pool: UpstreamPool, origin: Origin):
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False  # has completed an exchange before (a stale keep-alive may be closed under us)
        self.idle_since = 0.0
        # The current exchange.
        self.parser: httptools.HttpResponseParser | None = None
        self.head_only = False
        self.headers_waiter: asyncio.Future[UpstreamResponse] | None = None
        self.response: UpstreamResponse | None = None
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.interim = False
        self.done = False  # the response message is complete
        self.until_close = False  # the body has no framing: it ends when the upstream closes
        self.received = False  # any byte of this exchange's response has arrived
        self.sender: asyncio.Task[bool] | None = None
        self.error: UpstreamError | None = None
        self.read_timeout = 30.0
        self.body_timeout = 30.0
        self.last_progress = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.waiting_for_visitor = False  # the request body sender waits for the visitor's next bytes
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.done:
            # Bytes nobody asked for (a body after a HEAD answer, or while idle): the connection is not reusable.
            self._close()
            return
        self.received = True
        self.last_progress = self.loop.time()
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as err:
            if not self.done:
                self._fail(UpstreamError("malformed", str(err) or type(err).__name__))
            self._close()

    def eof_received(self) -> bool:
        # The upstream will send nothing more: a body without framing is complete, an unfinished answer has
        # failed now (not after the read timeout), and the connection is dropped at once, unsent bytes and all.
        if self.parser is not None and not self.done:
            if self.response is not None and self.until_close:
                self._complete()
            else:
                self._fail(UpstreamError("reset", "the upstream closed the connection",
                                         retryable=self.used and not self.received))
        self._close()
        return True  # _close has aborted the transport; asyncio must not close it a second time

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.parser is not None and not self.done:
            if self.response is not None and self.until_close and exc is None:
                self._complete()
            else:
                detail = "the upstream closed the connection" if exc is None else type(exc).__name__
                self._fail(UpstreamError("reset", detail, retryable=self.used and not self.received))
        self._cancel_timer()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamError("reset", "the upstream closed the connection"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_progress = self.loop.time()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # httptools callbacks.

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if self.response is not None:
            raise ValueError("a second response without a request")
        if status < 200:
            if status == 101:
                raise ValueError("101 Switching Protocols without an upgrade request")
            self.interim = True  # 100 Continue, 103 Early Hints: the final response follows
            self.raw_headers = []
            self.reason = b""
            return
        # UTF-8 when the bytes are UTF-8 (aiohttp writes such text back byte for byte); else latin-1, which maps
        # every byte to one character, and the proxy encodes the head back the same way.
        latin1 = False
        try:
            headers = [(name.decode("ascii"), value.decode("utf-8")) for name, value in self.raw_headers]
            reason = self.reason.decode("utf-8")
        except UnicodeDecodeError:
            latin1 = True
            headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self.raw_headers]
            reason = self.reason.decode("latin-1")
        if self.head_only:
            keep_alive = _keeps_alive(parser.get_http_version(), headers)
        else:
            keep_alive = parser.should_keep_alive()
            self.until_close = status not in (204, 304) and not _framed(headers)
        response = UpstreamResponse(self, status, reason, headers, keep_alive)
        response.latin1 = latin1
        self.response = response
        if self.head_only:
            self._complete()  # a HEAD answer has no body whatever its headers say
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not self.done:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.done:
            self._complete()

    # The exchange.

    def begin(self, head: bytes, head_only: bool, read_timeout: float,
              body_timeout: float | None = None) -> asyncio.Future[UpstreamResponse]:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.response = None
        self.reason = b""
        self.raw_headers = []
        self.interim = self.done = self.until_close = self.received = False
        self.error = None
        self.sender = None
        self.read_timeout = read_timeout
        self.body_timeout = read_timeout if body_timeout is None else body_timeout
        self.headers_waiter = waiter = self.loop.create_future()
        self.last_progress = now = self.loop.time()
        self.timer = self.loop.call_at(now + min(read_timeout, self.body_timeout), self._on_timer)
        assert self.transport is not None
        self.transport.write(head)
        return waiter

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamError("reset", "the upstream closed the connection")
        if self.write_paused:
            self.drain_waiter = self.loop.create_future()
            try:
                await self.drain_waiter
            finally:
                self.drain_waiter = None

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self.last_progress = self.loop.time()
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def finish(self) -> None:
        """The proxy is done with the response: back to the pool when the exchange is complete, else closed."""
        sender = self.sender
        # Reusable only when the whole request went out: an upstream that answered early (413) and kept the
        # connection alive would read the rest of the body as the next request.
        sender_ok = sender is None or (sender.done() and not sender.cancelled() and sender.result() is True)
        if sender is not None and not sender.done():
            sender.cancel()
        response = self.response
        if (self.done and not self.closed and sender_ok and response is not None and response.keep_alive
                and self.error is None):
            self.used = True
            if self.reading_paused:  # the answer ended above the buffer mark and was left unread
                self.resume_reading()
            self.parser = None
            self.response = None
            self.headers_waiter = None
            self.sender = None
            self.pool._put_idle(self)
        else:
            self._close()

    def _complete(self) -> None:
        self.done = True
        self._cancel_timer()
        if self.response is not None:
            self.response._feed_eof()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._cancel_timer()
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.response is not None:
            self.response._fail(error)

    def _on_timer(self) -> None:
        self.timer = None
        if self.done or self.closed:
            return
        now = self.loop.time()
        if self.reading_paused:  # the visitor is reading slowly; the upstream is not silent
            self.last_progress = now
        visitor = self.waiting_for_visitor  # the upstream waits for us: the visitor's upload is what is slow
        deadline = self.last_progress + (self.body_timeout if visitor else self.read_timeout)
        if now < deadline:
            # Checked again within the shorter of the two limits, since who is waiting for whom can change.
            self.timer = self.loop.call_at(min(deadline, now + min(self.read_timeout, self.body_timeout)),
                                           self._on_timer)
            return
        if visitor:
            self._fail(UpstreamError("client_timeout", f"no request body bytes for {self.body_timeout:g} s"))
        else:
            self._fail(UpstreamError("read_timeout", f"no progress for {self.read_timeout:g} s"))
        self._close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _close(self) -> None:
        # abort, not close: close would wait for a write buffer the upstream may never read.
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.pool._forget(self)


def _framed(headers: list[tuple[str, str]]) -> bool:
    """Whether the body's end is known from the headers: a Content-Length, or chunked as the last transfer
    coding (RFC 9112 6.3: any other Transfer-Encoding on a response means the body ends at close)."""
    framed = False
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            framed = True
        elif lname == "transfer-encoding":
            framed = value.rsplit(",", 1)[-1].strip().lower() == "chunked"
    return framed


def _keeps_alive(version: str, headers: list[tuple[str, str]]) -> bool:
    tokens = {t.strip().lower() for name, value in headers if name.lower() == "connection"
              for t in value.split(",")}
    if "close" in tokens:
        return False
    return version != "1.0" or "keep-alive" in tokens


class UpstreamPool:
    """Keep-alive connections to every upstream of this process, and the exchanges over them."""

    def __init__(self, *, keepalive_s: float = 30.0, max_idle_per_origin: int = 512,
                 ssl_context: ssl.SSLContext | None = None):
        self.loop = asyncio.get_running_loop()
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.connections_opened = 0

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: AsyncIterable[bytes] | None = None,
        *,
        chunked: bool = False,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        body_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send one request and return once the response headers are in. `chunked` frames `body` as chunked.

        The caller must call `release()` on the response when done with it, whatever happens.
        """
        head = request_head(method, target, headers)
        head_only = method == "HEAD"
        retry = body is None and method in IDEMPOTENT
        retried = False
        while True:
            conn = None if retried else self._take_idle(origin)  # a retry never meets a second stale one
            if conn is None:
                conn = await self._connect(origin, connect_timeout)
            waiter = conn.begin(head, head_only, read_timeout, body_timeout)
            if body is not None:
                conn.sender = self.loop.create_task(_send_body(conn, body, chunked))
            try:
                return await waiter
            except UpstreamError as err:
                conn.finish()
                if retry and err.retryable and not retried:
                    retried = True
                    continue
                raise
            except BaseException:
                conn.finish()
                raise

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_allowed = self.loop.time() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since >= oldest_allowed:
                return conn
            conn._close()
        return None

    def _put_idle(self, conn: _Connection) -> None:
        if self._closed:
            conn._close()
            return
        conn.idle_since = self.loop.time()
        idle = self._idle.setdefault(conn.origin, [])
        idle.append(conn)
        if len(idle) > self.max_idle:
            idle.pop(0)._close()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.keepalive_s, self._sweep)

    def _forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        oldest_allowed = self.loop.time() - self.keepalive_s
        for idle in list(self._idle.values()):
            for conn in [c for c in idle if c.idle_since < oldest_allowed]:
                conn._close()
        if any(self._idle.values()):
            self._sweeper = self.loop.call_later(self.keepalive_s / 2, self._sweep)

    async def _connect(self, origin: Origin, within_s: float) -> _Connection:
        try:
            async with asyncio.timeout(within_s):
                if origin.tls:
                    context = self._ssl if self._ssl is not None else _default_tls()
                    _, conn = await self.loop.create_connection(
                        lambda: _Connection(self, origin), origin.host, origin.port, ssl=context,
                        server_hostname=origin.host)
                else:
                    _, conn = await self.loop.create_connection(
                        lambda: _Connection(self, origin), origin.host, origin.port)
        except TimeoutError:
            raise UpstreamError("connect_timeout", f"no connection within {within_s:g} s") from None
        except ssl.SSLError as err:
            raise UpstreamError("tls", str(err)) from None
        except OSError as err:
            raise UpstreamError("refused", f"{type(err).__name__}: {err}") from None
        self.connections_opened += 1
        return conn

    def idle_count(self, origin: Origin | None = None) -> int:
        if origin is not None:
            return len(self._idle.get(origin, ()))
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn._close()
        self._idle.clear()


@functools.lru_cache(maxsize=1)
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


async def _send_body(conn: _Connection, body: AsyncIterable[bytes], chunked: bool) -> bool:
    """Stream the visitor's request body upstream, as received, with the upstream's backpressure. True when
    all of it was sent."""
    transport = conn.transport
    assert transport is not None
    chunks = body.__aiter__()
    try:
        while True:
            conn.waiting_for_visitor = True
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            finally:
                conn.waiting_for_visitor = False
            if conn.closed or conn.done:
                return False  # the upstream answered (or went away) without reading it all
            if not chunk:
                continue
            if chunked:
                transport.writelines((f"{len(chunk):x}\r\n".encode(), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            conn.last_progress = conn.loop.time()
            if conn.write_paused:
                await conn.drain()
        if conn.closed:
            return False
        if chunked:
            transport.write(b"0\r\n\r\n")
        return True
    except UpstreamError:
        return False  # the exchange has failed already; the proxy sees it on the response side
    except asyncio.CancelledError:
        raise
    except Exception as err:  # the visitor's body broke (bad chunked framing, disconnect): the exchange fails
        conn._fail(UpstreamError("client_body", type(err).__name__))
        conn._close()
        return False
