"""The pool: jsonb codec, readiness ping and error translation."""

from __future__ import annotations

import re
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


async def test_a_released_connection_is_handed_back_with_nothing_sent(database):
    """The pool's reset sends no query (HaloTrack keeps no session state on a connection), and a transaction
    left open is still rolled back on release."""
    pool = await create_pool(database.dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.fetchval("SELECT 42 AS halo_reset_probe")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            # the last statement the server saw on this backend is ours, not a reset query
            last = await database_last_query(database, pid)
            assert "halo_reset_probe" in last, last
            tx = conn.transaction()
            await tx.start()
            await conn.execute("CREATE TEMP TABLE halo_reset_probe (n int)")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.halo_reset_probe')") is None
    finally:
        await pool.close()


async def database_last_query(database: TestDatabase, pid: int) -> str:
    other = await asyncpg.connect(database.dsn)
    try:
        return await other.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await other.close()


# Session state a connection could carry to its next user, were it kept: each must not appear in HaloTrack's SQL
# (Python strings, where a statement starts after a quote or a semicolon, and the migrations' .sql files).
_SESSION_STATE = {
    "a session-level advisory lock": re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I),
    "LISTEN": re.compile(r"""(^|["';])\s*LISTEN\s+["\w]""", re.M),  # SQL keywords are upper case in HaloTrack
    "a cursor held past its transaction": re.compile(r"\bWITH\s+HOLD\b", re.I),
    # (an UPDATE keeps its SET on the line of its table name, as HaloTrack's SQL does, so it is not read as one)
    "a session SET": re.compile(r"""(^|["';])\s*SET\s+(?!LOCAL\b)(SESSION\s+)?\w""", re.I | re.M),
    "RESET or DISCARD": re.compile(r"""(^|["';])\s*(RESET|DISCARD)\s+\w""", re.M),
    "set_config": re.compile(r"\bset_config\s*\(", re.I),
    "a temporary table": re.compile(r"\bCREATE\s+(TEMP|TEMPORARY)\s+TABLE\b", re.I),
    "a named prepared statement": re.compile(r"""(^|["';])\s*PREPARE\s+\w""", re.M),
    "asyncpg listeners": re.compile(r"\.add_listener\s*\("),
}


def test_no_session_state_in_halotrack_sql():
    """What makes the empty reset safe: no statement leaves state on the connection for its next user."""
    root = Path(__file__).resolve().parents[2] / "halo_proxy"
    found = []
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.sql")]):
        text = path.read_text()
        for what, pattern in _SESSION_STATE.items():
            for m in pattern.finditer(text):
                found.append(f"{path.relative_to(root.parent)}:{text.count(chr(10), 0, m.start()) + 1}: {what}")
    assert not found, found
    # the scan itself finds what it looks for
    assert _SESSION_STATE["a session SET"].search('"SET statement_timeout = 0"')
    assert not _SESSION_STATE["a session SET"].search('"SET LOCAL statement_timeout = 0"')
    assert not _SESSION_STATE["a session SET"].search("UPDATE t SET a = 1")
    assert _SESSION_STATE["a session SET"].search("SET ROLE reporting;") and \
        _SESSION_STATE["a session SET"].search("'SET TIME ZONE UTC'")
    assert _SESSION_STATE["LISTEN"].search('"LISTEN halo_wake"')
    assert not _SESSION_STATE["LISTEN"].search('help="listen address"')
    assert _SESSION_STATE["a session-level advisory lock"].search("SELECT pg_advisory_lock($1)")
    assert not _SESSION_STATE["a session-level advisory lock"].search("SELECT pg_advisory_xact_lock($1)")
