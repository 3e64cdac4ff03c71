"""The privacy audit trail: one row per operator privacy request, with no plain identifier in it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import asyncpg

from .db import translate_errors

Executor = asyncpg.Pool | asyncpg.Connection


async def record(db: Executor, tenant_id: str, action: str, subject_kind: str, subject_hash: bytes, key_name: str,
                 counts: Mapping[str, int], at: datetime) -> None:
    with translate_errors():
        await db.execute(
            "INSERT INTO privacy_audit (tenant_id, at, action, subject_kind, subject_hash, key_name, counts) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            tenant_id, at, action, subject_kind, subject_hash, key_name, dict(counts),
        )


async def entries(db: Executor, tenant_id: str) -> list[asyncpg.Record]:
    with translate_errors():
        return await db.fetch("SELECT * FROM privacy_audit WHERE tenant_id = $1 ORDER BY id", tenant_id)
