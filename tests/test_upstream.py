"""HaloTrack's upstream client against scripted HTTP/1.1 servers on loopback, byte for byte.

Each server here is a plain asyncio TCP server that writes exactly the bytes a test names, so framing
(Content-Length, chunked, close-delimited), interim answers, keep-alive and its races, timeouts, request bodies,
backpressure and TLS are checked on the wire, not through another HTTP library.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from halo_proxy.edge.upstream import (
    HIGH_WATER,
    Origin,
    UpstreamError,
    UpstreamPool,
    parse_origin,
    request_head,
)
from tests.upstream import Handler, Script, read_request, scripted


def serve_each(*answers: bytes) -> Handler:
    """Answer the requests of a connection in turn with `answers`, then wait for the client to close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        for answer in answers:
            script.requests.append(await read_request(reader))
            writer.write(answer)
            await writer.drain()
        await reader.read()  # until the client closes
        script.client_closed += 1

    return handler


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(keepalive_s=30.0)
    yield pool
    await pool.close()


def origin(port: int, scheme: str = "http") -> Origin:
    return Origin(scheme, "127.0.0.1", port)


async def fetch(pool: UpstreamPool, port: int, method: str = "GET", target: str = "/", body=None,
                headers: tuple[tuple[str, str], ...] = (), **kw):
    """(status, headers, body bytes) of one exchange, the response released afterwards."""
    response = await pool.request(origin(port), method, target, [("Host", "shop.example"), *headers], body, **kw)
    try:
        data = b""
        while chunk := await response.read():
            data += chunk
        return response.status, response.headers, data
    finally:
        response.release()


OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: 1\r\n\r\nhello"


# --------------------------------------------------------------------------------------------------------
# Requests on the wire.


def test_request_head_is_written_as_given_with_undecodable_bytes_restored():
    raw_value = b"caf\xe9".decode("utf-8", "surrogateescape")  # how aiohttp hands over a non-UTF-8 header
    head = request_head("GET", "/a%20b?q=1&q=2", [("Host", "shop.example"), ("X-Raw", raw_value)])
    assert head == b"GET /a%20b?q=1&q=2 HTTP/1.1\r\nHost: shop.example\r\nX-Raw: caf\xe9\r\n\r\n"


def test_origin_parsing_fills_default_ports():
    assert parse_origin("http://127.0.0.1:9001") == Origin("http", "127.0.0.1", 9001)
    assert parse_origin("https://shop.internal/") == Origin("https", "shop.internal", 443)
    assert parse_origin("http://shop.internal") == Origin("http", "shop.internal", 80)
    with pytest.raises(ValueError):
        parse_origin("ftp://shop.internal")


async def test_content_length_body_is_streamed_as_is(pool):
    async def body():
        for part in (b"abc", b"", b"defg"):
            yield part

    async with scripted(serve_each(OK_HELLO)) as (port, script):
        status, _, _ = await fetch(pool, port, "POST", "/form", body(), headers=(("Content-Length", "7"),))
    assert status == 200
    assert script.requests[0][1] == b"abcdefg"


async def test_chunked_body_is_framed_chunked(pool):
    async def body():
        yield b"x" * 10
        yield b"y" * 300

    seen: list[bytes] = []

    async def handler(reader, writer, script):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" not in head  # the caller sets framing headers, not the client
        seen.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(OK_HELLO)
        await writer.drain()
        await reader.read()

    async with scripted(handler) as (port, _):
        status, _, _ = await fetch(pool, port, "POST", "/", body(), chunked=True)
    assert status == 200
    assert seen == [b"a\r\n" + b"x" * 10 + b"\r\n12c\r\n" + b"y" * 300 + b"\r\n0\r\n\r\n"]


async def test_an_early_answer_does_not_wait_for_the_rest_of_the_body(pool):
    sent = 0

    async def endless():
        nonlocal sent
        while True:
            sent += 65536
            yield b"z" * 65536

    async def handler(reader, writer, script):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3600)  # never reads the body

    async with scripted(handler) as (port, script):
        response = await asyncio.wait_for(
            pool.request(origin(port), "POST", "/upload", [], endless(), chunked=True), 10)
        assert response.status == 413
        response.release()
    assert pool.idle_count() == 0  # a half-sent request never goes back to the pool
    assert sent < 64 * 1024 * 1024


