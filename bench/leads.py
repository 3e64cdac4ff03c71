"""Signed lead webhooks per second committed to the database, through `halo-proxy serve --workers 1`.

    python bench/leads.py [--duration 10] [--connections 32] [--no-append]

HaloTrack runs as in production (one worker, the embedded PostgreSQL under a temporary HALO_DATA_DIR). A bounded
aiohttp client posts signed JSON leads (`X-Halo-Signature`), each with its own `event_id` and email, and counts
the 201 answers; afterwards the number of conversions in the database is checked against that count, so every
lead counted is a lead committed before its answer. Half the leads carry the session id of a visit made before
the run (matched by session), half only an email (looked up by blind index). Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
HOST = "bench.localhost"
SECRET = "bench-webhook-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign(body: bytes, t: int) -> str:
    return f"t={t},v1={hmac.new(SECRET.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


async def wait_ready(base: str, deadline_s: float = 90) -> None:
    end = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            try:
                async with session.get(f"{base}/_halo/readyz", headers={"Host": HOST}) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("HaloTrack did not become ready")


def lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b}" for b in data) + '"'


def wrk_script(path: Path, bodies: list[bytes], stamp: int) -> None:
    """A wrk script that posts each pre-signed lead once, in order, and counts the answers by status."""
    lines = ["local reqs = {}", "local n = 0", "created, other = 0, 0", "local threads = {}",
             "setup = function(thread) table.insert(threads, thread) end", "init = function(args)"]
    for body in bodies:
        headers = (f'{{["Host"]="{HOST}", ["Content-Type"]="application/json", '
                   f'["X-Halo-Signature"]="{sign(body, stamp)}"}}')
        lines.append(f'  reqs[#reqs + 1] = wrk.format("POST", "/_halo/webhook/lead", {headers}, {lua_string(body)})')
    lines += [
        "end",
        "request = function() n = n + 1; return reqs[((n - 1) % #reqs) + 1] end",
        "response = function(status) if status == 201 then created = created + 1 else other = other + 1 end end",
        "done = function()",
        "  local c, o = 0, 0",
        '  for _, t in ipairs(threads) do c = c + t:get("created"); o = o + t:get("other") end',
        '  io.write(string.format("CREATED %d OTHER %d\\n", c, o))',
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")


async def run_wrk(base: str, tmp: Path, cookie: str | None, duration: float, connections: int) -> dict:
    # More pre-built leads than the run can send, so every request is a new conversion.
    count = int(duration * 2500)
    bodies = []
    for n in range(count):
        payload = {"email": f"wrk{n}@example.com", "event_id": f"wrk-{n}", "form_type": "contact", "value": 10}
        if cookie and n % 2 == 0:
            payload["session_id"] = cookie
        bodies.append(json.dumps(payload).encode())
    script = tmp / "leads.lua"
    wrk_script(script, bodies, int(time.time()))
    started = time.monotonic()
    out = await asyncio.to_thread(subprocess.run, ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s",
                                                   str(script), base + "/"], capture_output=True, text=True,
                                  timeout=duration + 120)
    elapsed = time.monotonic() - started
    created = other = 0
    for line in out.stdout.splitlines():
        if line.startswith("CREATED"):
            parts = line.split()
            created, other = int(parts[1]), int(parts[3])
    return {"leads_ok": created, "errors": other, "seconds": min(elapsed, duration), "generator": "wrk"}


async def run(duration: float, connections: int, generator: str = "auto") -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="halo-bench-leads-"))
    port, metrics_port = free_port(), free_port()
    upstream_port = free_port()
    config = tmp / "tenants.yaml"
    config.write_text(f"""
tenants:
  - id: bench
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    webhook_secret: {SECRET}
    default_phone_region: CZ
""")
    env = {**os.environ, "HALO_DATA_DIR": str(tmp / "data"), "HALO_SECRET_KEY": secrets.token_hex(32)}
    env.pop("HALO_DATABASE_URL", None)
    upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(upstream_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    proxy = subprocess.Popen([sys.executable, "-m", "halo_proxy", "--log-level", "WARNING", "serve", "--config",
                              str(config), "--port", str(port), "--metrics-port", str(metrics_port),
                              "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
            # A visit to match half the leads by session.
            async with session.get(f"{base}/?utm_source=google&utm_medium=cpc&gclid=bench", headers={
                    "Host": HOST, "Accept": "text/html", "Sec-Fetch-Dest": "document",
                    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"}) as resp:
                cookie = resp.cookies["_halo"].value if "_halo" in resp.cookies else None
            if generator == "wrk" or (generator == "auto" and shutil.which("wrk")):
                result = await run_wrk(base, tmp, cookie, duration, connections)
                ok, errors, elapsed = result["leads_ok"], result["errors"], result["seconds"]
                gen = "wrk"
            else:
                ok, errors, elapsed = await python_client(session, base, cookie, duration, connections)
                gen = "python"
        dsn = f"postgresql://postgres@/postgres?host={tmp / 'data' / 'pg'}&port=5432"
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM conversions WHERE tenant_id = 'bench'")
        finally:
            await conn.close()
        return {"leads_ok": ok, "errors": errors, "seconds": elapsed, "per_s": ok / elapsed, "stored": stored,
                "connections": connections, "generator": gen}
    finally:
        for proc in (proxy, upstream):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


async def python_client(session: aiohttp.ClientSession, base: str, cookie: str | None, duration: float,
                        connections: int) -> tuple[int, int, float]:
    """The bounded Python load generator, for machines without wrk."""
    counter = iter(range(10**9))
    ok = errors = 0
    stop_at = time.monotonic() + duration

    async def client() -> None:
        nonlocal ok, errors
        while time.monotonic() < stop_at:
            n = next(counter)
            payload = {"email": f"lead{n}@example.com", "event_id": f"bench-{n}", "form_type": "contact",
                       "value": 10}
            if cookie and n % 2 == 0:
                payload["session_id"] = cookie
            body = json.dumps(payload).encode()
            headers = {"Host": HOST, "Content-Type": "application/json",
                       "X-Halo-Signature": sign(body, int(time.time()))}
            async with session.post(f"{base}/_halo/webhook/lead", data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 201:
                    ok += 1
                else:
                    errors += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    return ok, errors, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk when installed (auto), or the bounded Python client")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.duration, args.connections, args.generator))
    line = (f"{result['per_s']:.0f} signed leads/s committed ({result['leads_ok']} in {result['seconds']:.1f} s, "
            f"{result['connections']} connections, {result['generator']} load generator, {result['errors']} "
            f"other answers, {result['stored']} rows stored)")
    print(line)
    # Every 201 is a committed row; at most one request per connection may have committed after the load
    # generator stopped reading answers.
    if result["leads_ok"] == 0 or not \
            result["leads_ok"] <= result["stored"] <= result["leads_ok"] + result["connections"]:
        print("MISMATCH: stored rows do not match the 201 answers", file=sys.stderr)
        return 1
    if not args.no_append:
        import aiohttp as _aiohttp

        with DOC.open("a") as doc:
            doc.write(f"\n### Lead webhooks, {dt.date.today()}\n\n"
                      f"`python bench/leads.py --duration {args.duration:g} --connections {args.connections} "
                      f"--generator {args.generator}` "
                      f"on {os.cpu_count()} CPUs, Python {platform.python_version()}, aiohttp {_aiohttp.__version__}, "
                      f"one worker, embedded PostgreSQL: **{line}**. Target: at least 1,000/s.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
