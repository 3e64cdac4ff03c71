"""The attribution report at a year's scale: one tenant's year generated into a fresh database, then every model's
report over the full year and over 30 days, and the dashboard's data, timed.

    .venv/bin/python bench/report.py                       # ~1,000,000 sessions, ~3,000,000 touches, 100,000 conversions
    .venv/bin/python bench/report.py --sessions 100000 --conversions 10000 --runs 3   # a quick look

The data set (seeded, so every run builds the same one): sessions spread over the year, each with 1 to 6 touches
(mean 3) from a realistic mix of sources (direct, organic and paid search, paid and organic social, email,
referrals, display, affiliates; the channel by HaloTrack's own GA4 rules; only a first touch can be Direct, as the
tracking stores no direct return visit); 70 % of the conversions matched to a session and attributed with
HaloTrack's own rule (`tracking.attribution.attribute`, 90-day lookback) a day or so after its last touch, 30 %
unmatched; 65 % leads (half with a value), 35 % orders, 5 % of them in EUR. Loaded with COPY
(`copy_records_to_table`), in chunks. The conversions are stored as a process before migration 0009 stored them,
without credits, and credited by the production backfill (`storage.credits.credit_all_pending`), timed: that is
what the first start after the upgrade does, and the credits it writes are the insert's own (`credit_arrays`).
Then VACUUM ANALYZE, as autovacuum would have done over a year.

Timings are medians over `--runs` calls after one warm-up, each through the report service exactly as the route
calls it (the probe for conversions without credits included). Runs on the embedded PostgreSQL the project ships,
under a temporary directory in /tmp removed at the end (`--keep` keeps it); durability is off while loading, as
on the tests' server (reads do not depend on it). Bounded: about three minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's halo_proxy, whatever the venv has installed

import asyncpg  # noqa: E402

from halo_proxy.config import parse  # noqa: E402
from halo_proxy.services.reports import Reports  # noqa: E402
from halo_proxy.storage import credits, migrations  # noqa: E402
from halo_proxy.storage import reports as report_store  # noqa: E402
from halo_proxy.storage.db import create_pool, init_connection  # noqa: E402
from halo_proxy.storage.embedded import EmbeddedPostgres  # noqa: E402
from halo_proxy.tracking.attribution import attribute, attribution_json, attribution_record  # noqa: E402
from halo_proxy.tracking.channel import default_channel  # noqa: E402
from halo_proxy.tracking.credit import MODELS  # noqa: E402
from halo_proxy.tracking.models import Attribution, Touch  # noqa: E402

TENANT = "bench"
YEAR_START = datetime(2025, 12, 1, tzinfo=UTC)
YEAR_DAYS = 365
YEAR_END = YEAR_START + timedelta(days=YEAR_DAYS)
LOOKBACK_DAYS = 90
CHUNK = 50_000
LOAD_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_wal_size": "8GB"}
TOUCH_COUNTS = ((1, 25), (2, 20), (3, 18), (4, 15), (5, 12), (6, 10))  # mean 2.99

SESSION_COLUMNS = ("tenant_id", "id", "created_at", "updated_at",
                   "ft_source", "ft_medium", "ft_campaign", "ft_channel", "ft_landing_path", "ft_at",
                   "lt_source", "lt_medium", "lt_campaign", "lt_channel", "lt_landing_path", "lt_at",
                   "device_type", "browser", "os", "country", "consent_analytics", "consent_marketing")
TOUCH_COLUMNS = ("tenant_id", "session_id", "at", "source", "medium", "campaign", "channel", "referrer_domain",
                 "landing_path")
CONVERSION_COLUMNS = ("id", "tenant_id", "kind", "source", "external_id", "created_at", "occurred_at", "value",
                      "currency", "email_enc", "email_bidx", "session_id", "match_type", "attribution", "response")


def key_pool() -> tuple[list[tuple[str, str, str | None, str]], list[float]]:
    """(source, medium, campaign, channel) of every touch a visit can bring, and how often each comes."""
    keys: list[tuple[str, str, str | None]] = []
    weights: list[float] = []

    def add(source: str, medium: str, campaigns: list[str | None], weight: float) -> None:
        for campaign in campaigns:
            keys.append((source, medium, campaign))
            weights.append(weight / len(campaigns))

    add("google", "organic", [None], 15)
    add("seznam", "organic", [None], 4)
    add("bing", "organic", [None], 2)
    add("google", "cpc", [f"search-{name}" for name in ("brand", "generic", "competitors", "shoes", "boots",
                                                         "sale", "kids", "sport", "winter", "summer")], 13)
    add("seznam", "cpc", [f"sklik-{i}" for i in range(1, 6)], 3)
    add("bing", "cpc", [f"bing-{i}" for i in range(1, 4)], 1)
    add("facebook", "paid_social", [f"fb-{name}" for name in ("prospecting", "retargeting", "lookalike", "video",
                                                             "catalog", "stories")], 8)
    add("instagram", "paid_social", [f"ig-{i}" for i in range(1, 5)], 3)
    add("tiktok", "paid_social", [f"tt-{i}" for i in range(1, 4)], 2)
    add("facebook", "social", [None], 3)
    add("instagram", "social", [None], 2)
    add("linkedin", "social", [None], 1)
    add("newsletter", "email", [f"newsletter-{m:02d}" for m in range(1, 13)], 6)
    add("crm", "email", ["abandoned-cart", "welcome", "winback"], 2)
    add("gdn", "display", [f"display-{i}" for i in range(1, 7)], 2)
    for i in range(1, 41):
        add(f"blog{i}.example", "referral", [None], 5 / 40)
    for i in range(1, 11):
        add(f"partner{i}", "affiliate", [None], 1 / 10)
    return [(s, m, c, default_channel(s, m, c)) for s, m, c in keys], weights


DIRECT_KEY = ("(direct)", "(none)", None, "Direct")
DIRECT_SHARE = 0.3  # of first touches


def touches_of(rng: random.Random, keys: list, cum_weights: list, start: datetime, count: int) -> list[tuple]:
    """A session's touches as (at, source, medium, campaign, channel, referrer domain), oldest first."""
    out = []
    at = start
    drawn = rng.choices(keys, cum_weights=cum_weights, k=count)
    for i in range(count):
        if i:
            at = at + timedelta(seconds=rng.expovariate(1 / (4 * 86400)) + 60)
            if at >= YEAR_END:
                break
        source, medium, campaign, channel = DIRECT_KEY if i == 0 and rng.random() < DIRECT_SHARE else drawn[i]
        out.append((at, source, medium, campaign, channel, source if medium == "referral" else None))
    return out


