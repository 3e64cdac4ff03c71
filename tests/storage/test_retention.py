"""The retention sweep against PostgreSQL: what goes and what stays, the dry run, the advisory lock, and every
purge and count query read through an index (plan tests last: the planner fixture reseeds the tables)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import asyncpg
import pytest

from halo_proxy.config import parse
from halo_proxy.metrics import Metrics
from halo_proxy.services.retention import Retention
from halo_proxy.storage import retention
from tests.storage.conftest import assert_indexed

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
TENANTS = parse("""
tenants:
  - id: keep
    hosts: [keep.test]
    upstream: http://127.0.0.1:1
    retention_days: {sessions: 30, anon_events: 10, forwards: 7, events: 20}
  - id: other
    hosts: [other.test]
    upstream: http://127.0.0.1:1
""", "t.yaml", {}).tenants


async def seed(pool: asyncpg.Pool, tenant: str, age_days: int) -> None:
    at = NOW - timedelta(days=age_days)
    sid, cid = uuid4(), uuid4()
    await pool.execute(
        "INSERT INTO sessions (tenant_id, id, created_at, updated_at, ft_channel, ft_landing_path, ft_at, lt_channel,"
        " lt_landing_path, lt_at, consent_analytics, consent_marketing) VALUES ($1, $2, $3, $3, 'Direct', '/', $3,"
        " 'Direct', '/', $3, true, true)", tenant, sid, at)
    await pool.execute("INSERT INTO touches (tenant_id, session_id, at, channel, landing_path) VALUES ($1, $2, $3,"
                       " 'Direct', '/')", tenant, sid, at)
    await pool.execute("INSERT INTO events (tenant_id, session_id, name, at) VALUES ($1, $2, 'e', $3)", tenant, sid, at)
    await pool.execute("INSERT INTO consent_changes (tenant_id, session_id, at, analytics, marketing, gpc, change)"
                       " VALUES ($1, $2, $3, true, true, false, 'updated')", tenant, sid, at)
    await pool.execute("INSERT INTO anon_events (tenant_id, day, count) VALUES ($1, $2, 1) ON CONFLICT DO NOTHING",
                       tenant, at.date())
    await pool.execute("INSERT INTO conversions (id, tenant_id, kind, source, created_at, occurred_at) VALUES"
                       " ($1, $2, 'lead', 'api', $3, $3)", cid, tenant, at)
    for platform, status in (("meta", "sent"), ("ga4", "pending")):
        await pool.execute(
            "INSERT INTO forwards (tenant_id, conversion_id, platform, event_id, status, next_attempt_at, payload_enc,"
            " created_at, updated_at) VALUES ($1, $2, $3, 'x', $4, $5, '\\x01', $5, $5)",
            tenant, cid, platform, status, at)


@pytest.fixture
async def aged(db_pool):
    await db_pool.execute("TRUNCATE sessions, touches, events, consent_changes, anon_events, conversions, forwards,"
                          " forward_attempts CASCADE")
    for tenant in ("keep", "other"):
        for age in (3, 15, 25, 45, 500):
            await seed(db_pool, tenant, age)
    return db_pool


async def counts(pool: asyncpg.Pool, tenant: str) -> dict[str, int]:
    out = {}
    for table in ("sessions", "touches", "events", "consent_changes", "anon_events", "forwards"):
        out[table] = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant)
    return out


async def test_each_kind_goes_after_its_own_days_and_a_dry_run_changes_nothing(aged):
    metrics = Metrics()
    purge = Retention(aged, lambda: NOW, metrics)
    before = await counts(aged, "keep")
    dry = await purge.purge(TENANTS, dry_run=True)
    assert dry["keep"] == {"sessions": 2, "events": 1, "anon_events": 4, "forwards": 4}
    assert await counts(aged, "keep") == before
    done = await purge.purge(TENANTS)
    assert done["keep"] == dry["keep"]
    # sessions older than 30 days go with their touches, events and consent history; younger events over 20 days
    # old go on their own; finished forwards over 7 days (a pending one is never purged); aggregates over 10 days.
    assert await counts(aged, "keep") == {"sessions": 3, "touches": 3, "events": 2, "consent_changes": 3,
                                          "anon_events": 1, "forwards": 6}
    assert await aged.fetchval("SELECT count(*) FROM forwards WHERE tenant_id = 'keep' AND status = 'pending'") == 5
    # The other tenant's defaults (395, 90, 90, 395 days): only the 500-day-old rows go.
    assert (await counts(aged, "other"))["sessions"] == 4
    registry = metrics.registry
    assert registry.get_sample_value("halo_purged_rows_total", {"tenant": "keep", "kind": "sessions"}) == 2
    assert await purge.purge(TENANTS) == {"keep": dict.fromkeys(dry["keep"], 0), "other": dict.fromkeys(dry["keep"], 0)}


async def test_one_purge_at_a_time_across_processes(aged):
    async with aged.acquire() as holder, holder.transaction():
        assert await retention.try_lock(holder)
        assert await Retention(aged, lambda: NOW).purge(TENANTS) is None  # another connection: skipped
    assert await Retention(aged, lambda: NOW).purge(TENANTS) is not None


@pytest.mark.parametrize("sql, indexes", [
    (retention.COUNT_SESSIONS, {"sessions_tenant_updated_at"}),
    (retention.COUNT_EVENTS, {"events_tenant_at", "sessions_tenant_updated_at"}),
    (retention.COUNT_ANON, {"anon_events_key"}),
    (retention.COUNT_FORWARDS, {"forwards_finished_tenant_updated"}),
    (retention.PURGE_EVENTS, {"events_tenant_at"}),
    (retention.PURGE_ANON, {"anon_events_key"}),
    (retention.PURGE_FORWARDS, {"forwards_finished_tenant_updated"}),
    (retention.PURGE_SESSIONS, {"sessions_tenant_updated_at", "touches_tenant_session_at", "events_session",
                                "consent_changes_session"}),
])
async def test_every_purge_query_reads_through_an_index(planner, sql, indexes):
    await assert_indexed(planner, sql, indexes)


async def test_the_purge_command_counts_then_deletes(aged, database, tmp_path):
    import os
    import subprocess
    import sys

    config = tmp_path / "tenants.yaml"
    config.write_text("tenants:\n  - {id: keep, hosts: [keep.test], upstream: 'http://127.0.0.1:1',\n"
                      "     retention_days: {sessions: 1, anon_events: 1, forwards: 1, events: 1}}\n")
    env = {**os.environ, "HALO_DATABASE_URL": database.dsn}
    command = [sys.executable, "-m", "halo_proxy", "purge", "--config", str(config)]
    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "keep: would delete 5 sessions, 0 events, 5 anon_events, 5 forwards"
    assert await aged.fetchval("SELECT count(*) FROM sessions WHERE tenant_id = 'keep'") == 5
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip() == "keep: deleted 5 sessions, 0 events, 5 anon_events, 5 forwards"
    assert await aged.fetchval("SELECT count(*) FROM sessions WHERE tenant_id = 'keep'") == 0
    assert await aged.fetchval("SELECT count(*) FROM sessions WHERE tenant_id = 'other'") == 5  # not in this file
    bad = subprocess.run([sys.executable, "-m", "halo_proxy", "purge", "--config", str(tmp_path / "none.yaml")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2


async def test_the_background_purge_runs_its_rounds(aged):
    import asyncio

    metrics = Metrics()
    purge = Retention(aged, lambda: NOW, metrics)
    task = asyncio.create_task(purge.run(lambda: TENANTS, every_s=3600, first_after_s=0))
    try:
        await asyncio.wait_for(purge.round_done.wait(), timeout=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert purge.rounds == 1
    assert metrics.registry.get_sample_value("halo_purged_rows_total", {"tenant": "keep", "kind": "sessions"}) == 2
