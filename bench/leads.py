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


async def run(duration: float, connections: int) -> dict:
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
            elapsed = time.monotonic() - started
        dsn = f"postgresql://postgres@/postgres?host={tmp / 'data' / 'pg'}&port=5432"
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM conversions WHERE tenant_id = 'bench'")
        finally:
            await conn.close()
        return {"leads_ok": ok, "errors": errors, "seconds": elapsed, "per_s": ok / elapsed, "stored": stored,
                "connections": connections}
    finally:
        for proc in (proxy, upstream):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.duration, args.connections))
    line = (f"{result['per_s']:.0f} signed leads/s committed ({result['leads_ok']} in {result['seconds']:.1f} s, "
            f"{result['connections']} connections, {result['errors']} errors, {result['stored']} rows stored)")
    print(line)
    if result["stored"] != result["leads_ok"]:
        print("MISMATCH: stored rows differ from 201 answers", file=sys.stderr)
        return 1
    if not args.no_append:
        import aiohttp as _aiohttp

        with DOC.open("a") as doc:
            doc.write(f"\n### Lead webhooks, {dt.date.today()}\n\n"
                      f"`python bench/leads.py --duration {args.duration:g} --connections {args.connections}` "
                      f"on {os.cpu_count()} CPUs, Python {platform.python_version()}, aiohttp {_aiohttp.__version__}, "
                      f"one worker, embedded PostgreSQL: **{line}**. Target: at least 1,000/s.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
