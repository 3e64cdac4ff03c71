"""The benchmark's open-loop generator (`bench/openloop.c` and `bench/openloop.py`): its schedule arithmetic, the
requests file, and the C program's framing and counting against a real aiohttp server. Counts only: no test here
looks at a latency or a rate."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from aiohttp import web

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import openloop  # noqa: E402
import scenarios  # noqa: E402


@pytest.mark.parametrize(("rate", "warmup", "duration", "expected"), [
    (100, 1, 2, (300, 200)),
    (1000, 0, 1, (1000, 1000)),
    (3, 0.5, 1, (5, 3)),          # due at 0, 0.333 (warm-up), 0.667, 1.0, 1.333 s
    (2500, 1, 5, (15000, 12500)),
])
def test_schedule_counts_sent_and_measured_requests(rate, warmup, duration, expected):
    assert openloop.schedule(rate, warmup, duration) == expected


@pytest.mark.parametrize(("saturation", "fractions", "expected"), [
    (2413.0, (0.25, 0.5, 0.75), [600, 1210, 1810]),
    (20.0, (0.25,), [10]),
])
def test_fixed_rates_are_fractions_of_saturation_rounded_to_ten(saturation, fractions, expected):
    assert openloop.fixed_rates(saturation, fractions) == expected


def test_raw_request_matches_what_wrk_sends():
    assert openloop.raw_request("GET", "/page", (("Host", "h"),), "") == b"GET /page HTTP/1.1\r\nHost: h\r\n\r\n"
    assert openloop.raw_request("POST", "/x", (("Host", "h"),), "{}") == \
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"


def test_requests_file_and_templates(tmp_path):
    assert openloop.encode([b"ab", b"c"]) == b"2\n2\nab1\nc"
    plan = scenarios.RequestPlan(scenarios.Request("GET", "/p?g={n}", (("Host", "h"),)))
    spec = openloop.write_requests(plan, tmp_path / "t.bin", 10)
    assert spec.template and (tmp_path / "t.bin").read_bytes().count(b"{n}") == 1
    # A body holding {n} would change length: expanded into one request each instead.
    plan = scenarios.RequestPlan(scenarios.Request("POST", "/p", (("Host", "h"),), '{"n": {n}}'))
    spec = openloop.write_requests(plan, tmp_path / "b.bin", 3)
    data = (tmp_path / "b.bin").read_bytes()
    assert not spec.template and data.startswith(b"3\n") and b'{"n": 2}' in data


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    if openloop.compiler() is None:
        pytest.fail("no C compiler (cc or gcc): make bench installs gcc; apt-get install gcc")
    return openloop.build(tmp_path_factory.mktemp("openloop"))


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"x" * 5000)
    await response.write(b"y" * 3)
    await response.write_eof()
    return response


def make_app(seen: list[str]) -> web.Application:
    answers = {
        "/len": lambda: web.Response(body=b"z" * 4096),
        "/empty": lambda: web.Response(status=204),
        "/close": lambda: web.Response(text="bye", headers={"Connection": "close"}),
        "/created": lambda: web.Response(status=201, text="{}"),
        "/missing": lambda: web.Response(status=404),
    }

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.path_qs)
        if request.path == "/chunked":
            return await chunked(request)
        return answers[request.path]()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def run_generator(binary: Path, spec: openloop.RequestsSpec, port: int, *, rate: float = 400,
                        duration: float = 0.25, warmup: float = 0.05, count_status: int | None = None,
                        seed: int = 0) -> openloop.OpenResult:
    argv = openloop.command(binary, spec, port, rate, duration, warmup, connections=4, seed=seed,
                            count_status=count_status)
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return openloop.parse(out.decode())


def request_file(tmp_path: Path, name: str, *requests: bytes) -> openloop.RequestsSpec:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(openloop.encode(list(requests)))
    return openloop.RequestsSpec(path, False)


@pytest.mark.parametrize("path", ["/len", "/chunked", "/empty", "/close"])
async def test_every_scheduled_request_is_answered_whatever_the_framing(binary, aiohttp_server, tmp_path, path):
    seen: list[str] = []
    server = await aiohttp_server(make_app(seen))
    spec = request_file(tmp_path, "r", openloop.raw_request("GET", path, (("Host", "t"),), ""))
    result = await run_generator(binary, spec, server.port)
    total, measured = openloop.schedule(400, 0.05, 0.25)
    assert (result.sent, result.scheduled, result.completed, result.ok, result.errors) == \
        (total, measured, measured, measured, 0)
    assert len(seen) == total
    if path == "/close":
        assert result.reconnects >= total - 1  # each answer closed its connection; the next one opened anew


async def test_template_counter_pool_order_and_counted_status(binary, aiohttp_server, tmp_path):
    seen: list[str] = []
    server = await aiohttp_server(make_app(seen))
    plan = scenarios.RequestPlan(scenarios.Request("GET", "/len?g={n}", (("Host", "t"),)))
    spec = openloop.write_requests(plan, tmp_path / "t.bin", 0)
    result = await run_generator(binary, spec, server.port, seed=1000)
    assert sorted(seen) == sorted(f"/len?g={1000 + i}" for i in range(result.sent))

    seen.clear()
    body = openloop.raw_request("POST", "/created", (("Host", "t"),), "{}")
    spec = request_file(tmp_path, "p", body, openloop.raw_request("GET", "/missing", (("Host", "t"),), ""))
    result = await run_generator(binary, spec, server.port, count_status=201)
    total, measured = openloop.schedule(400, 0.05, 0.25)
    # the pool taken in order: every other request the first one (arrival order across its four connections is
    # the server's, which a stalled machine may shuffle)
    assert len(seen) == result.sent and seen.count("/created") == (result.sent + 1) // 2
    assert result.counted_all == (total + 1) // 2 and result.counted + result.s4xx == measured
    assert result.status_errors == result.s4xx and result.s2xx == result.counted


async def test_refuses_targets_off_loopback(binary, tmp_path):
    spec = request_file(tmp_path, "r", b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    argv = openloop.command(binary, spec, 80, 10, 0.1, 0, 1)
    argv[argv.index("--host") + 1] = "10.0.0.1"
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2 and b"loopback" in err