async def test_a_connection_with_a_half_sent_body_is_never_reused(pool):
    """The upstream answers 413 and keeps the connection alive before the upload ends: the rest of the body
    would be read as the next request, so the connection must not go back to the pool."""
    answered = asyncio.Event()

    async def slow_body():
        yield b"a" * 10
        await answered.wait()
        await asyncio.sleep(0.05)
        yield b"b" * 10  # never sent: the exchange is over

    async def handler(reader, writer, script):
        script.requests.append((await reader.readuntil(b"\r\n\r\n"), b""))
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        rest = await reader.read()  # whatever else arrives on this connection
        assert b"GET" not in rest

    async with scripted(handler) as (port, script):
        response = await pool.request(origin(port), "POST", "/upload", [("Content-Length", "20")], slow_body())
        assert response.status == 413
        answered.set()
        await asyncio.sleep(0.2)  # the sender notices the finished exchange
        response.release()
        assert pool.idle_count() == 0
        status, _, _ = await fetch(pool, port)  # a new connection, answered by a fresh handler
        assert status == 413
    assert script.connections == 2


async def test_a_stalled_upload_is_the_visitors_timeout_not_the_upstreams(pool):
    async def stalled():
        yield b"12345"
        await asyncio.sleep(30)  # the visitor stops sending
        yield b"67890"

    async def handler(reader, writer, script):
        await reader.read()  # waits for the body like any upstream

    async with scripted(handler) as (port, _):
        with pytest.raises(UpstreamError) as err:
            await asyncio.wait_for(pool.request(origin(port), "POST", "/", [("Content-Length", "10")], stalled(),
                                                read_timeout=0.3), 10)
    assert err.value.kind == "client_timeout"


async def test_a_broken_client_body_fails_the_exchange(pool):
    async def broken():
        yield b"part"
        raise ValueError("bad chunk framing from the visitor")

    async def handler(reader, writer, script):
        await reader.read()

    async with scripted(handler) as (port, _):
        with pytest.raises(UpstreamError) as err:
            await asyncio.wait_for(pool.request(origin(port), "POST", "/", [], broken(), chunked=True), 10)
    assert err.value.kind == "client_body"


# --------------------------------------------------------------------------------------------------------
# Response framing.


async def test_keep_alive_connection_is_reused(pool):
    async with scripted(serve_each(OK_HELLO, OK_HELLO, OK_HELLO)) as (port, script):
        for _ in range(3):
            status, headers, data = await fetch(pool, port)
            assert (status, data) == (200, b"hello")
            assert ("X-Test", "1") in headers
    assert script.connections == 1
    assert pool.connections_opened == 1


async def test_chunked_response_is_decoded_and_the_connection_reused(pool):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    async with scripted(serve_each(chunked, OK_HELLO)) as (port, script):
        assert (await fetch(pool, port))[2] == b"hello world"
        assert (await fetch(pool, port))[2] == b"hello"
    assert script.connections == 1


async def test_body_without_framing_ends_when_the_upstream_closes(pool):
    async def handler(reader, writer, script):
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()

    async with scripted(handler) as (port, _):
        status, _, data = await fetch(pool, port)
    assert (status, data) == (200, b"until the end")
    assert pool.idle_count() == 0


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n",
])
async def test_bodiless_status_and_reuse(pool, answer):
    async with scripted(serve_each(answer, OK_HELLO)) as (port, script):
        status, _, data = await fetch(pool, port)
        assert data == b""
        assert (await fetch(pool, port))[2] == b"hello"
    assert script.connections == 1


async def test_head_answer_has_no_body_whatever_its_headers_say(pool):
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nContent-Type: text/html\r\n\r\n"
    async with scripted(serve_each(head_answer, OK_HELLO)) as (port, script):
        status, headers, data = await fetch(pool, port, "HEAD")
        assert (status, data) == (200, b"")
        assert ("Content-Length", "4096") in headers
        assert (await fetch(pool, port))[2] == b"hello"
    assert script.connections == 1


async def test_interim_answers_are_dropped(pool):
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + OK_HELLO)
    async with scripted(serve_each(answer, OK_HELLO)) as (port, script):
        status, headers, data = await fetch(pool, port)
        assert (status, data) == (200, b"hello")
        assert all(name != "Link" for name, _ in headers)
        assert (await fetch(pool, port))[2] == b"hello"
    assert script.connections == 1


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
])
async def test_connection_not_kept_alive_is_not_reused(pool, answer):
    async with scripted(serve_each(answer)) as (port, _):
        assert (await fetch(pool, port))[2] == b"hello"
    assert pool.idle_count() == 0


async def test_an_unread_body_closes_the_connection(pool):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"b" * 10_000_000
    async with scripted(serve_each(big)) as (port, _):
        response = await pool.request(origin(port), "GET", "/", [])
        await response.read()
        response.release()  # the proxy stopped early (the visitor left)
    assert pool.idle_count() == 0


