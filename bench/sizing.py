"""The database side of sizing a HaloTrack deployment (deploy/README.md, "Sizing"): transactions and rows written
per new visitor, per returning visitor and per lead, and the connections one process opens under load.

    python bench/sizing.py [--visitors 1000] [--leads 300] [--concurrency 16]

HaloTrack runs as in production (`halo-proxy serve --workers 1`) against its own embedded PostgreSQL in a
temporary folder. The counts come from PostgreSQL's statistics (pg_stat_database, pg_stat_user_tables), read
after each phase once the rows are stored and the statistics flushed; the transactions HaloTrack makes while
idle (readiness pings, the outbox's polls, measured first) are subtracted. Loopback only; bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
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
sys.path.insert(0, str(ROOT))

from halo_proxy.storage.embedded import EmbeddedPostgres  # noqa: E402

HOST = "sizing.localhost"
SECRET = "sizing-webhook-secret-0123456789"
BROWSER = {"Host": HOST, "Accept": "text/html", "Sec-Fetch-Dest": "document",
           "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 "
                         "Safari/537.36"}
STATS_FLUSH_S = 1.5  # PostgreSQL publishes a backend's statistics at most once a second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign(body: bytes) -> str:
    t = int(time.time())
    return f"t={t},v1={hmac.new(SECRET.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


COUNTED = ("schema_migrations", "sessions", "touches", "conversions", "identities", "conversion_credits")


class Watcher:
    """Reads the statistics of HaloTrack's database `halo`: its tables' from a connection to it (one transaction
    per look, counted in `own`, so that they are not taken for HaloTrack's), the database's from `postgres`."""

    def __init__(self, halo: asyncpg.Connection, postgres: asyncpg.Connection):
        self.halo = halo
        self.postgres = postgres
        self.own = 0

    async def rows(self, table: str) -> int:
        self.own += 1
        return await self.halo.fetchval(f"SELECT count(*) FROM {table}")

    async def snapshot(self) -> dict:
        """The statistics once they account for every stored row: a backend publishes its counts when it has
        been idle a while, so wait (bounded) until the inserts counted match the rows there are."""
        deadline = time.monotonic() + 30
        while True:
            await asyncio.sleep(STATS_FLUSH_S)
            self.own += 1
            async with self.halo.transaction(readonly=True):
                rows = {t: await self.halo.fetchval(f"SELECT count(*) FROM {t}") for t in COUNTED}
                tables = {r["relname"]: (r["n_tup_ins"], r["n_tup_upd"]) for r in await self.halo.fetch(
                    "SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_user_tables")}
            if all(tables.get(t, (0, 0))[0] == n for t, n in rows.items()) or time.monotonic() > deadline:
                break
        db = await self.postgres.fetchrow("SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database "
                                          "WHERE datname = 'halo'")
        return {"xacts": db["xact_commit"], "ins": db["tup_inserted"], "upd": db["tup_updated"], "tables": tables,
                "at": time.monotonic(), "own": self.own}


def delta(before: dict, after: dict, idle_xacts_per_s: float) -> dict:
    seconds = after["at"] - before["at"]
    own_xacts = after["own"] - before["own"]
    tables = {}
    for name, (ins, upd) in after["tables"].items():
        b_ins, b_upd = before["tables"].get(name, (0, 0))
        if ins - b_ins or upd - b_upd:
            tables[name] = (ins - b_ins, upd - b_upd)
    return {"xacts": after["xacts"] - before["xacts"] - idle_xacts_per_s * seconds - own_xacts,
            "ins": after["ins"] - before["ins"], "upd": after["upd"] - before["upd"], "tables": tables}


async def stored(count, want: int, within: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Until `await count()` reaches `want` (the write queue has flushed), for at most `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        if await count() >= want:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {await count()} of {want} rows stored after {within:.0f} s")
        await asyncio.sleep(0.1)


async def bounded(concurrency: int, jobs) -> list:  # type: ignore[no-untyped-def]
    gate = asyncio.Semaphore(concurrency)

    async def one(job):  # type: ignore[no-untyped-def]
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


async def run(visitors: int, leads: int, concurrency: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="halo-sizing-"))
    server = EmbeddedPostgres(str(tmp / "pg"))
    admin_dsn = server.start()
    dsn = server.dsn_for("halo")
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute("CREATE DATABASE halo")
    port, metrics_port, upstream_port = free_port(), free_port(), free_port()
    config = tmp / "tenants.yaml"
    config.write_text(f"""
tenants:
  - id: sizing
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    webhook_secret: {SECRET}
""")
    env = {**os.environ, "HALO_DATABASE_URL": dsn, "HALO_SECRET_KEY": secrets.token_hex(32),
           "HALO_DATA_DIR": str(tmp / "data")}
    upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(upstream_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    proxy = subprocess.Popen([sys.executable, "-m", "halo_proxy", "--log-level", "WARNING", "serve", "--config",
                              str(config), "--port", str(port), "--metrics-port", str(metrics_port)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    conn = None
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            deadline = time.monotonic() + 90
            while True:
                try:
                    async with http.get(f"{base}/_halo/readyz", headers={"Host": HOST}) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("HaloTrack did not become ready")
                await asyncio.sleep(0.1)
            conn = await asyncpg.connect(dsn)
            watch = Watcher(conn, admin)
            # HaloTrack's transactions while idle, over 5 s.
            b = await watch.snapshot()
            await asyncio.sleep(5)
            c = await watch.snapshot()
            idle = (c["xacts"] - b["xacts"] - (c["own"] - b["own"])) / (c["at"] - b["at"])

            async def land(n: int) -> str:
                async with http.get(f"{base}/?utm_source=google&utm_medium=cpc&gclid=size{n}",
                                    headers=BROWSER) as resp:
                    await resp.read()
                    return resp.cookies["_halo"].value

            before = await watch.snapshot()
            cookies = await bounded(concurrency, [lambda n=n: land(n) for n in range(visitors)])
            await stored(lambda: watch.rows("sessions"), visitors)
            new = delta(before, await watch.snapshot(), idle)

            async def come_back(n: int) -> None:
                async with http.get(f"{base}/", headers={**BROWSER, "Cookie": f"_halo={cookies[n]}"}) as resp:
                    await resp.read()

            before = await watch.snapshot()
            await bounded(concurrency, [lambda n=n: come_back(n) for n in range(visitors)])
            returning = delta(before, await watch.snapshot(), idle)

            async def campaign(n: int) -> None:
                async with http.get(f"{base}/?utm_source=newsletter&utm_medium=email&utm_campaign=c{n}",
                                    headers={**BROWSER, "Cookie": f"_halo={cookies[n]}"}) as resp:
                    await resp.read()

            before = await watch.snapshot()
            await bounded(concurrency, [lambda n=n: campaign(n) for n in range(visitors)])
            await stored(lambda: watch.rows("touches"), 2 * visitors)
            touched = delta(before, await watch.snapshot(), idle)

            peak = 0
            sampling = True

            async def sample() -> None:
                nonlocal peak
                watcher = await asyncpg.connect(dsn)
                try:
                    while sampling:
                        count = await watcher.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
                        peak = max(peak, count - 1)  # less this script's own connection
                        await asyncio.sleep(0.02)
                finally:
                    await watcher.close()

            async def lead(n: int) -> int:
                body = json.dumps({"email": f"size{n}@example.com", "session_id": cookies[n], "value": 10,
                                   "event_id": f"size-{n}"}).encode()
                headers = {"Host": HOST, "Content-Type": "application/json", "X-Halo-Signature": sign(body)}
                async with http.post(f"{base}/_halo/webhook/lead", data=body, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            before = await watch.snapshot()
            sampler = asyncio.create_task(sample())
            statuses = await bounded(max(concurrency, 64), [lambda n=n: lead(n) for n in range(leads)])
            sampling = False
            await sampler
            assert set(statuses) == {201}, set(statuses)
            converted = delta(before, await watch.snapshot(), idle)
            idle_connections = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
    finally:
        if conn is not None:
            await conn.close()
        await admin.close()
        for proc in (proxy, upstream):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def line(name: str, d: dict, count: int) -> str:
        tables = ", ".join(f"{t} +{i}/~{u}" for t, (i, u) in sorted(d["tables"].items()))
        return (f"| {name} | {count} | {d['xacts'] / count:.3f} | {d['ins'] / count:.2f} | {d['upd'] / count:.2f} "
                f"| {tables} |")

    print(f"HaloTrack idle: {idle:.2f} transactions/s per process (readiness, outbox polls)")
    print("| what | count | transactions each | rows inserted each | rows updated each | by table (+inserted/~updated) |")
    print("|---|---:|---:|---:|---:|---|")
    print(line("new visitor (ad click)", new, visitors))
    print(line("returning visitor, no campaign", returning, visitors))
    print(line("returning visitor, new campaign", touched, visitors))
    print(line("lead matched by session", converted, leads))
    print(f"database connections of one process: at most {peak} during {max(concurrency, 64)} concurrent leads, "
          f"{idle_connections - 1} open afterwards (pool limit HALO_DATABASE_POOL_SIZE, default 32)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=1000)
    parser.add_argument("--leads", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if not (1 <= args.leads <= args.visitors <= 100_000):
        parser.error("need 1 <= --leads <= --visitors <= 100000")
    asyncio.run(run(args.visitors, args.leads, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
