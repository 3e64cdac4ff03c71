"""Load generators: wrk when installed, else a bounded Python client. Both take a `RequestPlan`.

wrk runs with one thread, a fixed number of connections and a fixed duration; a generated Lua script sets the
request (or builds it per request for templates and pools) and prints the result as one JSON line.

The Python client is this file run as a script: aiohttp, one session with exactly `--connections` keep-alive
connections, one coroutine per connection, stopping at the deadline, latencies in a log-bucketed histogram
(1 % resolution). It is far slower than wrk, so with it the proxies' ratios are compressed towards 1.

    python bench/loadgen.py --plan plan.json --url http://127.0.0.1:8080 --connections 32 --duration 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULT_TAG = "BENCH_RESULT "


@dataclass
class Result:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int           # connection errors, timeouts and responses with a status of 400 or more
    error_detail: str
    counted: int = 0      # answers with the plan's `count_status` (0 when it has none)

    @classmethod
    def from_json(cls, data: dict) -> Result:
        return cls(**data)


# ---------------------------------------------------------------------------------------------------------
# wrk.


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _lua_str(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for these inputs


def _lua_request(r) -> str:  # type: ignore[no-untyped-def]
    headers = ", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in r.headers)
    return f"{{method = {_lua_str(r.method)}, path = {_lua_str(r.path)}, headers = {{{headers}}}, body = {_lua_str(r.body)}}}"


def wrk_script(plan, seed: int) -> str:  # type: ignore[no-untyped-def]
    """Lua for wrk: the plan's requests, and a `done` that prints the figures as one JSON line."""
    r = plan.request
    lines = [f"local req = {_lua_request(r)}"]
    if plan.pool:
        reqs = ",\n  ".join(_lua_request(p) for p in plan.pool)
        lines += [
            f"local pool = {{\n  {reqs}\n}}",
            "local formatted = {}",
            "local i = 0",
            "init = function(args)",
            "  for k, p in ipairs(pool) do",
            "    formatted[k] = wrk.format(p.method, p.path, p.headers, p.body ~= '' and p.body or nil)",
            "  end",
            "end",
            "request = function()",
            "  i = i % #formatted + 1",
            "  return formatted[i]",
            "end",
        ]
    elif plan.templated:
        lines += [
            f"local seed = {seed}",
            "local counter = 0",
            "local thread_no = 0",
            "setup = function(thread) thread:set('thread_no', thread_no); thread_no = thread_no + 1 end",
            "init = function(args) counter = seed + thread_no * 100000000 end",
            "local function fill(s, n) return (string.gsub(s, '{n}', n)) end",
            "request = function()",
            "  counter = counter + 1",
            "  local n = tostring(counter)",
            "  local h = {}",
            "  for k, v in pairs(req.headers) do h[k] = fill(v, n) end",
            "  local body = req.body ~= '' and fill(req.body, n) or nil",
            "  return wrk.format(req.method, fill(req.path, n), h, body)",
            "end",
        ]
    else:
        lines += [
            "wrk.method = req.method",
            "wrk.path = req.path",
            "for k, v in pairs(req.headers) do wrk.headers[k] = v end",
            "if req.body ~= '' then wrk.body = req.body end",
        ]
    if plan.count_status:
        # A response callback makes wrk hand every answer to Lua: only plans that count a status pay for it.
        lines += [
            "counted = 0",
            "local threads = {}",
            "local inner_setup = setup",
            "setup = function(thread) table.insert(threads, thread); if inner_setup then inner_setup(thread) end end",
            f"response = function(status) if status == {int(plan.count_status)} then counted = counted + 1 end end",
        ]
    lines += [
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        "  local c = 0",
        "  if threads then for _, t in ipairs(threads) do c = c + t:get('counted') end end",
        f"  io.write({_lua_str(RESULT_TAG)} .. string.format(",
        "    '{\"requests\": %d, \"duration_us\": %d, \"p50_us\": %.1f, \"p99_us\": %.1f, '",
        "    .. '\"connect\": %d, \"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d, '",
        "    .. '\"counted\": %d}\\n',",
        "    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),",
        "    e.connect, e.read, e.write, e.status, e.timeout, c))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def wrk_command(script: Path, url: str, connections: int, seconds: float) -> list[str]:
    return [wrk_path() or "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
            "--latency", "-s", str(script), url]


def parse_wrk(stdout: str) -> Result:
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            d = json.loads(line[len(RESULT_TAG):])
            seconds = d["duration_us"] / 1e6
            kinds = {k: d[k] for k in ("connect", "read", "write", "status", "timeout") if d[k]}
            return Result(requests=d["requests"], seconds=seconds, rps=d["requests"] / seconds,
                          p50_ms=d["p50_us"] / 1000, p99_ms=d["p99_us"] / 1000, errors=sum(kinds.values()),
                          error_detail=" ".join(f"{k}={v}" for k, v in kinds.items()), counted=d["counted"])
    raise RuntimeError("wrk printed no result line:\n" + stdout[-2000:])


# ---------------------------------------------------------------------------------------------------------
# The Python client.


class Histogram:
    """Latencies in log buckets of 1 % width from 1 microsecond; memory bounded whatever the request count."""

    BASE = math.log(1.01)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def record(self, seconds: float) -> None:
        us = max(seconds * 1e6, 1.0)
        b = int(math.log(us) / self.BASE)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.total += 1

    def percentile(self, q: float) -> float:
        """The q-th percentile in milliseconds (the upper edge of its bucket)."""
        if not self.total:
            return float("nan")
        rank = math.ceil(self.total * q / 100)
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return math.exp((b + 1) * self.BASE) / 1000
        return float("nan")


async def _client(plan, url: str, connections: int, seconds: float) -> Result:  # type: ignore[no-untyped-def]
    import aiohttp

    base = url.rstrip("/")
    hist = Histogram()
    errors: dict[str, int] = {}
    counter = [int(time.time() * 1000) % 10**9]
    counted = [0]
    pool = plan.pool
    templated = plan.templated

    def next_request():  # type: ignore[no-untyped-def]
        if pool:
            counter[0] += 1
            return pool[counter[0] % len(pool)]
        r = plan.request
        if not templated:
            return r
        counter[0] += 1
        n = str(counter[0])
        return type(r)(r.method, r.path.replace("{n}", n),
                       tuple((k, v.replace("{n}", n)) for k, v in r.headers), r.body.replace("{n}", n))

    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                     auto_decompress=False, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    return
                r = next_request()
                try:
                    async with session.request(r.method, base + r.path, headers=list(r.headers),
                                               data=r.body.encode() if r.body else None,
                                               skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
                                               allow_redirects=False) as resp:
                        await resp.read()
                        if resp.status == plan.count_status:
                            counted[0] += 1
                        if resp.status >= 400:
                            errors["status"] = errors.get("status", 0) + 1
                except (aiohttp.ClientError, TimeoutError) as err:
                    kind = "timeout" if isinstance(err, TimeoutError) else "socket"
                    errors[kind] = errors.get(kind, 0) + 1
                    await asyncio.sleep(0.01)  # a refused connection must not spin
                    continue
                hist.record(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    done = hist.total
    return Result(requests=done, seconds=elapsed, rps=done / elapsed, p50_ms=hist.percentile(50),
                  p99_ms=hist.percentile(99), errors=sum(errors.values()),
                  error_detail=" ".join(f"{k}={v}" for k, v in errors.items()), counted=counted[0])


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scenarios import plan_from_json

    parser = argparse.ArgumentParser(description="Bounded Python HTTP load generator (used when wrk is absent).")
    parser.add_argument("--plan", required=True, help="RequestPlan as JSON (written by run.py)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    if not 1 <= args.connections <= 10_000 or not 0 < args.duration <= 600:
        parser.error("--connections must be 1..10000 and --duration 0..600 seconds")
    plan = plan_from_json(json.loads(Path(args.plan).read_text()))
    result = asyncio.run(_client(plan, args.url, args.connections, args.duration))
    print(RESULT_TAG + json.dumps(asdict(result)), flush=True)


def python_command(plan_file: Path, url: str, connections: int, seconds: float) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--plan", str(plan_file), "--url", url,
            "--connections", str(connections), "--duration", str(seconds)]


def parse_python(stdout: str) -> Result:
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return Result.from_json(json.loads(line[len(RESULT_TAG):]))
    raise RuntimeError("the Python load generator printed no result line:\n" + stdout[-2000:])


if __name__ == "__main__":
    main()
