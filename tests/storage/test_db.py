"""The pool: jsonb codec, readiness ping and error translation."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from halo_proxy.storage.db import StorageError, StorageUnavailable, create_pool, ping, translate_errors
from tests.conftest import TestDatabase


async def test_jsonb_round_trips_as_python_objects(db_pool: asyncpg.Pool) -> None:
    value = {"gclid": {"value": "abc123", "at": "2026-05-01T10:00:00+00:00"}, "n": [1, 2.5, None, True]}
    assert await db_pool.fetchval("SELECT $1::jsonb", value) == value
    assert await db_pool.fetchval("""SELECT '{"a": 1}'::jsonb -> 'a'""") == 1


async def test_ping(database: TestDatabase) -> None:
    pool = await create_pool(database.dsn, min_size=1, max_size=2)
    assert await ping(pool) is True
    await pool.close()
    assert await ping(pool) is False


async def test_unreachable_database_is_storage_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable):
        await create_pool(f"postgresql://postgres@/postgres?host={tmp_path}&port=5432", connect_timeout=2)


async def test_sql_errors_are_storage_errors(db_pool: asyncpg.Pool) -> None:
    with pytest.raises(StorageError) as info, translate_errors():
        await db_pool.execute("SELECT * FROM no_such_table")
    assert not isinstance(info.value, StorageUnavailable)
    assert isinstance(info.value.__cause__, asyncpg.UndefinedTableError)


async def test_every_acquire_is_bounded(database):
    """With the one connection held, the pool's own fetch (and any acquire) gives up instead of waiting."""
    pool = await create_pool(database.dsn, min_size=1, max_size=1, acquire_timeout=0.2)
    try:
        async with pool.acquire():
            with pytest.raises(TimeoutError):
                await pool.fetchval("SELECT 1")
        assert await pool.fetchval("SELECT 1") == 1  # free again
    finally:
        await pool.close()
