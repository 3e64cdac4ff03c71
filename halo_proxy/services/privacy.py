"""Privacy operations as use cases: erasing a person (`DELETE /_halo/delete-user`) and exporting everything
stored about them (`GET /_halo/export-user`).

A person is found by the blind indexes of their email and phone: the sessions those identifiers were linked to,
and the conversions that carry them or were matched to those sessions. Erasure, in one transaction: the sessions go
with their touches, events and consent history; the conversions keep value and attribution (reports do not
change) and lose email, phone, name, message and free fields; their pending and dead forwards are cancelled and
every forward loses its payload; an audit entry records a keyed hash of the identifier, the key's name and the
counts. The page-view write queue is flushed first, so a visit of the person still queued is erased too.
Repeating it finds nothing more to do.

The export reads the same person the same way and decrypts every value: sessions (with IP and user agent when they
were kept), touches, consent (each session's consent in force and its history), custom events, leads, orders and
the delivery ledger (each forward's platform, status, event id, time and the consent it was sent under, with its
attempts). It is audited too (action `export`, the counts of what was exported).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from ..config import Tenant
from ..crypto import KeyRing
from ..storage import audit as audit_store
from ..storage import consent as consent_store
from ..storage import conversions as conversion_store
from ..storage import events as event_store
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

    def subject(self, tenant: Tenant, email: str | None, phone: str | None) -> dict[str, tuple[bytes, ...]]:
        """The blind indexes of each identifier given (already normalised), under every readable key version,
        the current one first: rows not yet re-keyed after a rotation belong to the person too."""
        found = {}
        if email is not None:
            found["email"] = self.keys.blind_indexes(tenant.id, "email", email)
        if phone is not None:
            found["phone"] = self.keys.blind_indexes(tenant.id, "phone", phone)
        return found

    async def _own_sessions(self, conn: asyncpg.Connection, tenant: Tenant,
                            subject: dict[str, tuple[bytes, ...]]) -> set[uuid.UUID]:
        """The sessions linked to the subject's identifiers and to no one else's. A session another email (or
        phone) was linked to too, a shared device or someone identifying as another person, is not theirs alone:
        it is neither exported to them nor deleted for them; only their own links to it go (`erase`)."""
        linked: set[uuid.UUID] = set()
        for kind, bidx in subject.items():
            linked.update(r.session_id for r in await identity_store.find_identities(conn, tenant.id, kind, bidx))
        # Another identifier of a kind the subject names (a second email) marks someone else on the session;
        # an identifier of another kind (the phone next to their email) is taken as theirs.
        shared = {link.session_id for link in await identity_store.identities_of_sessions(conn, tenant.id,
                                                                                          sorted(linked))
                  if link.kind in subject and bytes(link.bidx) not in subject[link.kind]}
        return linked - shared

    async def _own_conversions(self, conn: asyncpg.Connection, tenant: Tenant, subject: dict[str, tuple[bytes, ...]],
                               session_ids: set[uuid.UUID]) -> list[Any]:
        """The subject's leads and orders: those carrying their email or phone, and those matched to one of their
        own sessions that carry no other email (or phone, when the subject gives one). A conversion carrying
        someone else's email is that person's, whichever session it was matched to."""
        found = await conversion_store.find_for_person(
            conn, tenant.id, email_bidx=subject.get("email"), phone_bidx=subject.get("phone"),
            session_ids=sorted(session_ids))
        email, phone = subject.get("email"), subject.get("phone")

        def theirs(c: Any) -> bool:
            if (email is not None and c.email_bidx is not None and bytes(c.email_bidx) in email) or (
                    phone is not None and c.phone_bidx is not None and bytes(c.phone_bidx) in phone):
                return True
            if c.session_id not in session_ids:
                return False
            # matched to their own session: theirs unless it names someone else by a kind the subject gives
            return not ((email is not None and c.email_bidx is not None)
                        or (phone is not None and c.phone_bidx is not None))

        return [c for c in found if theirs(c)]

    async def erase(self, tenant: Tenant, email: str | None, phone: str | None, key_name: str) -> dict[str, int]:
        subject = self.subject(tenant, email, phone)
        await self.writer.flush()
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            session_ids = await self._own_sessions(conn, tenant, subject)
            conversions = await self._own_conversions(conn, tenant, subject, session_ids)
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
            await audit_store.record(conn, tenant.id, "delete", "+".join(subject), _audit_hash(subject),
                                     key_name, counts, now)
        return counts

    async def export(self, tenant: Tenant, email: str | None, phone: str | None, key_name: str) -> dict[str, Any]:
        subject = self.subject(tenant, email, phone)
        await self.writer.flush()
        tid = tenant.id
        dec = self.keys.decrypt
        async with self.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            session_ids = sorted(await self._own_sessions(conn, tenant, subject))
            links = [link for link in await identity_store.identities_of_sessions(conn, tid, session_ids)]
            sessions = [s for s in [await session_store.get_session(conn, tid, sid) for sid in session_ids] if s]
            touches = {sid: await session_store.list_touches(conn, tid, sid) for sid in session_ids}
            history = await consent_store.changes_for_sessions(conn, tid, session_ids)
            events = await event_store.events_for_sessions(conn, tid, session_ids)
            conversions = await self._own_conversions(conn, tenant, subject, set(session_ids))
            forwards = await outbox.forwards_for_conversions(conn, tid, [c.id for c in conversions])
            attempts = await outbox.attempts_for(conn, [f.id for f in forwards])
        by_forward: dict[int, list[Any]] = {}
        for attempt in attempts:
            by_forward.setdefault(attempt.forward_id, []).append(attempt)
        export: dict[str, Any] = {
            "subject": {k: v for k, v in (("email", email), ("phone", phone)) if v is not None},
            "sessions": [_session(s, lambda column, blob: dec(tid, "sessions", column, blob)) for s in sessions],
            "touches": [_touch(sid, t) for sid in session_ids for t in touches[sid]],
            "consent": [{"session_id": str(s.id), "analytics": s.consent.analytics,
                         "marketing": s.consent.marketing, "gpc": s.consent.gpc, "source": s.consent.source,
                         "at": s.updated_at.isoformat(), "change": "current"} for s in sessions]
                       + [{"session_id": str(h.session_id), "analytics": h.analytics, "marketing": h.marketing,
                           "gpc": h.gpc, "source": "halotrack", "at": h.at.isoformat(), "change": h.change}
                          for h in history],
            "events": [{"session_id": str(e.session_id), "name": e.name, "at": e.at.isoformat(),
                        "props": orjson.loads(dec(tid, "events", "props_enc", e.props_enc)) if e.props_enc else None}
                       for e in events],
            "identities": [{"session_id": str(link.session_id), "kind": link.kind,
                            "value": dec(tid, "identities", "enc", link.enc),
                            "first_seen": link.created_at.isoformat(), "last_seen": link.last_seen_at.isoformat()}
                           for link in links],
            "leads": [], "orders": [],
            "forwards": [_forward(f, by_forward.get(f.id, [])) for f in forwards],
        }
        for c in conversions:
            export["leads" if c.kind == "lead" else "orders"].append(
                _conversion(c, lambda column, blob: dec(tid, "conversions", column, blob)))
        counts = {name: len(export[name]) for name in ("sessions", "touches", "consent", "events", "leads", "orders",
                                                       "forwards")}
        await audit_store.record(self.pool, tid, "export", "+".join(subject), _audit_hash(subject), key_name,
                                 counts, self.clock())
        return export


Decrypt = Callable[[str, bytes], str]


def _audit_hash(subject: dict[str, tuple[bytes, ...]]) -> bytes:
    """The audit entry's keyed hash of the person: their blind indexes under the current key version."""
    return b"".join(indexes[0] for indexes in subject.values())


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _touch_json(t: Any) -> dict[str, Any]:
    return {"at": _when(t.at), "source": t.source, "medium": t.medium, "campaign": t.campaign, "term": t.term,
            "content": t.content, "channel": t.channel, "referrer_domain": t.referrer_domain,
            "referrer_url": t.referrer_url, "landing_path": t.landing_path}


