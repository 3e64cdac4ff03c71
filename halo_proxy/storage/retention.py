"""Retention sweeps: what a tenant's `retention_days` lets go, counted or deleted, each through an index
(`tests/storage/test_retention.py` checks every plan). Sessions go with their touches, events and consent
history in one statement (`sessions._PURGE_SESSIONS`); forwards with their ledger (foreign key, cascade).

`try_lock` takes the purge's transaction-level advisory lock: one purge at a time across every process and
replica sharing the database.
"""

from __future__ import annotations

from datetime import date, datetime

import asyncpg

from .db import translate_errors
from .sessions import _PURGE_SESSIONS

PURGE_LOCK = 0x48414C4F  # "HALO": the advisory lock key of the purge

COUNT_SESSIONS = "SELECT count(*) FROM sessions WHERE tenant_id = $1 AND updated_at < $2"
# Events that go on their own age: not those of sessions the same purge deletes (counted with them).
COUNT_EVENTS = ("SELECT count(*) FROM events e WHERE tenant_id = $1 AND at < $2 AND NOT EXISTS "
                "(SELECT 1 FROM sessions s WHERE s.tenant_id = $1 AND s.id = e.session_id AND s.updated_at < $3)")
COUNT_ANON = "SELECT count(*) FROM anon_events WHERE tenant_id = $1 AND day < $2"
COUNT_FORWARDS = ("SELECT count(*) FROM forwards WHERE tenant_id = $1 AND updated_at < $2 "
                  "AND status IN ('sent', 'dead', 'skipped', 'cancelled')")

PURGE_SESSIONS = _PURGE_SESSIONS
PURGE_EVENTS = "WITH gone AS (DELETE FROM events WHERE tenant_id = $1 AND at < $2 RETURNING 1) SELECT count(*) FROM gone"
PURGE_ANON = ("WITH gone AS (DELETE FROM anon_events WHERE tenant_id = $1 AND day < $2 RETURNING 1) "
              "SELECT count(*) FROM gone")
PURGE_FORWARDS = ("WITH gone AS (DELETE FROM forwards WHERE tenant_id = $1 AND updated_at < $2 "
                  "AND status IN ('sent', 'dead', 'skipped', 'cancelled') RETURNING 1) SELECT count(*) FROM gone")


async def try_lock(conn: asyncpg.Connection) -> bool:
    """Inside a transaction: True when this process now holds the purge lock (until the transaction ends)."""
    with translate_errors():
        return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PURGE_LOCK))


async def sweep(conn: asyncpg.Connection, tenant_id: str, *, sessions_before: datetime, events_before: datetime,
                anon_before: date, forwards_before: datetime, dry_run: bool) -> dict[str, int]:
    """Rows of one tenant past their retention: counted (`dry_run`) or deleted. Keys: sessions, events (those
    of sessions still kept), anon_events, forwards."""
    sessions, events, anon, forwards = (COUNT_SESSIONS, COUNT_EVENTS, COUNT_ANON, COUNT_FORWARDS) if dry_run else (
        PURGE_SESSIONS, PURGE_EVENTS, PURGE_ANON, PURGE_FORWARDS)
    with translate_errors():
        return {
            "sessions": int(await conn.fetchval(sessions, tenant_id, sessions_before)),
            "events": int(await conn.fetchval(events, tenant_id, events_before, *((sessions_before,) if dry_run
                                                                                  else ()))),
            "anon_events": int(await conn.fetchval(anon, tenant_id, anon_before)),
            "forwards": int(await conn.fetchval(forwards, tenant_id, forwards_before)),
        }