async def test_an_answer_left_unread_above_the_buffer_mark_leaves_a_reading_connection(pool):
    """The answer's last bytes pushed the buffer over the mark (reading paused) and the visitor left before
    reading them: the pooled connection must read again, or the next exchange on it would hang."""
    size = HIGH_WATER + 1
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    async with scripted(serve_each(big, OK_HELLO)) as (port, script):
        response = await pool.request(origin(port), "GET", "/big", [])
        for _ in range(100):  # until the whole answer is in, unread
            if response._conn.done:
                break
            await asyncio.sleep(0.02)
        response.release()
        assert pool.idle_count() == 1
        status, _, data = await asyncio.wait_for(fetch(pool, port, read_timeout=2), 5)
        assert (status, data) == (200, b"hello")
    assert script.connections == 1


@pytest.mark.parametrize("coding", [b"gzip", b"identity"])
async def test_a_transfer_coding_other_than_chunked_ends_at_close(pool, coding):
    async def handler(reader, writer, script):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\nhello")
        await writer.drain()

    async with scripted(handler) as (port, _):
        assert (await fetch(pool, port))[2] == b"hello"
    assert pool.idle_count() == 0


# --------------------------------------------------------------------------------------------------------
# Failures.


async def test_truncated_body_is_an_error_not_an_end(pool):
    async def handler(reader, writer, script):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async with scripted(handler) as (port, _):
        response = await pool.request(origin(port), "GET", "/", [])
        try:
            with pytest.raises(UpstreamError) as err:
                while await response.read():
                    pass
        finally:
            response.release()
    assert err.value.kind == "reset"


@pytest.mark.parametrize("answer", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
])
async def test_malformed_answers(pool, answer):
    async with scripted(serve_each(answer)) as (port, _):
        with pytest.raises(UpstreamError) as err:
            await fetch(pool, port)
    assert err.value.kind == "malformed"


async def test_refused_and_connect_timeout(pool):
    from tests.upstream import blackhole, closed_port

    with pytest.raises(UpstreamError) as err:
        await fetch(pool, closed_port())
    assert err.value.kind == "refused"
    async with blackhole() as port:
        with pytest.raises(UpstreamError) as err:
            await fetch(pool, port, connect_timeout=0.3)
    assert err.value.kind == "connect_timeout"


async def test_an_upstream_that_stops_reading_and_closes_fails_at_once(pool):
    """FIN from the upstream while a large upload is still buffered: reported as a reset straight away (not
    after the read timeout), and the socket is closed even though its write buffer never drained."""
    held = []

    async def handler(reader, writer, script):
        await reader.readuntil(b"\r\n\r\n")
        held.append(writer)
        writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
        writer.transport.pause_reading()
        await asyncio.sleep(30)

    async def body():
        for _ in range(256):
            yield b"z" * 65536

    try:
        async with scripted(handler) as (port, _):
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamError) as err:
                await pool.request(origin(port), "POST", "/", [("Content-Length", str(256 * 65536))], body(),
                                   read_timeout=5.0)
            assert err.value.kind == "reset"
            assert asyncio.get_running_loop().time() - started < 2.0
    finally:
        for writer in held:
            writer.transport.abort()


async def test_read_timeout_before_the_headers(pool):
    async def handler(reader, writer, script):
        await read_request(reader)
        await asyncio.sleep(3600)

    async with scripted(handler) as (port, _):
        with pytest.raises(UpstreamError) as err:
            await fetch(pool, port, read_timeout=0.3)
    assert err.value.kind == "read_timeout"


async def test_read_timeout_is_silence_not_total_time(pool):
    async def trickle(reader, writer, script):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):  # 8 x 0.1 s: longer than the timeout in all, never silent for that long
            await asyncio.sleep(0.1)
            writer.write(b".")
            await writer.drain()
        await reader.read()

    async def stall(reader, writer, script):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n....")
        await writer.drain()
        await asyncio.sleep(3600)

    async with scripted(trickle) as (port, _):
        assert (await fetch(pool, port, read_timeout=0.4))[2] == b"........"
    async with scripted(stall) as (port, _):
        with pytest.raises(UpstreamError) as err:
            await fetch(pool, port, read_timeout=0.3)
    assert err.value.kind == "read_timeout"


async def test_a_slow_reader_is_not_a_silent_upstream(pool):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n" + b"s" * 4_000_000
    async with scripted(serve_each(answer)) as (port, _):
        response = await pool.request(origin(port), "GET", "/", [], read_timeout=0.3)
        total = 0
        try:
            while chunk := await response.read():
                total += len(chunk)
                await asyncio.sleep(0.2)  # reading far slower than the upstream sends
        finally:
            response.release()
    assert total == 4_000_000


