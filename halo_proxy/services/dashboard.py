"""The dashboard's sign-in as a use case: a `report` key exchanged once for a session (`sign_in`), the session
found again from the browser's token (`session`), ended (`sign_out`).

The browser keeps only a random token (32 bytes); the database only its SHA-256, so a copy of the table signs
no one in. A session ends after SESSION_HOURS, at sign-out, or as soon as the key it signed in with is no
longer in the tenant file with the `report` scope (checked on every page). Each session has its own CSRF token
for the page's forms.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg

from ..config import ApiKey, Tenant
from ..storage import dashboard_sessions as store
from ..storage.dashboard_sessions import DashboardSession

SESSION_HOURS = 12
TOKEN_BYTES = 32
_TOKEN_MAX_CHARS = 64


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


class DashboardSignIn:
    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], datetime]):
        self.pool = pool
        self.clock = clock

    async def sign_in(self, tenant: Tenant, key: ApiKey) -> tuple[str, DashboardSession]:
        """A new session for a `report` key of the tenant: (the browser's token, the session)."""
        now = self.clock()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        session = DashboardSession(tenant_id=tenant.id, key_name=key.name, key_sha256=key.sha256,
                                   csrf=secrets.token_urlsafe(24), created_at=now,
                                   expires_at=now + timedelta(hours=SESSION_HOURS))
        async with self.pool.acquire() as conn, conn.transaction():
            await store.sweep(conn, now)
            await store.create(conn, token_hash(token), session)
        return token, session

    async def session(self, tenant: Tenant, token: str | None) -> DashboardSession | None:
        """The signed-in session of this token for this tenant, or None (no, unknown, ended or foreign token, or
        a key since removed or stripped of `report`: that session is ended now)."""
        if not token or len(token) > _TOKEN_MAX_CHARS or not token.isascii():
            return None
        digest = token_hash(token)
        found = await store.find(self.pool, digest, self.clock())
        if found is None or found.tenant_id != tenant.id:
            return None
        if not any(key.name == found.key_name and hmac.compare_digest(key.sha256, found.key_sha256)
                   and "report" in key.scopes for key in tenant.api_keys):
            await store.end(self.pool, digest)
            return None
        return found

    async def sign_out(self, token: str | None) -> None:
        if token and len(token) <= _TOKEN_MAX_CHARS and token.isascii():
            await store.end(self.pool, token_hash(token))


def csrf_matches(session: DashboardSession, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(session.csrf.encode(), sent.encode("utf-8", "replace"))
