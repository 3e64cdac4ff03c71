"""Custom browser events as a use case: encrypt the props, store the event against the session, count it."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from ..config import Tenant
from ..crypto import KeyRing
from ..metrics import Metrics
from ..storage import events as event_store


class Events:
    def __init__(self, pool: asyncpg.Pool, keys: KeyRing, metrics: Metrics):
        self.pool = pool
        self.keys = keys
        self.metrics = metrics

    async def record(self, tenant: Tenant, session_id: uuid.UUID, name: str, props_json: str | None,
                     now: datetime) -> int:
        """Store one event (its props encrypted: they may hold personal data); returns its id."""
        enc = self.keys.encrypt(tenant.id, "events", "props_enc", props_json) if props_json is not None else None
        event_id = await event_store.insert_event(self.pool, tenant.id, session_id, name, enc, now)
        self.metrics.events.labels(tenant=tenant.id).inc()
        return event_id
