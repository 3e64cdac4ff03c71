"""Visitor connections: deadlines, a cap per process, and quiet refusals of malformed requests.

aiohttp's server closes an idle keep-alive connection (`keepalive_timeout`, which `create_app` sets from
`server.client.idle_timeout_s`) but has no deadline for a request head: a client trickling a header a byte at a
time holds its connection for as long as it likes, and there is no cap on connections. It also logs every
malformed request as an ERROR traceback with the client's address. `GuardedHandler` adds what is missing:

- a head deadline (`header_timeout_s`) from the connection's start, and from the first byte of each later
  request head, to the end of that head: past it the visitor gets 408 and the connection is closed;
- `max_connections` per process: past it a new connection is answered 503 and closed at once;
- malformed requests counted by reason (`halo_bad_requests_total`) and logged as one rate-limited warning line
  without the visitor's address; real handler failures still log their traceback, without the address.

Request bodies have their own progress deadline (`body_timeout_s`) where they are read: the upstream client for
proxied requests, `routes/common.py` for HaloTrack's own. `ListenerRunner` is `web.AppRunner` with this handler; `serve`
and the tests of this module use it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from ..config import ClientSettings
from ..metrics import Metrics

log = logging.getLogger(__name__)

REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
           b"Content-Type: text/plain\r\nContent-Length: 20\r\n\r\nToo many connections")
HEAD_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 31\r\n\r\nThe request head took too long.")
WARN_EVERY_S = 10.0


class Guard:
    """What every connection of one listener shares: the limits, the count of open connections, the metrics,
    and the rate limit of bad-request warnings."""

    def __init__(self, settings: ClientSettings, metrics: Metrics, clock=time.monotonic):  # type: ignore[no-untyped-def]
        self.settings = settings
        self.metrics = metrics
        self.open = 0
        self._clock = clock
        self._warned_at = float("-inf")
        self._suppressed = 0
        self._reasons: dict[str, Any] = {}

    def bad_request(self, reason: str, status: int) -> None:
        child = self._reasons.get(reason)
        if child is None:
            child = self._reasons[reason] = self.metrics.bad_requests.labels(reason=reason)
        child.inc()
        now = self._clock()
        if now - self._warned_at < WARN_EVERY_S:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
        log.warning("refused a malformed request with %d: %s%s", status, reason, more)
        self._warned_at = now
        self._suppressed = 0


def bad_request_reason(exc: BaseException | None) -> str:
    """A closed set of labels for what aiohttp's parser refused."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return "too_long"
    if isinstance(exc, (http_exceptions.BadHttpMethod, http_exceptions.BadStatusLine)):
        return "request_line"
    if isinstance(exc, http_exceptions.InvalidHeader):
        return "header"
    if isinstance(exc, (http_exceptions.TransferEncodingError, http_exceptions.ContentLengthError)):
        return "framing"
    return "malformed"


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler with a head deadline, a connection cap and quiet bad-request handling."""

    __slots__ = ("_guard", "_head_timer", "_refused", "_counted")

    def __init__(self, manager: web.Server, *, guard: Guard, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.settings.max_connections:
            self._refused = True
            guard.metrics.connections_refused.inc()
            transport.write(REFUSED)  # type: ignore[attr-defined]
            transport.close()
            return
        guard.open += 1
        self._counted = True
        guard.metrics.connections_open.inc()
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._cancel_head_timer()
        if self._counted:
            self._counted = False
            self._guard.open -= 1
            self._guard.metrics.connections_open.dec()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        before = self._request_count
        idle = self._waiter is not None and not self._messages
        super().data_received(data)
        if self._request_count != before:
            self._cancel_head_timer()  # a whole head arrived
        elif idle and self._head_timer is None and not self._upgraded:
            self._arm_head_timer()  # the first bytes of the next request's head

    def _arm_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._guard.settings.header_timeout_s, self._on_head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self._force_close or self.transport is None:
            return
        self._guard.metrics.connection_timeouts.labels(kind="header").inc()
        self.transport.write(HEAD_TIMEOUT)
        self.force_close()

    def _process_keepalive(self) -> None:
        was_closed = self._force_close
        super()._process_keepalive()
        if self._force_close and not was_closed:
            self._guard.metrics.connection_timeouts.labels(kind="idle").inc()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's error answer, logged without the visitor's address: a malformed request is a counted,
        rate-limited warning line; a failure of HaloTrack's own code keeps its traceback."""
        if status >= 500:
            self._guard.bad_request("internal", status)
            log.error("unhandled error while answering a request", exc_info=exc)
        else:
            self._guard.bad_request(bad_request_reason(exc), status)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had begun; the connection is closed instead")
        # A fixed text: aiohttp's own message quotes the offending request bytes back to the visitor.
        text = "500 Internal Server Error" if status >= 500 else f"{status} Bad Request"
        response = web.Response(status=status, text=text, content_type="text/plain")
        response.force_close()
        return response


class GuardedServer(web.Server):
    def __init__(self, *args: Any, guard: Guard, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class ListenerRunner(web.AppRunner):
    """`web.AppRunner` whose connections are `GuardedHandler`s."""

    def __init__(self, app: web.Application, *, client: ClientSettings, metrics: Metrics, **kwargs: Any):
        super().__init__(app, **kwargs)
        self.guard = Guard(client, metrics)

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return GuardedServer(base.request_handler, request_factory=base.request_factory,
                             handler_cancellation=base.handler_cancellation, loop=base._loop,
                             guard=self.guard, **base._kwargs)


def self_check() -> dict[str, Any]:
    """The aiohttp version and whether its C (llhttp) request parser and header writer are in use; logged at
    start. The pure-Python fallbacks work but are slower and not the parser HaloTrack is tested against."""
    from aiohttp import http_parser, http_writer

    c_parser = getattr(http_parser, "HttpRequestParserC", None)
    c_writer = getattr(http_writer, "_c_serialize_headers", None)
    facts = {
        "aiohttp": aiohttp.__version__,
        "c_parser": c_parser is not None and http_parser.HttpRequestParser is c_parser,
        "c_writer": c_writer is not None and http_writer._serialize_headers is c_writer,
    }
    if facts["c_parser"] and facts["c_writer"]:
        log.info("aiohttp %s with its C request parser (llhttp) and header writer", facts["aiohttp"])
    else:
        log.warning("aiohttp %s is running its pure-Python parser or writer (AIOHTTP_NO_EXTENSIONS set, or the "
                    "C extensions missing); requests are still parsed strictly, but slower", facts["aiohttp"])
    return facts
