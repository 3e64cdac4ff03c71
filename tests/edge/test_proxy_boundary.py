"""Regression tests of the proxy's trust boundary, on raw sockets against real upstreams on loopback: what the
upstream receives and what the visitor gets back, byte for byte (issue: smuggling through request
decompression, Host parsing, header variants, reserved paths, response header bytes, Content-Length)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import zlib

import brotli
import pytest

from halo_proxy.app import create_app
from halo_proxy.config import parse
from halo_proxy.metrics import Metrics
from tests.upstream import SEEN, create_upstream, read_request, scripted

HOST = "shop.localhost"


def settings_for(port: int, server: str = "") -> object:
    return parse(f"""
server:
  trusted_proxies: [10.0.0.0/8]
{server}
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{port}
    timeouts: {{connect_s: 0.5, read_s: 1}}
""", "test.yaml", {})


@pytest.fixture
async def upstream(aiohttp_server):
    return await aiohttp_server(create_upstream())


@pytest.fixture
async def proxy(aiohttp_server, upstream):
    return await aiohttp_server(create_app(settings_for(upstream.port), Metrics()))


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the request asks for Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


def split(answer: bytes) -> tuple[bytes, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def post(path: str, body: bytes, *headers: str, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}", "Connection: close", *headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        framed = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        framed = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + framed


SMUGGLE = b"x=1" + b"GET /SMUGGLED HTTP/1.1\r\nHost: evil.com\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_a_compressed_upload_reaches_the_origin_as_sent(proxy, upstream, coding, chunked):
    compressed = {"gzip": lambda b: gzip.compress(b, mtime=0), "deflate": zlib.compress,
                  "br": brotli.compress}[coding](SMUGGLE * 50)
    answer = await exchange(proxy.port, post("/echo", compressed, f"Content-Encoding: {coding}", chunked=chunked))
    head, body = split(answer)
    assert head.startswith(b"HTTP/1.1 200"), head
    echoed = json.loads(body)
    assert echoed["length"] == len(compressed)
    assert echoed["sha256"] == hashlib.sha256(compressed).hexdigest()
    assert dict((k.lower(), v) for k, v in echoed["headers"])["content-encoding"] == coding
    assert [s.raw_path for s in upstream.app[SEEN]] == ["/echo"]  # no smuggled request


@pytest.mark.parametrize("host", ["shop.localhost:1@evil.com", "shop.localhost:abc", "shop.localhost:99999",
                                  "shop.localhost evil", "shop.localhost,evil.com"])
async def test_a_malformed_host_is_400_and_never_forwarded(proxy, upstream, host):
    answer = await exchange(proxy.port, f"GET /redirect HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                            .encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"evil" not in split(answer)[0]
    assert upstream.app[SEEN] == []


async def test_two_host_headers_and_absolute_form_are_refused(proxy, upstream):
    two = await exchange(proxy.port, f"GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: evil.com\r\n\r\n".encode())
    absolute = await exchange(proxy.port, f"GET http://evil.com/x HTTP/1.1\r\nHost: {HOST}\r\n"
                              "Connection: close\r\n\r\n".encode())
    assert two.split(b"\r\n")[0].endswith(b" 400 Bad Request"), two  # aiohttp's parser refuses it first
    assert absolute.startswith(b"HTTP/1.1 400"), absolute
    assert upstream.app[SEEN] == []


async def test_underscore_spellings_of_guarded_headers_never_reach_the_origin(proxy, upstream):
    answer = await exchange(proxy.port, (
        f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nX_Forwarded_For: 6.6.6.6\r\n"
        "X_Forwarded_Host: evil.com\r\nX-Forwarded_Proto: https\r\nTransfer_Encoding: chunked\r\n"
        "X_Real_IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;host=evil.com\r\nX-Real-IP: 6.6.6.6\r\n"
        "X_Custom_Thing: kept\r\n\r\n").encode())
    head, body = split(answer)
    assert head.startswith(b"HTTP/1.1 200"), head
    headers = json.loads(body)["headers"]
    names = [name.lower() for name, _ in headers]
    assert "x_custom_thing" in names
    assert not any("_" in n and n != "x_custom_thing" for n in names), names
    assert "forwarded" not in names
    assert "6.6.6.6" not in json.dumps(headers) and "evil.com" not in json.dumps(headers)
    assert dict((k.lower(), v) for k, v in headers)["x-real-ip"] == "127.0.0.1"


async def test_a_trusted_tls_proxy_gets_its_scheme_forwarded_and_in_redirects(aiohttp_server, upstream):
    settings = settings_for(upstream.port, server="")
    settings = parse(f"""