async def test_stale_pooled_connection_is_retried_once_for_a_request_without_body(pool):
    async def first_answer_then_close(reader, writer, script):
        script.requests.append(await read_request(reader))
        if script.connections == 1:
            writer.write(OK_HELLO)  # says keep-alive ...
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # ... but drops the next request unanswered
            return
        writer.write(OK_HELLO)
        await writer.drain()
        await reader.read()

    async with scripted(first_answer_then_close) as (port, script):
        assert (await fetch(pool, port))[2] == b"hello"
        assert (await fetch(pool, port))[2] == b"hello"
    assert script.connections == 2


async def test_the_retry_opens_a_new_connection_rather_than_another_pooled_one(pool):
    stale = False

    async def handler(reader, writer, script):
        while True:
            await reader.readuntil(b"\r\n\r\n")
            if stale and script.connections <= 2:
                writer.transport.abort()  # both pooled connections were closed by the upstream meanwhile
                return
            writer.write(OK_HELLO)
            await writer.drain()

    async with scripted(handler) as (port, script):
        responses = [await pool.request(origin(port), "GET", "/", []) for _ in range(2)]
        for response in responses:
            while await response.read():
                pass
            response.release()
        assert pool.idle_count() == 2
        stale = True
        assert (await fetch(pool, port))[2] == b"hello"
    assert script.connections == 3


async def test_stale_pooled_connection_is_not_retried_with_a_body(pool):
    async def first_answer_then_close(reader, writer, script):
        await read_request(reader)
        writer.write(OK_HELLO)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")

    async def body():
        yield b"order=1"

    async with scripted(first_answer_then_close) as (port, script):
        await fetch(pool, port)
        with pytest.raises(UpstreamError) as err:
            await fetch(pool, port, "POST", "/", body(), headers=(("Content-Length", "7"),))
    assert err.value.kind == "reset"
    assert script.connections == 1


# --------------------------------------------------------------------------------------------------------
# Memory and the pool.


async def test_backpressure_keeps_the_buffer_bounded(pool):
    size = 32 * 1024 * 1024
    payload = b"m" * (1024 * 1024)

    async def handler(reader, writer, script):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(payload)):
            writer.write(payload)
            await writer.drain()
        await reader.read()

    async with scripted(handler) as (port, _):
        response = await pool.request(origin(port), "GET", "/", [])
        peak = total = 0
        try:
            while True:
                await asyncio.sleep(0.01)  # a slow visitor: the upstream fills our buffer meanwhile
                peak = max(peak, response._size)
                chunk = await response.read()
                if not chunk:
                    break
                total += len(chunk)
        finally:
            response.release()
    assert total == size
    assert peak <= HIGH_WATER + 512 * 1024  # one socket read past the mark at most


async def test_idle_connections_are_closed_after_keepalive():
    pool = UpstreamPool(keepalive_s=0.2)
    try:
        async with scripted(serve_each(OK_HELLO)) as (port, script):
            await fetch(pool, port)
            assert pool.idle_count() == 1
            await asyncio.sleep(0.6)
            assert pool.idle_count() == 0
            await fetch(pool, port)  # a new connection, not the expired one
            assert script.connections == 2
    finally:
        await pool.close()


async def test_close_closes_idle_connections():
    pool = UpstreamPool()
    async with scripted(serve_each(OK_HELLO)) as (port, script):
        await fetch(pool, port)
        assert script.client_closed == 0
        await pool.close()
        await asyncio.sleep(0.1)
        assert pool.idle_count() == 0
        assert script.client_closed + len(script.closed_by_peer) == 1


# --------------------------------------------------------------------------------------------------------
# TLS upstreams.


def self_signed() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only that server's certificate) for 127.0.0.1."""
    import tempfile

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with tempfile.NamedTemporaryFile(suffix=".pem") as cert_file, \
            tempfile.NamedTemporaryFile(suffix=".pem") as key_file:
        cert_file.write(cert_pem)
        cert_file.flush()
        key_file.write(key_pem)
        key_file.flush()
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert_file.name, key_file.name)
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def test_tls_upstream():
    server_ctx, client_ctx = self_signed()
    pool = UpstreamPool(ssl_context=client_ctx)
    try:
        async with scripted(serve_each(OK_HELLO, OK_HELLO), tls=server_ctx) as (port, script):
            for _ in range(2):
                response = await pool.request(origin(port, "https"), "GET", "/", [])
                assert (response.status, await response.read()) == (200, b"hello")
                response.release()
        assert script.connections == 1
    finally:
        await pool.close()


async def test_untrusted_tls_certificate_is_refused(pool):
    server_ctx, _ = self_signed()
    async with scripted(serve_each(OK_HELLO), tls=server_ctx) as (port, _):
        with pytest.raises(UpstreamError) as err:
            await pool.request(origin(port, "https"), "GET", "/", [])
    assert err.value.kind == "tls"
