"""Visitor connections on the production listener (edge/connections.py): the head deadline, the idle deadline,
the connection cap, and malformed requests answered without a traceback or the visitor's address in the log.
Deadlines are set to fractions of a second; the tests wait on the socket closing, never on a sleep."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from halo_proxy.app import create_app
from halo_proxy.config import parse
from halo_proxy.edge.connections import Guard, ListenerRunner, self_check
from halo_proxy.metrics import Metrics
from tests.upstream import create_upstream

HOST = "shop.localhost"


def settings_for(port: int, client: str) -> object:
    return parse(f"""
server:
  client: {{{client}}}
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{port}
""", "test.yaml", {})


@pytest.fixture
async def upstream(aiohttp_server):
    return await aiohttp_server(create_upstream())


@asynccontextmanager
async def listening(upstream_port: int, client: str = "header_timeout_s: 0.3, idle_timeout_s: 30"):
    settings = settings_for(upstream_port, client)
    metrics = Metrics()
    runner = ListenerRunner(create_app(settings, metrics), client=settings.server.client, metrics=metrics,
                            access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1], metrics, runner
    finally:
        await runner.cleanup()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(-1), 5)


def sample(metrics: Metrics, name: str, labels: dict | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_a_head_trickled_past_the_deadline_gets_408_and_is_closed(upstream):
    async with listening(upstream.port) as (port, metrics, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: shop.loc")  # and never the rest
        answer = await read_until_closed(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert sample(metrics, "halo_connection_timeouts_total", {"kind": "header"}) == 1


async def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline(upstream):
    async with listening(upstream.port) as (port, metrics, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await read_until_closed(reader)
        writer.close()
    assert sample(metrics, "halo_connection_timeouts_total", {"kind": "header"}) == 1


async def test_an_idle_keep_alive_connection_is_closed(upstream):
    async with listening(upstream.port, "header_timeout_s: 30, idle_timeout_s: 0.3") as (port, metrics, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /page HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        answer = await read_until_closed(reader)  # the answer, then the close after 0.3 s idle
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"</html>")
    assert sample(metrics, "halo_connection_timeouts_total", {"kind": "idle"}) == 1


async def test_the_next_head_on_a_kept_alive_connection_has_its_own_deadline(upstream):
    async with listening(upstream.port, "header_timeout_s: 0.3, idle_timeout_s: 30") as (port, metrics, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /page HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        first = await asyncio.wait_for(reader.readuntil(b"</html>"), 5)
        writer.write(b"GET /page HTTP/1.1\r\nHo")  # the second head stalls
        rest = await read_until_closed(reader)
        writer.close()
    assert first.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 408")


async def test_heads_that_arrive_in_time_are_served_on_one_connection(upstream):
    async with listening(upstream.port, "header_timeout_s: 0.5, idle_timeout_s: 30") as (port, metrics, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(f"GET /page HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            assert (await asyncio.wait_for(reader.readuntil(b"</html>"), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
    assert sample(metrics, "halo_connection_timeouts_total", {"kind": "header"}) == 0


async def test_connections_over_the_cap_get_503_and_are_counted(upstream):
    client = "header_timeout_s: 30, idle_timeout_s: 30, max_connections: 2"
    async with listening(upstream.port, client) as (port, metrics, runner):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in held:  # both are served, so both are open on the server side
            writer.write(f"GET /page HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            await asyncio.wait_for(reader.readuntil(b"</html>"), 5)
        assert sample(metrics, "halo_connections_open") == 2
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await read_until_closed(reader)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503")
        assert sample(metrics, "halo_connections_refused_total") == 1
        for _, w in held:
            w.close()
            await w.wait_closed()
        # A freed place is taken again.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /page HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        again = await read_until_closed(reader)
        writer.close()
    assert again.startswith(b"HTTP/1.1 200")


async def test_malformed_requests_are_one_counted_line_without_the_address(upstream, caplog):
    caplog.set_level(logging.DEBUG)
    async with listening(upstream.port) as (port, metrics, _):
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
            answer = await read_until_closed(reader)
            writer.close()
            assert answer.split(b"\r\n")[0].endswith(b"400 Bad Request")
            assert b"Bad Header" not in answer  # the visitor's bytes are not quoted back
    assert sample(metrics, "halo_bad_requests_total", {"reason": "header"}) + \
        sample(metrics, "halo_bad_requests_total", {"reason": "malformed"}) == 5
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # rate limited
    assert warnings[0].exc_info is None and "127.0.0.1" not in warnings[0].getMessage()
    assert not any("127.0.0.1" in r.getMessage() for r in caplog.records)


def test_the_warning_says_how_many_were_suppressed(caplog):
    now = [0.0]
    guard = Guard(settings_for(1, "").server.client, Metrics(), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        guard.bad_request("header", 400)
        guard.bad_request("header", 400)
        now[0] = 11.0
        guard.bad_request("framing", 400)
    assert len(caplog.records) == 2
    assert "1 more since" in caplog.records[1].getMessage()


def test_self_check_reports_the_c_parser():
    facts = self_check()
    assert facts["c_parser"] is True and facts["c_writer"] is True
    assert facts["aiohttp"] == "3.14.5"


async def test_an_unread_body_is_drained_briefly_then_the_connection_closes(upstream):
    # lingering_time: a request HaloTrack answers without reading its body (a 404 under the prefix) keeps its
    # connection only while the rest of the body flows, at most min(body_timeout_s, 10 s); here 0.3 s.
    async with listening(upstream.port, "header_timeout_s: 30, idle_timeout_s: 30, body_timeout_s: 0.3") as (
            port, metrics, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /_halo/nothing-here HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000000\r\n\r\nab"
                     .encode())
        answer = await read_until_closed(reader)  # the 404, then the close, though 999,998 bytes never came
        writer.close()
    assert answer.startswith(b"HTTP/1.1 404")


async def test_a_large_cookie_header_is_forwarded_and_an_oversized_one_refused(upstream):
    async with listening(upstream.port, "header_timeout_s: 30, idle_timeout_s: 30") as (port, metrics, _):
        for size, status in ((12 * 1024, b"200"), (17 * 1024, b"400")):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nCookie: a={'x' * size}\r\n\r\n"
                         .encode())
            answer = await read_until_closed(reader)
            writer.close()
            assert answer.split(b"\r\n")[0].split(b" ")[1] == status, answer[:80]