server: {{trusted_proxies: [127.0.0.0/8]}}
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream.port}
""", "t.yaml", {})
    proxy = await aiohttp_server(create_app(settings, Metrics()))
    base = f"Host: {HOST}\r\nConnection: close\r\nX-Forwarded-Proto: https\r\nForwarded: for=1.2.3.4;proto=https"
    echoed = json.loads(split(await exchange(proxy.port, f"GET /echo HTTP/1.1\r\n{base}\r\n\r\n".encode()))[1])
    headers = dict((k.lower(), v) for k, v in echoed["headers"])
    assert headers["x-forwarded-proto"] == "https"
    assert headers["forwarded"] == "for=1.2.3.4;proto=https"  # believed from a trusted proxy
    to = f"http://127.0.0.1:{upstream.port}/landing"
    head, _ = split(await exchange(proxy.port, f"GET /redirect?to={to} HTTP/1.1\r\n{base}\r\n\r\n".encode()))
    assert f"Location: https://{HOST}/landing".encode() in head


async def test_a_content_length_with_leading_zeros_is_forwarded_normalised(proxy, upstream):
    answer = await exchange(proxy.port, f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
                            "Content-Length: 0005\r\n\r\nhello".encode())
    echoed = json.loads(split(answer)[1])
    assert dict((k.lower(), v) for k, v in echoed["headers"])["content-length"] == "5"
    assert echoed["length"] == 5


async def test_an_impossible_content_length_is_refused(proxy, upstream):
    answer = await exchange(proxy.port, f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\n"
                            "Content-Length: 18446744073709551615\r\n\r\nhello".encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert upstream.app[SEEN] == []


@pytest.mark.parametrize("path", ["/x/../_halo/healthz", "/%2e%2e/_halo/healthz", "//_halo/healthz",
                                  "/./_halo/healthz", "/_halo%2Fhealthz", "/_halo;x/healthz", "/_HALO/healthz",
                                  "/_halo\\healthz", "/%5Fhalo/webhook/lead"])
async def test_a_path_that_normalises_into_the_prefix_is_never_forwarded(proxy, upstream, path):
    answer = await exchange(proxy.port, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                            .encode())
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 200", b"HTTP/1.1 404", b"HTTP/1.1 405")), answer
    assert upstream.app[SEEN] == []


@pytest.mark.parametrize("path", ["/_halogen/page", "/a/_halo", "/x%2F..%2Fy", "/A%2fB"])
async def test_other_paths_are_forwarded_byte_for_byte(proxy, upstream, path):
    answer = await exchange(proxy.port, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                            .encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert [s.raw_path for s in upstream.app[SEEN]] == [path]


@pytest.mark.parametrize("value", [
    'attachment; filename="caf\xe9.pdf"'.encode("latin-1"),  # latin-1 bytes, not UTF-8
    'attachment; filename="café.pdf"'.encode(),  # UTF-8
    b"\xff\xfe raw",
])
async def test_response_header_bytes_pass_unchanged(aiohttp_server, value):
    location = "/café/ünïcode?q=ä".encode()

    async def handler(reader, writer, script):
        await read_request(reader)
        writer.write(b"HTTP/1.1 302 Found\r\nContent-Disposition: " + value + b"\r\nLocation: " + location +
                     b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()

    async with scripted(handler) as (port, _):
        proxy = await aiohttp_server(create_app(settings_for(port), Metrics()))
        answer = await exchange(proxy.port, f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    head, body = split(answer)
    assert b"\r\nContent-Disposition: " + value + b"\r\n" in head + b"\r\n", head
    if value.decode("utf-8", "replace") == value.decode("utf-8", "ignore"):  # UTF-8 answers: Location too
        assert b"\r\nLocation: " + location + b"\r\n" in head + b"\r\n", head
    assert body == b"ok"


async def test_scheme_url_and_client_ip_headers_pass_only_from_a_trusted_proxy(proxy, upstream):
    spoofed = ["X-Forwarded-Ssl: on", "X-Forwarded-Scheme: https", "Front-End-Https: on", "X-Url-Scheme: https",
               "X-Forwarded-Port: 443", "X-Forwarded-Prefix: /evil", "X-Forwarded-Server: evil",
               "X-Original-URL: /_halo/healthz", "X-Rewrite-URL: /_halo/healthz", "True-Client-IP: 6.6.6.6",
               "CF-Connecting-IP: 6.6.6.6", "X-Client-IP: 6.6.6.6", "X-Cluster-Client-IP: 6.6.6.6",
               "Fastly-Client-IP: 6.6.6.6", "X_Original_URL: /_halo/x", "X-Forwarded_Ssl: on"]
    answer = await exchange(proxy.port, ("\r\n".join(["GET /echo HTTP/1.1", f"Host: {HOST}", "Connection: close",
                                                      *spoofed]) + "\r\n\r\n").encode())
    names = {name.lower() for name, _ in json.loads(split(answer)[1])["headers"]}
    assert not names & {line.split(":")[0].lower() for line in spoofed}, names


async def test_a_bad_websocket_handshake_never_reaches_the_origin(proxy, upstream):
    answer = await exchange(proxy.port, f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                            "Connection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert upstream.app[SEEN] == []


async def test_a_visitor_leaving_mid_download_is_not_an_error(aiohttp_server, upstream, caplog):
    from aiohttp import web

    from halo_proxy.edge.connections import ListenerRunner

    settings = settings_for(upstream.port)
    metrics = Metrics()
    runner = ListenerRunner(create_app(settings, metrics), client=settings.server.client, metrics=metrics)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
            writer.write(f"GET /big?bytes=50000000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            await reader.readexactly(100_000)
            writer.transport.abort()
    finally:
        await runner.cleanup()
    # (the test upstream's own aiohttp logs its broken writes; the proxy's loggers must stay quiet)
    assert not [r for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("halo_proxy")]
    assert metrics.registry.get_sample_value("halo_bad_requests_total", {"reason": "internal"}) is None
