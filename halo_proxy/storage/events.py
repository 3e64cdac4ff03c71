"""Custom browser events: one row per `HaloTrack.track(name, props)`, its props encrypted by the caller.

Plain functions taking a pool (or a connection) and returning plain values; deleted with their session
(`sessions.delete_sessions`, `sessions.purge_expired`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from .db import translate_errors

Executor = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    tenant_id: str
    session_id: UUID
    name: str
    props_enc: bytes | None
    at: datetime


async def insert_event(db: Executor, tenant_id: str, session_id: UUID, name: str, props_enc: bytes | None,
                       at: datetime) -> int:
    """Store one event; returns its id."""
    with translate_errors():
        return await db.fetchval(
            "INSERT INTO events (tenant_id, session_id, name, props_enc, at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            tenant_id, session_id, name, props_enc, at,
        )


async def events_for_sessions(db: Executor, tenant_id: str, session_ids: Sequence[UUID]) -> list[EventRow]:
    """The events of these sessions, oldest first."""
    with translate_errors():
        rows = await db.fetch(
            "SELECT id, tenant_id, session_id, name, props_enc, at FROM events "
            "WHERE tenant_id = $1 AND session_id = ANY($2::uuid[]) ORDER BY session_id, id",
            tenant_id, list(session_ids),
        )
    return [EventRow(**dict(r)) for r in rows]
