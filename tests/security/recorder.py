"""A recording upstream for the security corpus: a raw asyncio TCP server that keeps every byte it receives.

It parses what the proxy sends with its own deliberately strict HTTP/1.1 parser (written here, no aiohttp,
no httptools), framing each request by Content-Length or chunked coding alone, and answers every complete
request with the same fixed 200 (keep-alive). Anything it cannot frame is kept as the connection's
`leftover` (with `error` saying why when it is malformed rather than merely incomplete): the corpus treats
leftover bytes as a failure, since they are what a second parser would read as a smuggled request.

Strictness, on purpose stricter than a typical origin:
  - every line ends in CRLF (bare LF or bare CR in the head is an error);
  - request line `METHOD SP TARGET SP HTTP/1.x`; header names are tokens, no whitespace before the colon,
    no obs-fold, no NUL/CR/LF/CTL in values (obs-text 0x80-0xFF allowed);
  - exactly one Host; at most one Content-Length (digits only); at most one Transfer-Encoding, which must be
    exactly `chunked`; never both Content-Length and Transfer-Encoding;
  - chunk sizes are 1-16 hex digits, optionally followed by `;extensions`; every chunk ends in CRLF.
A malformed request closes the connection at once, so the proxy does not sit out its read timeout.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TARGET = re.compile(rb"^[\x21-\x7e]+$")
_VERSION = re.compile(rb"^HTTP/1\.[01]$")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB
_DIGITS = re.compile(rb"^[0-9]+$")
_CHUNK_LINE = re.compile(rb"^([0-9A-Fa-f]{1,16})(;[\x09\x20-\x7e\x80-\xff]*)?$")


class Malformed(Exception):
    """The bytes can never become a valid request (as opposed to: more bytes are needed)."""


@dataclass
class Request:
    """One request the upstream parsed, as it arrived."""

    connection: int
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]  # in order, name as sent, value without surrounding OWS
    body: bytes  # de-chunked when sent chunked
    head: bytes  # the raw request line and header block, up to and including the blank line
    chunked: bool = False
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def values(self, name: str) -> list[bytes]:
        """Every value of header `name` (case-insensitive), in order."""
        wanted = name.lower().encode()
        return [value for key, value in self.headers if key.lower() == wanted]

    def describe(self) -> str:
        lines = [f"  #{self.connection} {self.method.decode('latin-1')} {self.target.decode('latin-1')} "
                 f"{self.version.decode('latin-1')} ({'chunked' if self.chunked else 'length'}, "
                 f"{len(self.body)} body bytes)"]
        lines += [f"      {k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in self.headers]
        if self.body:
            lines.append(f"      body: {self.body[:200]!r}{' ...' if len(self.body) > 200 else ''}")
        return "\n".join(lines)


@dataclass
class Connection:
    """Everything one upstream connection carried."""

    index: int
    raw: bytearray = field(default_factory=bytearray)
    buffer: bytearray = field(default_factory=bytearray)  # received, not yet part of a parsed request
    error: str | None = None  # why the buffer is malformed, when it is
    leftover: bytes = b""  # set when the connection ends (or is found malformed): bytes that framed nothing
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def _check_head_bytes(data: bytes | bytearray) -> None:
    """Bare LF or bare CR anywhere in (a prefix of) a head is an error; a CR at the very end may be half a CRLF."""
    for match in re.finditer(rb"\r(?!\n)|(?<!\r)\n", data):
        if match.group() == b"\r" and match.start() == len(data) - 1:
            continue
        kind = "CR" if match.group() == b"\r" else "LF"
        raise Malformed(f"bare {kind} at offset {match.start()} of the head")


def _parse_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise Malformed(f"obs-fold line {line[:60]!r}")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise Malformed(f"bad header line {line[:60]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise Malformed(f"control character in the value of {name!r}: {value[:60]!r}")
        fields.append((name, value))
    return fields


def parse_one(buf: bytes | bytearray, connection: int = 0) -> tuple[Request, int] | None:
    """The first request in `buf` and the bytes it used, None if it is not complete yet; `Malformed` if it
    never can be."""
    end = buf.find(b"\r\n\r\n")
    if end == -1:
        _check_head_bytes(buf)
        return None
    head = bytes(buf[: end + 4])
    _check_head_bytes(head[:-4])
    request_line, *field_lines = head[:-4].split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _TARGET.match(parts[1]) or not _VERSION.match(parts[2]):
        raise Malformed(f"bad request line {request_line[:80]!r}")
    method, target, version = parts
    headers = _parse_fields(field_lines)
    names = [name.lower() for name, _ in headers]
    if names.count(b"host") != 1:
        raise Malformed(f"{names.count(b'host')} Host headers")
    te = [value for name, value in headers if name.lower() == b"transfer-encoding"]
    cl = [value for name, value in headers if name.lower() == b"content-length"]
    if te and cl:
        raise Malformed("both Transfer-Encoding and Content-Length")
    if len(te) > 1 or len(cl) > 1:
        raise Malformed("repeated Transfer-Encoding or Content-Length")
    request = Request(connection, method, target, version, headers, b"", head)
    pos = end + 4
    if te:
        if te[0].lower() != b"chunked":
            raise Malformed(f"Transfer-Encoding {te[0]!r}")
        request.chunked = True
        return _parse_chunked(buf, pos, request)
    if cl:
        if not _DIGITS.match(cl[0]):
            raise Malformed(f"Content-Length {cl[0]!r}")
        length = int(cl[0])
        if len(buf) - pos < length:
            return None
        request.body = bytes(buf[pos: pos + length])
        return request, pos + length
    return request, pos


def _parse_chunked(buf: bytes | bytearray, pos: int, request: Request) -> tuple[Request, int] | None:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol == -1:
            _check_head_bytes(buf[pos:])
            if len(buf) - pos > 4096:
                raise Malformed("chunk-size line longer than 4 KiB")
            return None
        line = bytes(buf[pos:eol])
        _check_head_bytes(line)
        match = _CHUNK_LINE.match(line)
        if not match:
            raise Malformed(f"bad chunk-size line {line[:60]!r}")
        size = int(match.group(1), 16)
        pos = eol + 2
        if size == 0:
            break
        if len(buf) - pos < size + 2:
            return None
        body += buf[pos: pos + size]
        if buf[pos + size: pos + size + 2] != b"\r\n":
            raise Malformed(f"chunk of {size} bytes not followed by CRLF")
        pos += size + 2
    # The trailer section: fields until an empty line.
    end = buf.find(b"\r\n\r\n", pos - 2)
    if end == -1:
        _check_head_bytes(buf[pos:])
        return None
    trailer_block = bytes(buf[pos: end])
    request.trailers = _parse_fields(trailer_block.split(b"\r\n")) if trailer_block else []
    request.body = bytes(body)
    return request, end + 4


class _Protocol(asyncio.Protocol):
    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self.conn = Connection(len(recorder.connections))
        recorder.connections.append(self.conn)
        recorder.protocols.append(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.raw += data
        if conn.error is not None:
            return
        conn.buffer += data
        while conn.buffer:
            try:
                parsed = parse_one(conn.buffer, conn.index)
            except Malformed as err:
                conn.error = str(err)
                conn.leftover = bytes(conn.buffer)
                assert self.transport is not None
                self.transport.close()
                return
            if parsed is None:
                return
            request, used = parsed
            del conn.buffer[:used]
            self.recorder.requests.append(request)
            assert self.transport is not None
            self.transport.write(RESPONSE)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.error is None:
            self.conn.leftover = bytes(self.conn.buffer)
        self.conn.closed.set()


class Recorder:
    """The server: `requests` parsed in arrival order (all connections), `connections` with their raw bytes."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.connections: list[Connection] = []
        self.protocols: list[_Protocol] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Recorder:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Protocol(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for protocol in self.protocols:
                if protocol.transport is not None:
                    protocol.transport.abort()
            await self.server.wait_closed()

    async def settled(self, within_s: float = 2.0) -> bool:
        """Wait until every connection has been closed by its peer (the proxy, once stopped). False if some
        connection is still open after `within_s`."""
        try:
            async with asyncio.timeout(within_s):
                for conn in list(self.connections):
                    await conn.closed.wait()
        except TimeoutError:
            return False
        return True

    # What the checks read.

    @property
    def received(self) -> int:
        """Bytes received over all connections."""
        return sum(len(conn.raw) for conn in self.connections)

    def leftovers(self) -> list[Connection]:
        """Connections that carried bytes which framed no complete request, or malformed ones."""
        return [conn for conn in self.connections if conn.leftover or conn.buffer or conn.error]

    def describe(self) -> str:
        """What the upstream saw, for a failure message."""
        if not self.connections:
            return "upstream: no connection at all"
        lines = [f"upstream: {len(self.connections)} connection(s), {len(self.requests)} request(s) parsed, "
                 f"{self.received} bytes"]
        lines += [request.describe() for request in self.requests]
        for conn in self.connections:
            rest = conn.leftover or bytes(conn.buffer)
            if rest or conn.error:
                lines.append(f"  #{conn.index} LEFTOVER {len(rest)} bytes"
                             f"{' (' + conn.error + ')' if conn.error else ''}: {rest[:300]!r}")
        return "\n".join(lines)
