"""The streaming reverse proxy against a real upstream on loopback.

Covers RFC 9110 7.6 (hop-by-hop, Via), X-Forwarded-*, Set-Cookie, redirects, content-encoding passthrough,
bodiless responses, WebSocket, timeouts and failures, the reserved prefix and unknown hosts.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib

import aiohttp
import pytest
from aiohttp import web

from halo_proxy.app import create_app
from halo_proxy.config import parse
from halo_proxy.metrics import Metrics
from tests.upstream import SEEN, blackhole, closed_port, create_upstream, raw_server, scripted

HOST = "shop.localhost"


def settings_for(upstream_port: int, *, extra: str = "", server: str = "") -> object:
    text = f"""
server:
  trusted_proxies: [10.0.0.0/8]
{server}
tenants:
  - id: shop
    hosts: [{HOST}, "*.shop.localhost"]
    upstream: http://127.0.0.1:{upstream_port}
    timeouts: {{connect_s: 0.5, read_s: 0.5}}
{extra}
"""
    return parse(text, "test.yaml", {})


@pytest.fixture
async def upstream(aiohttp_server):
    return await aiohttp_server(create_upstream())


@pytest.fixture
async def proxy(aiohttp_server, upstream):
    app = create_app(settings_for(upstream.port), Metrics())
    return await aiohttp_server(app)


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_forwarded_with_its_body(proxy, client, method):
    body = b"payload-" + method.encode()
    async with client.request(method, url(proxy, "/echo"), data=body, headers={"Host": HOST}) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["method"] == method
    assert data["length"] == len(body)


async def test_chunked_request_body_is_forwarded_chunked(proxy, upstream, client):
    parts = [b"a" * 1000, b"b" * 70000, b"c"]

    async def body():
        for part in parts:
            yield part

    async with client.post(url(proxy, "/echo"), data=body(), headers={"Host": HOST}) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    seen = dict((k.lower(), v) for k, v in upstream.app[SEEN][-1].headers)
    assert seen["transfer-encoding"] == "chunked" and "content-length" not in seen


async def test_header_bytes_that_are_not_utf8_reach_the_upstream_unchanged(aiohttp_server):
    async def handler(reader, writer, script):
        script.requests.append((await reader.readuntil(b"\r\n\r\n"), b""))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Back: caf\xe9\r\n\r\nok")
        await writer.drain()

    async with scripted(handler) as (port, script):
        proxy = await proxy_to(aiohttp_server, port)
        answer = await raw_exchange(proxy, f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n".encode()
                                    + b"X-Name: caf\xe9\r\n\r\n")
    assert b"\r\nX-Name: caf\xe9\r\n" in script.requests[0][0]
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")


async def test_an_upstream_answering_before_the_whole_upload_is_answered(aiohttp_server, client):
    async def handler(reader, writer, script):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
        await writer.drain()
        await asyncio.sleep(30)  # never reads the upload

    async def endless():
        for _ in range(64):  # 64 MiB the upstream never reads
            yield b"u" * (1024 * 1024)

    async with scripted(handler) as (port, _):
        proxy = await proxy_to(aiohttp_server, port)
        try:
            async with client.post(url(proxy, "/upload"), data=endless(), headers={"Host": HOST}) as resp:
                assert resp.status == 413
                assert await resp.read() == b"too big!"
        except aiohttp.ClientOSError:
            pass  # the proxy may close the connection while the client is still sending; both are correct


async def test_a_stalled_upload_is_408_and_not_an_upstream_error(aiohttp_server):
    metrics = Metrics()
    upstream = await aiohttp_server(create_upstream())
    proxy = await aiohttp_server(create_app(settings_for(upstream.port, server=BODY_TIMEOUT), metrics))
    answer = await raw_exchange(proxy, STALLED_UPLOAD, read_size=200)  # the connection may stay open
    assert answer.startswith(b"HTTP/1.1 408"), answer
    value = metrics.registry.get_sample_value
    assert value("halo_upstream_errors_total", {"tenant": "shop", "kind": "read_timeout"}) is None


async def test_an_upload_stalling_after_the_answer_began_is_not_an_upstream_failure(aiohttp_server):
    async def handler(reader, writer, script):  # answers at once, then waits for the rest of the upload
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(30)

    metrics = Metrics()
    async with scripted(handler) as (port, _):
        proxy = await aiohttp_server(create_app(settings_for(port, server=BODY_TIMEOUT), metrics))
        answer = await raw_exchange(proxy, STALLED_UPLOAD)  # the proxy aborts after body_timeout_s (0.5 s)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")
    value = metrics.registry.get_sample_value
    assert value("halo_upstream_errors_total", {"tenant": "shop", "kind": "aborted_mid_body"}) is None


BODY_TIMEOUT = "  client: {body_timeout_s: 0.5}"
# Five of the ten body bytes it announces, then silence.
STALLED_UPLOAD = f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\n\r\n12345".encode()


async def raw_exchange(server, request: bytes, read_size: int = -1) -> bytes:
    """Send raw request bytes to `server`; read until it closes, or the first `read_size` bytes (within 10 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(read_size), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("raw", [
    "/a%2Fb/%7Euser;p=1?q=%20a+b&x=1&x=2&empty=&%F0%9F%98%80=1",
    "/path//double/./dot?utm_source=Google%20Ads&gclid=Cj0KCQ_-AbC",
    "/%E2%82%AC?x=%26%3D",
])
async def test_path_and_query_are_forwarded_byte_for_byte(proxy, upstream, raw):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"GET {raw} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    await reader.read()
    writer.close()
    assert upstream.app[SEEN][-1].raw_path == raw


async def test_hop_by_hop_request_headers_are_stripped_including_connection_named(proxy, upstream, client):
    headers = {
        "Host": HOST, "Connection": "keep-alive, X-Auth, x-other", "X-Auth": "1", "X-Other": "2",
        "Keep-Alive": "timeout=5", "Proxy-Connection": "keep-alive", "TE": "gzip", "Proxy-Authorization": "Basic x",
        "Upgrade": "h2c", "X-Kept": "yes",
    }
    async with client.get(url(proxy, "/echo"), headers=headers) as resp:
        await resp.read()
    got = {k.lower() for k, _ in upstream.app[SEEN][-1].headers}
    for gone in ("x-auth", "x-other", "keep-alive", "proxy-connection", "te", "proxy-authorization", "upgrade"):
        assert gone not in got, gone
    assert "x-kept" in got


async def test_hop_by_hop_response_headers_are_stripped(proxy, client):
    async with client.get(url(proxy, "/hop"), headers={"Host": HOST}) as resp:
        assert resp.headers.get("X-Kept") == "yes"
        assert "X-Bar" not in resp.headers
        assert "Keep-Alive" not in resp.headers


async def test_forwarding_headers_are_set_and_spoofing_untrusted_peer_is_ignored(proxy, upstream, client):
    spoof = {"Host": HOST, "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"}
    async with client.get(url(proxy, "/echo"), headers=spoof) as resp:
        await resp.read()
    got = dict((k.lower(), v) for k, v in upstream.app[SEEN][-1].headers)
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == HOST
    assert got["via"] == "1.1 halotrack"
    assert got["host"] == HOST


async def test_trusted_peer_forwarded_for_is_appended(aiohttp_server, upstream, client):
    settings = parse(f"""
server: {{trusted_proxies: [127.0.0.0/8]}}
tenants: [{{id: shop, hosts: [{HOST}], upstream: "http://127.0.0.1:{upstream.port}"}}]
""", "t.yaml", {})
    proxy = await aiohttp_server(create_app(settings, Metrics()))
    async with client.get(url(proxy, "/echo"), headers={"Host": HOST, "X-Forwarded-For": "203.0.113.9"}) as resp:
        await resp.read()
    got = dict((k.lower(), v) for k, v in upstream.app[SEEN][-1].headers)
    assert got["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"


async def test_loop_through_our_own_via_is_refused(proxy, upstream, client):
    async with client.get(url(proxy, "/echo"), headers={"Host": HOST, "Via": "1.1 halotrack"}) as resp:
        assert resp.status == 508
    assert upstream.app[SEEN] == []


async def test_upstream_host_mode_sends_the_upstream_host(aiohttp_server, upstream, client):
    settings = parse(f"""
tenants: [{{id: shop, hosts: [{HOST}], upstream: "http://127.0.0.1:{upstream.port}", upstream_host: upstream}}]
""", "t.yaml", {})
    proxy = await aiohttp_server(create_app(settings, Metrics()))
    async with client.get(url(proxy, "/echo"), headers={"Host": HOST}) as resp:
        await resp.read()
    got = dict((k.lower(), v) for k, v in upstream.app[SEEN][-1].headers)
    assert got["host"] == f"127.0.0.1:{upstream.port}"
    assert got["x-forwarded-host"] == HOST


async def test_each_set_cookie_stays_a_separate_line(proxy, client):
    async with client.get(url(proxy, "/cookies"), headers={"Host": HOST}) as resp:
        cookies = resp.headers.getall("Set-Cookie")
    assert cookies == ["a=1; Path=/", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/", "c=3; HttpOnly"]


async def test_the_upstream_cannot_set_the_dashboard_session_cookie(proxy, client):
    async with client.get(url(proxy, "/cookies?dashboard=1"), headers={"Host": HOST}) as resp:
        cookies = resp.headers.getall("Set-Cookie")
    assert cookies == ["a=1; Path=/", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/", "c=3; HttpOnly"]


async def test_no_cookie_jar_is_shared_between_visitors(proxy, upstream, client):
    async with client.get(url(proxy, "/cookies"), headers={"Host": HOST, "Cookie": "visitor=A"}) as resp:
        await resp.read()
    async with client.get(url(proxy, "/echo"), headers={"Host": HOST}) as resp:
        await resp.read()
    got = dict((k.lower(), v) for k, v in upstream.app[SEEN][-1].headers)
    assert "cookie" not in got


async def test_redirects_pass_through_and_upstream_origin_is_rewritten(proxy, upstream, client):
    async with client.get(url(proxy, "/redirect?to=/landing"), headers={"Host": HOST}, allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/landing"
    absolute = f"http://127.0.0.1:{upstream.port}/x?y=1"
    async with client.get(url(proxy, "/redirect"), params={"to": absolute}, headers={"Host": HOST},
                          allow_redirects=False) as r:
        assert r.headers["Location"] == f"http://{HOST}/x?y=1"
    async with client.get(url(proxy, "/redirect"), params={"to": "https://elsewhere.example/a"},
                          headers={"Host": HOST}, allow_redirects=False) as r:
        assert r.headers["Location"] == "https://elsewhere.example/a"
    assert len([s for s in upstream.app[SEEN] if s.raw_path.startswith("/landing")]) == 0


async def test_compressed_bodies_pass_through_untouched(proxy, client):
    expected = gzip.compress(b"hello compressed world " * 100, mtime=0)
    async with client.get(url(proxy, "/gzip"), headers={"Host": HOST, "Accept-Encoding": "gzip, br"}) as resp:
        body = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Vary"] == "Accept-Encoding"
        assert resp.headers["ETag"] == '"abc"'
    assert body == expected


async def test_accept_encoding_is_only_what_the_client_sent(proxy, upstream):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    await reader.read()
    writer.close()
    got = {k.lower() for k, _ in upstream.app[SEEN][-1].headers}
    assert "accept-encoding" not in got
    assert "user-agent" not in got


@pytest.mark.parametrize("method,path", [("HEAD", "/page"), ("GET", "/status/204"), ("GET", "/status/304")])
async def test_bodiless_responses(proxy, method, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    # The connection stays usable: a second request on it gets its own response right after.
    writer.write(f"GET /status/200 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    rest = await reader.read()
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200"), rest[:60]
    assert b"transfer-encoding" not in head.lower()


async def test_chunked_upstream_response_is_streamed(proxy, client):
    async with client.get(url(proxy, "/chunked"), headers={"Host": HOST}) as resp:
        assert await resp.read() == b"part0;part1;part2;part3;part4;"


async def test_websocket_is_proxied_both_ways(proxy, client):
    async with client.ws_connect(url(proxy, "/ws"), headers={"Host": HOST}, protocols=("chat",)) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=5)) == "echo:hi"
        await ws.send_bytes(b"abc")
        assert (await ws.receive_bytes(timeout=5)) == b"cba"
        await ws.send_str("close-me")
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001 or msg.data == 4001


async def test_unknown_host_is_421_and_never_forwarded(proxy, upstream, client):
    for host in ("evil.example", "shop.localhost.evil.example", "localhost"):
        async with client.get(url(proxy, "/echo"), headers={"Host": host}) as resp:
            assert resp.status == 421
    async with client.get(url(proxy, "/_halo/nothing"), headers={"Host": "evil.example"}) as resp:
        assert resp.status == 421
    assert upstream.app[SEEN] == []


async def test_wildcard_and_port_in_host(proxy, upstream, client):
    for host in ("a.shop.localhost", "SHOP.localhost:8443", "x.y.shop.localhost"):
        async with client.get(url(proxy, "/echo"), headers={"Host": host}) as resp:
            assert resp.status == 200, host


async def test_reserved_prefix_is_never_forwarded(proxy, upstream, client):
    async with client.get(url(proxy, "/_halo/healthz"), headers={"Host": HOST}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    async with client.get(url(proxy, "/_halo/readyz"), headers={"Host": HOST}) as resp:
        assert resp.status == 200
    for path in ("/_halo/unknown", "/_halo", "/_halo/healthz/../x"):
        async with client.post(url(proxy, path), headers={"Host": HOST}) as resp:
            assert resp.status in (404, 405), path
            assert resp.content_type == "application/json"
    async with client.get(url(proxy, "/_halox"), headers={"Host": HOST}) as resp:
        assert resp.status == 200  # only the exact prefix segment is reserved
    assert [s.raw_path for s in upstream.app[SEEN]] == ["/_halox"]


async def test_upstream_keep_alive_reuses_connections(proxy, upstream, client):
    for _ in range(10):
        async with client.get(url(proxy, "/echo"), headers={"Host": HOST}) as resp:
            await resp.read()
    peers = {s.peer for s in upstream.app[SEEN]}
    assert len(peers) == 1


# --------------------------------------------------------------------------------------------------------
# Failures: refused, reset, malformed -> 502; timeouts -> 504; never a traceback.


async def proxy_to(aiohttp_server, port: int):
    return await aiohttp_server(create_app(settings_for(port), Metrics()))


async def assert_error_page(client, proxy, status: int) -> None:
    async with client.get(url(proxy, "/x"), headers={"Host": HOST}) as resp:
        body = await resp.text()
        assert resp.status == status
        assert resp.content_type == "text/html"
        assert "Traceback" not in body and "aiohttp" not in body
        assert str(status) in body


async def test_refused_is_502(aiohttp_server, client):
    proxy = await proxy_to(aiohttp_server, closed_port())
    await assert_error_page(client, proxy, 502)


@pytest.mark.parametrize("behaviour", ["reset", "garbage", "bad_framing"])
async def test_reset_and_malformed_are_502(aiohttp_server, client, behaviour):
    async with raw_server(behaviour) as port:
        proxy = await proxy_to(aiohttp_server, port)
        await assert_error_page(client, proxy, 502)


async def test_read_timeout_is_504(aiohttp_server, client):
    async with raw_server("hang") as port:
        proxy = await proxy_to(aiohttp_server, port)
        await assert_error_page(client, proxy, 504)


async def test_connect_timeout_is_504(aiohttp_server, client):
    async with blackhole() as port:
        proxy = await proxy_to(aiohttp_server, port)
        await assert_error_page(client, proxy, 504)


async def test_failure_after_headers_aborts_the_client_connection(proxy, client):
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(url(proxy, "/truncated"), headers={"Host": HOST}) as resp:
            assert resp.status == 200
            await resp.read()


async def test_metrics_count_requests_and_upstream_errors(aiohttp_server, client):
    metrics = Metrics()
    app = create_app(settings_for(closed_port()), metrics)
    proxy = await aiohttp_server(app)
    async with client.get(url(proxy, "/x"), headers={"Host": HOST}) as resp:
        assert resp.status == 502
    async with client.get(url(proxy, "/x"), headers={"Host": "nope.example"}) as resp:
        assert resp.status == 421
    value = metrics.registry.get_sample_value
    assert value("halo_requests_total", {"tenant": "shop", "status_class": "5xx"}) == 1
    assert value("halo_requests_total", {"tenant": "_unknown", "status_class": "4xx"}) == 1
    assert value("halo_upstream_errors_total", {"tenant": "shop", "kind": "refused"}) == 1
    assert value("halo_requests_in_flight") == 0


async def test_client_going_away_mid_download_releases_the_upstream(proxy, upstream):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"GET /big?bytes={200 * 1024 * 1024} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await writer.drain()
    await reader.readexactly(1024 * 1024)
    writer.transport.abort()
    # The proxy stops reading the upstream: the next request is still served promptly.
    async with aiohttp.ClientSession() as session:
        async with session.get(url(proxy, "/page"), headers={"Host": HOST}) as resp:
            assert resp.status == 200


def test_app_builds_without_a_running_loop():
    app = create_app(settings_for(1), Metrics())
    assert isinstance(app, web.Application)
