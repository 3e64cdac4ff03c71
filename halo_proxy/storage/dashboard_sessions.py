"""Dashboard sign-in sessions: stored by the SHA-256 of their token (the browser's cookie), never the token."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .db import translate_errors

Executor = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class DashboardSession:
    tenant_id: str
    key_name: str
    key_sha256: str
    csrf: str
    created_at: datetime
    expires_at: datetime


async def create(db: Executor, token_hash: bytes, session: DashboardSession) -> None:
    with translate_errors():
        await db.execute(
            "INSERT INTO dashboard_sessions (token_hash, tenant_id, key_name, key_sha256, csrf, created_at, "
            "expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            token_hash, session.tenant_id, session.key_name, session.key_sha256, session.csrf, session.created_at,
            session.expires_at)


async def find(db: Executor, token_hash: bytes, now: datetime) -> DashboardSession | None:
    """The session of this token when it has not ended."""
    with translate_errors():
        row = await db.fetchrow(
            "SELECT tenant_id, key_name, key_sha256, csrf, created_at, expires_at FROM dashboard_sessions "
            "WHERE token_hash = $1 AND expires_at > $2", token_hash, now)
    return DashboardSession(**dict(row)) if row is not None else None


async def end(db: Executor, token_hash: bytes) -> bool:
    with translate_errors():
        status = await db.execute("DELETE FROM dashboard_sessions WHERE token_hash = $1", token_hash)
    return status.split()[-1] != "0"


async def sweep(db: Executor, now: datetime) -> int:
    """Delete every ended session; how many."""
    with translate_errors():
        status = await db.execute("DELETE FROM dashboard_sessions WHERE expires_at <= $1", now)
    return int(status.split()[-1])