def conversion_row(rng: random.Random, number: int, at: datetime, attribution: Attribution,
                   session_id: UUID | None) -> tuple:
    lead = rng.random() < 0.65
    kind = "lead" if lead else "order"
    if lead:
        value = Decimal(rng.choice((0, 500, 1000, 1500))) if rng.random() < 0.5 else None
        currency = "CZK"
    else:
        value = Decimal(round(rng.lognormvariate(7.3, 0.8), 2)).quantize(Decimal("0.01"))
        currency = "EUR" if rng.random() < 0.05 else "CZK"
    cid = UUID(int=rng.getrandbits(128))
    email = (b"\x01" + rng.randbytes(47), rng.randbytes(32)) if rng.random() < 0.8 else (None, None)
    answer = {"id": str(cid), "match_type": attribution.match_type, "attribution": attribution_json(attribution)}
    return (cid, TENANT, kind, "api", f"{kind}-{number}", at, at, value, currency, email[0], email[1], session_id,
            attribution.match_type, attribution_record(attribution), answer)


async def generate(conn: asyncpg.Connection, sessions: int, conversions: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    keys, weights = key_pool()
    cum_weights = list(itertools.accumulate(weights))
    counts, count_weights = zip(*TOUCH_COUNTS, strict=True)
    cum_counts = list(itertools.accumulate(count_weights))
    matched_target = int(conversions * 0.7)
    converting = set(rng.sample(range(sessions), min(matched_target, sessions)))
    conversion_rows: list[tuple] = []
    made = {"sessions": 0, "touches": 0, "copy_seconds": 0.0}
    span = (YEAR_DAYS - 1) * 86400
    started = time.perf_counter()
    for chunk_start in range(0, sessions, CHUNK):
        session_rows, touch_rows = [], []
        for i in range(chunk_start, min(chunk_start + CHUNK, sessions)):
            # Ids increase with generation (as UUIDv7 ids do over time), so the load appends to the indexes.
            sid = UUID(int=(i << 64) | rng.getrandbits(64))
            first_at = YEAR_START + timedelta(seconds=rng.random() * span)
            touches = touches_of(rng, keys, cum_weights, first_at, rng.choices(counts, cum_weights=cum_counts)[0])
            ft, lt = touches[0], touches[-1]
            session_rows.append((TENANT, sid, ft[0], lt[0], *ft[1:5], "/", ft[0], *lt[1:5], "/", lt[0],
                                 rng.choice(("mobile", "desktop", "tablet")), "Chrome", "Android", "CZ", True,
                                 rng.random() < 0.7))
            touch_rows.extend((TENANT, sid, *t, "/") for t in touches)
            if i in converting:
                converted_at = min(lt[0] + timedelta(seconds=rng.expovariate(1 / 86400)), YEAR_END - timedelta(
                    seconds=1))
                stored = [Touch(at=at, source=so, medium=me, campaign=ca, channel=ch, referrer_domain=ref)
                          for at, so, me, ca, ch, ref in touches]
                attribution = attribute(stored, match_type="session" if rng.random() < 0.9 else "email",
                                        session_id=str(sid), converted_at=converted_at, lookback_days=LOOKBACK_DAYS)
                conversion_rows.append(conversion_row(rng, len(conversion_rows), converted_at, attribution, sid))
        copying = time.perf_counter()
        await conn.copy_records_to_table("sessions", records=session_rows, columns=SESSION_COLUMNS)
        await conn.copy_records_to_table("touches", records=touch_rows, columns=TOUCH_COLUMNS)
        made["copy_seconds"] += time.perf_counter() - copying
        made["sessions"] += len(session_rows)
        made["touches"] += len(touch_rows)
    while len(conversion_rows) < conversions:  # the unmatched rest
        at = YEAR_START + timedelta(seconds=rng.random() * span)
        conversion_rows.append(conversion_row(rng, len(conversion_rows), at, Attribution(), None))
    conversion_rows.sort(key=lambda r: r[5])  # stored in the order they arrived
    copying = time.perf_counter()
    for chunk_start in range(0, len(conversion_rows), CHUNK):
        await conn.copy_records_to_table("conversions", records=conversion_rows[chunk_start:chunk_start + CHUNK],
                                         columns=CONVERSION_COLUMNS)
    made["copy_seconds"] += time.perf_counter() - copying
    return {**made, "conversions": len(conversion_rows), "seconds": time.perf_counter() - started}


async def timed(fn, runs: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    result = await fn()  # warm-up
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        result = await fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), result


async def dashboard_page(pool: asyncpg.Pool, tenant_yaml: str, first: str, last: str,
                         runs: int) -> tuple[float, float, int]:
    """The dashboard page itself, as an operator's browser gets it: HaloTrack's app on a loopback port, signed in
    with a `report` key, `GET /_halo/dashboard` for the period (median seconds of the year page, of the 30-day
    page, and the year page's size in bytes)."""
    import aiohttp
    from aiohttp import web

    from halo_proxy.app import create_app
    from halo_proxy.crypto import KeyRing, generate_master_secret
    from halo_proxy.metrics import Metrics
    from halo_proxy.operators import key_digest, new_key

    key = new_key()
    text = tenant_yaml + f'    api_keys: [{{name: bench, sha256: "{key_digest(key)}", scopes: [report]}}]\n'
    app = create_app(parse(text, "bench.yaml", {}), Metrics(), keys=KeyRing(generate_master_secret()), pool=pool,
                     migrate=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    base = f"http://127.0.0.1:{port}"
    host = {"Host": "bench.localhost"}
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            async with http.post(f"{base}/_halo/dashboard/login", data=f"key={key}", allow_redirects=False,
                                 headers={**host, "Origin": "http://bench.localhost",
                                          "Content-Type": "application/x-www-form-urlencoded"}) as resp:
                token = resp.cookies["halo_dashboard"].value
            cookie = {**host, "Cookie": f"halo_dashboard={token}"}

            async def get(query: str) -> int:
                async with http.get(f"{base}/_halo/dashboard?{query}", headers=cookie) as resp:
                    body = await resp.read()
                    assert resp.status == 200, resp.status
                    return len(body)

            year_s, size = await timed(lambda: get(f"from={first}&to={last}&model=linear"), runs)
            month_first = (datetime.fromisoformat(last) - timedelta(days=29)).date().isoformat()
            month_s, _ = await timed(lambda: get(f"from={month_first}&to={last}&model=linear"), runs)
        return year_s, month_s, size  # type: ignore[return-value]
    finally:
        await runner.cleanup()


async def explain(conn: asyncpg.Connection, period, model: str, *, seqscan: bool = True) -> list[str]:  # type: ignore[no-untyped-def]
    """The plan's scan and aggregate nodes, heap fetches and execution time, of the report query as the service
    runs it (a read-only transaction)."""
    async with conn.transaction(readonly=True):
        if not seqscan:
            await conn.execute("SET LOCAL enable_seqscan = off")
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + report_store.CREDIT_SUMS, TENANT, model,
                                period.since, period.until, "CZK")
    wanted = ("Scan", "Aggregate", "Sort", "Heap Fetches", "Execution Time")
    return [r[0].strip() for r in rows if any(word in r[0] for word in wanted)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def run(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="halo-bench-report-", dir="/tmp"))
    server = EmbeddedPostgres(data_dir, settings=LOAD_SETTINGS)
    began = time.perf_counter()
    try:
        dsn = await asyncio.to_thread(server.start)
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute('CREATE DATABASE "halo_bench_report"')
        finally:
            await admin.close()
        dsn = server.dsn_for("halo_bench_report")
        conn = await asyncpg.connect(dsn)
        await init_connection(conn)
        await migrations.apply(conn)
        print(f"generating {args.sessions:,} sessions, ~{3 * args.sessions:,} touches, {args.conversions:,} "
              f"conversions ...", flush=True)
        made = await generate(conn, args.sessions, args.conversions, args.seed)
        print(f"  loaded in {made['seconds']:.1f} s (COPY {made['copy_seconds']:.1f} s of it)", flush=True)
        pool = await create_pool(dsn, min_size=1, max_size=4)
        t = time.perf_counter()
        # Two sweeps sharing the work (SKIP LOCKED), as two proxy workers starting together would.
        credited = sum(await asyncio.gather(*(credits.credit_all_pending(pool, batch=1000) for _ in range(2))))
        backfill_s = time.perf_counter() - t
        print(f"  backfill credited {credited:,} conversions in {backfill_s:.1f} s "
              f"({credited / backfill_s:,.0f}/s, two sweeps)", flush=True)
        t = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        vacuum_s = time.perf_counter() - t
        counts = {table: await conn.fetchval(f"SELECT count(*) FROM {table}")
                  for table in ("sessions", "touches", "conversions", "conversion_credits")}
        matched = await conn.fetchval("SELECT count(*) FROM conversions WHERE match_type <> 'none'")
        sizes = {name: await conn.fetchval("SELECT pg_size_pretty(pg_relation_size($1::regclass))", name)
                 for name in ("conversion_credits", "conversion_credits_report", "conversions")}

        tenant_yaml = f"""
tenants:
  - id: {TENANT}
    hosts: [bench.localhost]
    upstream: http://127.0.0.1:9
    currency: CZK
    timezone: Europe/Prague
"""
        tenant = parse(tenant_yaml, "bench.yaml", {}).tenants[0]
        reports = Reports(pool)
        last = (YEAR_END - timedelta(days=1)).date()
        year = reports.period(tenant, YEAR_START.date(), last)
        month = reports.period(tenant, last - timedelta(days=29), last)
        table = []
        for model in MODELS:
            year_s, year_report = await timed(lambda m=model: reports.report(tenant, year, m), args.runs)
            month_s, month_report = await timed(lambda m=model: reports.report(tenant, month, m), args.runs)
            table.append((model, year_s, month_s, year_report, month_report))

        async def four_calls() -> None:
            await reports.daily(tenant, year)
            await reports.by_channel(tenant, year)
            await reports.report(tenant, year)
            await reports.latest(tenant, year, 20)

        dashboard_s, dashboard = await timed(lambda: reports.dashboard(tenant, year, latest=20), args.runs)
        four_s, _ = await timed(four_calls, args.runs)
        dashboard_month_s, _ = await timed(lambda: reports.dashboard(tenant, month, latest=20), args.runs)
        page_year_s, page_month_s, page_bytes = await dashboard_page(
            pool, tenant_yaml, year.first.isoformat(), year.last.isoformat(), args.runs)
        plans = {
            "year": await explain(conn, year, "linear"),
            "year, sequential scans off": await explain(conn, year, "linear", seqscan=False),
            "30 days": await explain(conn, month, "linear"),
        }
        await conn.close()
        await pool.close()

        total_s = time.perf_counter() - began
        print()
        print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
        print(f"data: {counts['sessions']:,} sessions, {counts['touches']:,} touches, {counts['conversions']:,} "
              f"conversions ({matched / counts['conversions']:.0%} matched), {counts['conversion_credits']:,} "
              f"credit rows (table {sizes['conversion_credits']}, report index {sizes['conversion_credits_report']}"
              f"; conversions {sizes['conversions']})")
        print(f"load {made['seconds']:.0f} s (COPY {made['copy_seconds']:.0f} s), backfill {backfill_s:.1f} s "
              f"({credited / backfill_s:,.0f} conversions/s, two sweeps), VACUUM ANALYZE {vacuum_s:.0f} s, whole run {total_s:.0f} s")
        print()
        print(f"| model | year ({len(year.days)} days) | rows | 30 days | rows |")
        print("|---|---|---|---|---|")
        for model, year_s, month_s, yr, mr in table:
            print(f"| {model} | {ms(year_s)} | {len(yr.rows)} | {ms(month_s)} | {len(mr.rows)} |")
        yt = table[0][3].totals
        print()
        print(f"year totals: {yt.conversions:,} conversions ({yt.leads:,} leads, {yt.orders:,} orders), revenue "
              f"{yt.revenue:,.2f} CZK, attributed {yt.attributed:,} ({yt.attribution_rate:.1%}), "
              f"avg {yt.avg_days_to_convert} days to convert")
        print(f"dashboard data (report + daily + by_channel + latest 20, one snapshot): year {ms(dashboard_s)}, "
              f"30 days {ms(dashboard_month_s)}; the four calls one after another, year: {ms(four_s)}")
        print(f"  ({len(dashboard.daily)} days, {len(dashboard.channels)} channels, {len(dashboard.report.rows)} rows, "
              f"{len(dashboard.latest)} latest)")
        print(f"dashboard page (GET /_halo/dashboard signed in, rendered, over loopback): year {ms(page_year_s)} "
              f"({page_bytes / 1024:.0f} KB), 30 days {ms(page_month_s)} (target 1.5 s)")
        print()
        print("plans of the report query (linear; EXPLAIN ANALYZE, so slower than the service's own calls):")
        for name, lines in plans.items():
            print(f"  {name}:")
            for line in lines:
                print(f"    {line}")
        return 0
    finally:
        await asyncio.to_thread(server.stop)
        if args.keep:
            print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--conversions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5, help="timed calls per figure (median), after one warm-up")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
