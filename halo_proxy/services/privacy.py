"""Privacy operations as use cases: erasing a person (`DELETE /_halo/delete-user`).

A person is found by the blind indexes of their email and phone: the sessions those identifiers were linked to,
and the conversions that carry them or were matched to those sessions. Erasure, in one transaction: the sessions go
with their touches, events and consent history; the conversions keep value and attribution (reports do not
change) and lose email, phone, name, message and free fields; their pending and dead forwards are cancelled and
every forward loses its payload; an audit entry records a keyed hash of the identifier, the key's name and the
counts. The page-view write queue is flushed first, so a visit of the person still queued is erased too.
Repeating it finds nothing more to do.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import asyncpg

from ..config import Tenant
from ..crypto import KeyRing
from ..storage import audit as audit_store
from ..storage import conversions as conversion_store
from ..storage import identities as identity_store
from ..storage import outbox
from ..storage import sessions as session_store
from ..storage.write_queue import VisitWriter


class Privacy:
    def __init__(self, pool: asyncpg.Pool, keys: KeyRing, writer: VisitWriter, clock: Callable[[], datetime]):
        self.pool = pool
        self.keys = keys
        self.writer = writer
        self.clock = clock

    def subject(self, tenant: Tenant, email: str | None, phone: str | None) -> dict[str, bytes]:
        """The blind index of each identifier given (already normalised)."""
        found = {}
        if email is not None:
            found["email"] = self.keys.blind_index(tenant.id, "email", email)
        if phone is not None:
            found["phone"] = self.keys.blind_index(tenant.id, "phone", phone)
        return found

    async def erase(self, tenant: Tenant, email: str | None, phone: str | None, key_name: str) -> dict[str, int]:
        subject = self.subject(tenant, email, phone)
        await self.writer.flush()
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            session_ids: set[uuid.UUID] = set()
            for kind, bidx in subject.items():
                session_ids.update(r.session_id for r in await identity_store.find_identities(conn, tenant.id, kind,
                                                                                              bidx))
            conversions = await conversion_store.find_for_person(
                conn, tenant.id, email_bidx=subject.get("email"), phone_bidx=subject.get("phone"),
                session_ids=sorted(session_ids))
            ids = [c.id for c in conversions]
            sessions, touches, events = await session_store.delete_sessions_counted(conn, tenant.id,
                                                                                    sorted(session_ids))
            for kind, bidx in subject.items():  # links of sessions already gone cascade; any left go now
                await identity_store.delete_identities(conn, tenant.id, kind, bidx)
            anonymized = await conversion_store.anonymize_conversions(conn, tenant.id, ids, now)
            cancelled = await outbox.cancel_for_conversions(conn, tenant.id, ids, now=now)
            counts = {"sessions_deleted": sessions, "touches_deleted": touches, "events_deleted": events,
                      "leads_anonymized": anonymized.get("lead", 0), "orders_anonymized": anonymized.get("order", 0),
                      "forwards_cancelled": cancelled}
            await audit_store.record(conn, tenant.id, "delete", "+".join(subject), b"".join(subject.values()),
                                     key_name, counts, now)
        return counts
