"""Consent changes reported by the browser: the history row, and a withdrawal that takes the session's identifiers.

Plain functions taking a connection (to join the caller's transaction) and returning plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from ..tracking.models import Consent
from .db import translate_errors

Executor = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class ConsentChangeRow:
    session_id: UUID
    at: datetime
    analytics: bool
    marketing: bool
    gpc: bool
    change: str


async def record_change(db: Executor, tenant_id: str, session_id: UUID, consent: Consent, change: str,
                        at: datetime) -> None:
    with translate_errors():
        await db.execute(
            "INSERT INTO consent_changes (tenant_id, session_id, at, analytics, marketing, gpc, change) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            tenant_id, session_id, at, consent.analytics, consent.marketing, consent.gpc, change,
        )


async def withdraw_session(db: Executor, tenant_id: str, session_id: UUID, consent: Consent, at: datetime) -> bool:
    """Analytics consent withdrawn: the session keeps its anonymous touches (reports do not change) and loses every
    identifier: its email and phone links, the IP hash and ciphertext, the user agent and the Meta cookies. True
    when the session exists."""
    with translate_errors():
        await db.execute("DELETE FROM identities WHERE tenant_id = $1 AND session_id = $2", tenant_id, session_id)
        status = await db.execute(
            """UPDATE sessions SET consent_analytics = false, consent_marketing = false, gpc = $3,
                   consent_source = $4, updated_at = greatest(updated_at, $5),
                   ip_hash = NULL, ip_enc = NULL, user_agent_enc = NULL, fbp = NULL, fbc = NULL
               WHERE tenant_id = $1 AND id = $2""",
            tenant_id, session_id, consent.gpc, consent.source, at,
        )
    return status.endswith(" 1")


async def changes_for_sessions(db: Executor, tenant_id: str, session_ids: Sequence[UUID]) -> list[ConsentChangeRow]:
    """The consent history of these sessions, oldest first."""
    with translate_errors():
        rows = await db.fetch(
            "SELECT session_id, at, analytics, marketing, gpc, change FROM consent_changes "
            "WHERE tenant_id = $1 AND session_id = ANY($2::uuid[]) ORDER BY session_id, id",
            tenant_id, list(session_ids),
        )
    return [ConsentChangeRow(**dict(r)) for r in rows]
