"""Identifiers (email, phone) linked to visitor sessions, for cross-device matching.

A person's identifier is stored as a blind index (`bidx`, a keyed HMAC of the normalised value, for equality
lookups) and a ciphertext (`enc`, for export), both computed by the caller. One row per (identifier, session):
the same email seen on a phone and on a laptop links both sessions, and a conversion carrying that email is
matched to the one with the latest touch before it.

Plain functions taking a pool (or a connection, to join its transaction) and returning plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from .db import translate_errors

__all__ = [
    "IDENTITY_KINDS",
    "IdentityRecord",
    "LinkedSession",
    "delete_identities",
    "find_identities",
    "identities_of_sessions",
    "link_identity",
    "sessions_for",
    "unlink_session",
]

Executor = asyncpg.Pool | asyncpg.Connection
# One blind index, or the same value's index under each key version a lookup must still find (crypto.py).
Bidx = bytes | Sequence[bytes]


def bidx_list(bidx: Bidx | None) -> list[bytes]:
    if bidx is None:
        return []
    return [bytes(bidx)] if isinstance(bidx, bytes | bytearray | memoryview) else [bytes(b) for b in bidx]

IDENTITY_KINDS: tuple[str, ...] = ("email", "phone")


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """One identifier seen on one session. `key_version` is the key version `enc` was written with."""

    tenant_id: str
    session_id: UUID
    kind: str
    bidx: bytes
    enc: bytes
    key_version: int
    created_at: datetime
    last_seen_at: datetime


class LinkedSession(NamedTuple):
    """A session linked to an identifier and the time of its latest touch at or before the asked instant
    (None when it has none by then). Unpacks as `(session_id, last_touch_at)`."""

    session_id: UUID
    last_touch_at: datetime | None


def check_kind(kind: str) -> None:
    if kind not in IDENTITY_KINDS:
        raise ValueError(f"identity kind must be one of {IDENTITY_KINDS}, not {kind!r}")


# The session row is locked FOR KEY SHARE (what the foreign key check takes anyway), so a session deleted
# concurrently makes this insert nothing instead of failing the caller's transaction on the foreign key.
# A repeated link keeps created_at, moves last_seen_at forward and keeps the newest ciphertext (it may be
# written under a newer key version).
_LINK = """
WITH session AS (
    SELECT tenant_id, id FROM sessions WHERE tenant_id = $1 AND id = $2 FOR KEY SHARE
)
INSERT INTO identities AS i (tenant_id, session_id, kind, bidx, enc, created_at, last_seen_at)
SELECT session.tenant_id, session.id, $3, $4, $5, $6, $6 FROM session
ON CONFLICT (tenant_id, kind, bidx, session_id) DO UPDATE SET
    created_at = least(i.created_at, EXCLUDED.created_at),
    last_seen_at = greatest(i.last_seen_at, EXCLUDED.last_seen_at),
    enc = CASE WHEN EXCLUDED.last_seen_at >= i.last_seen_at THEN EXCLUDED.enc ELSE i.enc END
RETURNING 1
"""


async def link_identity(
    db: Executor, tenant_id: str, session_id: UUID, kind: str, bidx: bytes, enc: bytes, at: datetime
) -> bool:
    """Link an identifier to a session (idempotent). False when the session does not exist: sessions are
    created only by tracked visits, never here."""
    check_kind(kind)
    with translate_errors():
        return await db.fetchval(_LINK, tenant_id, session_id, kind, bidx, enc, at) is not None


# For each linked session, its latest touch at or before $4: one backward step on the touches index
# (tenant_id, session_id, at) per session, found through the identities primary key.
_SESSIONS_FOR = """
SELECT i.session_id, t.at AS last_touch_at
FROM identities i
LEFT JOIN LATERAL (
    SELECT at FROM touches
    WHERE tenant_id = i.tenant_id AND session_id = i.session_id AND at <= $4
    ORDER BY at DESC
    LIMIT 1
) t ON true
WHERE i.tenant_id = $1 AND i.kind = $2 AND i.bidx = ANY($3::bytea[])
ORDER BY t.at DESC NULLS LAST, i.session_id
"""


async def sessions_for(
    db: Executor, tenant_id: str, kind: str, bidx: Bidx, before: datetime
) -> list[LinkedSession]:
    """Sessions linked to the identifier, each with its latest touch at or before `before`: latest first,
    sessions without such a touch last. The first one with a touch is the one a conversion at `before`
    matches."""
    check_kind(kind)
    with translate_errors():
        rows = await db.fetch(_SESSIONS_FOR, tenant_id, kind, bidx_list(bidx), before)
    return [LinkedSession(r["session_id"], r["last_touch_at"]) for r in rows]


_COLUMNS = "tenant_id, session_id, kind, bidx, enc, key_version, created_at, last_seen_at"


def _record(row: asyncpg.Record) -> IdentityRecord:
    return IdentityRecord(**dict(row))


async def find_identities(db: Executor, tenant_id: str, kind: str, bidx: Bidx) -> list[IdentityRecord]:
    """Every link of one identifier, oldest first."""
    check_kind(kind)
    with translate_errors():
        rows = await db.fetch(
            f"""SELECT {_COLUMNS} FROM identities WHERE tenant_id = $1 AND kind = $2 AND bidx = ANY($3::bytea[])
                ORDER BY created_at, session_id""",
            tenant_id,
            kind,
            bidx_list(bidx),
        )
    return [_record(r) for r in rows]


async def identities_of_sessions(
    db: Executor, tenant_id: str, session_ids: Sequence[UUID]
) -> list[IdentityRecord]:
    """Every identifier linked to any of the sessions (for export), by session then kind."""
    if not session_ids:
        return []
    with translate_errors():
        rows = await db.fetch(
            f"""SELECT {_COLUMNS} FROM identities WHERE tenant_id = $1 AND session_id = ANY($2::uuid[])
                ORDER BY session_id, kind, created_at""",
            tenant_id,
            list(session_ids),
        )
    return [_record(r) for r in rows]


async def unlink_session(db: Executor, tenant_id: str, session_id: UUID) -> int:
    """Remove every identifier of a session (consent withdrawn); return how many links were removed."""
    with translate_errors():
        status = await db.execute(
            "DELETE FROM identities WHERE tenant_id = $1 AND session_id = $2", tenant_id, session_id
        )
    return int(status.split()[-1])


async def delete_identities(db: Executor, tenant_id: str, kind: str, bidx: Bidx) -> int:
    """Remove every link of one identifier (erasure); return how many were removed. Deleting the person's
    sessions removes their links too (by cascade)."""
    check_kind(kind)
    with translate_errors():
        status = await db.execute(
            "DELETE FROM identities WHERE tenant_id = $1 AND kind = $2 AND bidx = ANY($3::bytea[])", tenant_id, kind,
            bidx_list(bidx),
        )
    return int(status.split()[-1])