def _touch(session_id: uuid.UUID, t: Any) -> dict[str, Any]:
    return {"session_id": str(session_id), **_touch_json(t), "click_ids": t.click_id_map}


def _session(s: Any, dec: Decrypt) -> dict[str, Any]:
    return {
        "id": str(s.id), "created_at": _when(s.created_at), "updated_at": _when(s.updated_at),
        "first_touch": _touch_json(s.first_touch), "last_touch": _touch_json(s.last_touch),
        "click_ids": {name: {"value": c.value, "at": _when(c.at)} for name, c in s.click_ids.items()},
        "device": {"type": s.device.device_type, "browser": s.device.browser, "os": s.device.os},
        "geo": {"country": s.geo.country, "region": s.geo.region, "city": s.geo.city},
        "ip": dec("ip_enc", s.ip_enc) if s.ip_enc else None,
        "ip_hashed": s.ip_hash is not None,
        "user_agent": dec("user_agent_enc", s.user_agent_enc) if s.user_agent_enc else None,
        "fbp": s.fbp, "fbc": s.fbc,
    }


def _conversion(c: Any, dec: Decrypt) -> dict[str, Any]:
    def text(column: str, blob: bytes | None) -> str | None:
        return dec(column, blob) if blob else None

    fields = text("fields_enc", c.fields_enc)
    return {
        "id": str(c.id), "source": c.source, "external_id": c.external_id, "created_at": _when(c.created_at),
        "occurred_at": _when(c.occurred_at), "value": float(c.value) if isinstance(c.value, Decimal) else c.value,
        "currency": c.currency, "email": text("email_enc", c.email_enc), "phone": text("phone_enc", c.phone_enc),
        "name": text("name_enc", c.name_enc), "message": text("message_enc", c.message_enc),
        "fields": orjson.loads(fields) if fields else None, "form_type": c.form_type, "items": c.items,
        "consent_marketing": c.consent_marketing, "session_id": str(c.session_id) if c.session_id else None,
        "match_type": c.match_type, "attribution": c.response.get("attribution") if c.response else None,
        "anonymized_at": _when(c.anonymized_at),
    }


def _forward(f: Any, attempts: list[Any]) -> dict[str, Any]:
    sent = [a for a in attempts if a.outcome in ("sent", "unconfirmed")]
    return {
        "platform": f.platform, "status": f.status, "event_id": f.event_id,
        "at": _when(f.sent_at or f.updated_at),
        "consent": {"marketing": sent[-1].consent_marketing} if sent else None,
        "attempts": [{"at": _when(a.at), "outcome": a.outcome, "reason": a.reason, "http_status": a.http_status,
                      "consent_marketing": a.consent_marketing} for a in attempts],
    }
