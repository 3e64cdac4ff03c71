"""Migrations: applied once, in order, atomically, even when several processes start together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from halo_proxy.storage import migrations
from halo_proxy.storage.db import create_pool
from halo_proxy.storage.migrations import Migration, MigrationError
from tests.conftest import TestDatabase


def test_shipped_migrations_are_numbered_in_order() -> None:
    names = [m.name for m in migrations.load()]
    assert names[0] == "0001_sessions"
    assert names == sorted(names)
    assert all(m.sql.strip() for m in migrations.load())


async def test_module_database_is_up_to_date(db_pool: asyncpg.Pool) -> None:
    assert await migrations.apply(db_pool) == []
    assert await migrations.applied(db_pool) == [m.name for m in migrations.load()]
    tables = {
        r["tablename"]
        for r in await db_pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"schema_migrations", "sessions", "touches", "anon_events"} <= tables


async def test_racing_apply_calls_apply_each_migration_once(
    database_factory: Callable[..., TestDatabase],
) -> None:
    fresh = await asyncio.to_thread(database_factory, migrate=False)
    pools = [await create_pool(fresh.dsn, min_size=1, max_size=1) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrations.apply(pool) for pool in pools))
        applied = [name for result in results for name in result]
        assert sorted(applied) == [m.name for m in migrations.load()]  # each once, by exactly one caller
        assert sum(1 for r in results if r) == 1
        rows = await pools[0].fetch("SELECT name FROM schema_migrations ORDER BY name")
        assert [r["name"] for r in rows] == [m.name for m in migrations.load()]
    finally:
        for pool in pools:
            await pool.close()


async def test_failing_migration_leaves_nothing_applied(
    database_factory: Callable[..., TestDatabase],
) -> None:
    fresh = await asyncio.to_thread(database_factory, migrate=False)
    good = Migration("0001_good", "CREATE TABLE good (x int);")
    bad = Migration("0002_bad", "CREATE TABLE bad (x nosuchtype);")
    conn = await asyncpg.connect(fresh.dsn)
    try:
        with pytest.raises(MigrationError, match="0002_bad"):
            await migrations.apply(conn, [good, bad])
        assert await conn.fetchval("SELECT to_regclass('good')") is None
        assert await migrations.applied(conn) == []
        assert await migrations.apply(conn, [good]) == ["0001_good"]
        assert await migrations.apply(
            conn, [good, Migration("0002_fixed", "CREATE TABLE fixed (x int);")]
        ) == ["0002_fixed"]
    finally:
        await conn.close()


async def test_touch_writes_check_no_foreign_key(db_pool: asyncpg.Pool) -> None:
    """A page view's touch is written with its session in one statement; a foreign-key lookup per touch (from a
    plan kept per connection, which scanned the table when prepared while it was small) is not paid."""
    keys = await db_pool.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'touches'::regclass AND contype = 'f'")
    assert keys == 0
