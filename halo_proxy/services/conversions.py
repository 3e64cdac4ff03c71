"""Leads and orders: match each to the visitor that earned it, store it with its attribution, queue its forwards.

Matching order: the session (cookie, else the body's session reference) -> email -> phone -> none. Among several
sessions of one person, the latest one with a touch before the conversion. The conversion, its identifiers
(encrypted, with blind indexes), one outbox row per configured ad platform and the links of its email and phone
to its session are written in one statement, with the conversions arriving beside it (group commit:
`storage.conversion_writer`), before the 2xx answer; a repeat of the same idempotency key returns the first
answer and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from ..config import Tenant
from ..crypto import KeyRing
from ..forwarders import PLATFORMS as FORWARDERS
from ..forwarders.models import ForwardEvent
from ..metrics import Metrics
from ..storage import identities as identity_store
from ..storage import sessions as session_store
from ..storage.conversion_writer import ConversionWriter
from ..storage.conversions import ConversionRecord, ConversionWrite, LinkWrite
from ..storage.outbox import ForwardWrite
from ..storage.sessions import SessionRecord
from ..storage.write_queue import VisitWriter
from ..tracking.attribution import attribute, attribution_json, choose_session
from ..tracking.models import Attribution, ConversionInput

# A session not found after this process's own flush may still sit in a sibling process's write queue (flushed
# every 50 ms): looked for again after these waits, about six flush intervals in all, before it counts as unknown.
SIBLING_FLUSH_WAITS_S = (0.05, 0.1, 0.15)
# The longest a conversion waits for this process's write queue to store its visitor's latest page view.
QUEUED_VISIT_WAIT_S = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recorded:
    """The answer to a conversion: the JSON body and whether it was created now (201) or before (200)."""

    body: dict[str, Any]
    created: bool


NOT_TRACKED: list[str] = []  # identify's answer for a session without consent (compared by identity)


class Conversions:
    """Records conversions for the routes; all state lives in the database."""

    def __init__(self, pool: asyncpg.Pool, keys: KeyRing, writer: VisitWriter, metrics: Metrics,
                 on_created: Callable[[], None] | None = None, *, commits: ConversionWriter | None = None):
        self.pool = pool
        self.commits = commits if commits is not None else ConversionWriter(pool)
        self.keys = keys
        self.writer = writer
        self.metrics = metrics
        self.on_created = on_created  # the delivery worker's wake-up: forwards are due at once

    # -- session references ------------------------------------------------------------------------------

    def session_from_ref(self, tenant: Tenant, ref: str | None) -> uuid.UUID | None:
        """A `_halo` cookie value exactly as the browser sent it, or the id `HaloTrack.getSessionId()` returns."""
        return self.keys.session_from_ref(tenant.id, ref)

    async def find_session(self, tenant: Tenant, session_id: uuid.UUID,
                           conn: asyncpg.Pool | asyncpg.Connection | None = None) -> SessionRecord | None:
        db = conn if conn is not None else self.pool
        record = await session_store.get_session(db, tenant.id, session_id)
        if record is None:
            # A visitor who converts right after landing: the session may still be queued for writing, here or
            # in another process (a sibling worker, another replica) that flushes within its write interval.
            await self.writer.flush()
            record = await session_store.get_session(db, tenant.id, session_id)
            for delay in SIBLING_FLUSH_WAITS_S:
                if record is not None:
                    break
                await asyncio.sleep(delay)
                record = await session_store.get_session(db, tenant.id, session_id)
        return record

    # -- identify ----------------------------------------------------------------------------------------

    async def identify(self, tenant: Tenant, session_id: uuid.UUID, email: str | None, phone: str | None,
                       now: datetime) -> list[str] | None:
        """Link email and/or phone to a session. None when the session does not exist; NOT_TRACKED (nothing
        linked) when it has no consent any more (withdrawn): an identifier is never tied to it then."""
        record = await self.find_session(tenant, session_id)
        if record is None:
            return None
        if not (record.consent.analytics or record.consent.marketing):
            return NOT_TRACKED
        linked = []
        async with self.pool.acquire() as conn, conn.transaction():
            for kind, value in (("email", email), ("phone", phone)):
                if value is None:
                    continue
                bidx = self.keys.blind_index(tenant.id, kind, value)
                enc = self.keys.encrypt(tenant.id, "identities", "enc", value)
                if await identity_store.link_identity(conn, tenant.id, session_id, kind, bidx, enc, now):
                    linked.append(kind)
        return linked

    # -- conversions -------------------------------------------------------------------------------------

    async def record(self, tenant: Tenant, conversion: ConversionInput, cookie_session: uuid.UUID | None,
                     now: datetime, *, gpc: bool = False) -> Recorded:
        """Match, attribute and store one conversion with its forwards; a repeated idempotency key returns the
        first answer. The insert is one atomic statement: the conversion and its outbox rows, or nothing."""
        converted_at = conversion.occurred_at or now
        # Matched on the pool, no connection held: finding a session still queued flushes the page-view writer,
        # which needs a connection of its own (with the pool exhausted, holding one here would deadlock).
        session, match_type = await self._match(self.pool, tenant, conversion, cookie_session, converted_at)
        if session is not None and self.writer.holds(tenant.id, session.id):
            # The visitor's latest page view (a new touch, a consent change) is still queued here: stored
            # first, so that what brought them counts. Waited for a bounded time (the flush itself goes on,
            # shielded): a database falling behind delays a conversion by at most this, never for ever.
            try:
                async with asyncio.timeout(QUEUED_VISIT_WAIT_S):
                    await asyncio.shield(self.writer.flush())
            except TimeoutError:
                log.info("a conversion's queued page view was not stored within %.1f s; matched without it",
                         QUEUED_VISIT_WAIT_S)
            session = await session_store.get_session(self.pool, tenant.id, session.id) or session
        if session is not None:
            touches = await session_store.list_touches(self.pool, tenant.id, session.id, until=converted_at)
            attribution = attribute(touches, match_type=match_type, session_id=str(session.id),
                                    converted_at=converted_at, lookback_days=tenant.lookback_days)
        else:
            attribution = Attribution()
        conversion_id = uuid.uuid4()
        write = self._write(tenant, conversion, conversion_id, attribution, now)
        forwards = self._forwards(tenant, conversion, conversion_id, session, attribution, converted_at, gpc)
        links = self._links(tenant, session.id, conversion, now) if session is not None else ()
        # Committed with the conversions arriving beside it (group commit), before this answer.
        record, created = await self.commits.insert(write, forwards, links)
        if created:
            self.metrics.conversions.labels(tenant=tenant.id, kind=conversion.kind, match_type=match_type).inc()
            for forward in forwards:  # counted once stored: a repeated key or a failed insert skips nothing
                if forward.status == "skipped":
                    self.metrics.forward_skips.labels(tenant=tenant.id, platform=forward.platform,
                                                      reason=forward.reason).inc()
            if forwards and self.on_created is not None:
                self.on_created()
        return Recorded(self._answer(record), created=created)

    async def _match(self, conn: asyncpg.Pool | asyncpg.Connection, tenant: Tenant, conversion: ConversionInput,
                     cookie_session: uuid.UUID | None, at: datetime) -> tuple[SessionRecord | None, str]:
        for candidate in (cookie_session, self.session_from_ref(tenant, conversion.session_ref)):
            if candidate is not None:
                record = await self.find_session(tenant, candidate, conn)
                if record is not None:
                    return record, "session"
        for kind, value in (("email", conversion.email), ("phone", conversion.phone)):
            if value is None:
                continue
            # under every key version still readable: links written before a rotation are found too
            bidx = self.keys.blind_indexes(tenant.id, kind, value)
            linked = await identity_store.sessions_for(conn, tenant.id, kind, bidx, at)
            chosen = choose_session([(item.session_id, item.last_touch_at) for item in linked])
            if chosen is not None:
                record = await session_store.get_session(conn, tenant.id, chosen)
                if record is not None:
                    return record, kind
        return None, "none"

    def _links(self, tenant: Tenant, session_id: uuid.UUID, conversion: ConversionInput,
               now: datetime) -> list[LinkWrite]:
        """A conversion that names the person links them to its session, for their next conversion elsewhere
        (written only when the conversion is created)."""
        return [LinkWrite(session_id, kind, self.keys.blind_index(tenant.id, kind, value),
                          self.keys.encrypt(tenant.id, "identities", "enc", value), now)
                for kind, value in (("email", conversion.email), ("phone", conversion.phone)) if value is not None]

    def _write(self, tenant: Tenant, c: ConversionInput, conversion_id: uuid.UUID, attribution: Attribution,
               now: datetime) -> ConversionWrite:
        t = tenant.id

        def enc(column: str, value: str | None) -> bytes | None:
            return self.keys.encrypt(t, "conversions", column, value) if value else None

        answer = {"id": str(conversion_id), "match_type": attribution.match_type,
                  "attribution": attribution_json(attribution)}
        return ConversionWrite(
            id=conversion_id, tenant_id=t, kind=c.kind, source=c.source, created_at=now,
            external_id=c.external_id, occurred_at=c.occurred_at or now,
            value=Decimal(c.value) if c.value is not None else None,
            currency=c.currency or tenant.currency,
            email_enc=enc("email_enc", c.email),
            email_bidx=self.keys.blind_index(t, "email", c.email) if c.email else None,
            phone_enc=enc("phone_enc", c.phone),
            phone_bidx=self.keys.blind_index(t, "phone", c.phone) if c.phone else None,
            name_enc=enc("name_enc", c.name),
            message_enc=enc("message_enc", c.message),
            fields_enc=enc("fields_enc", orjson.dumps(c.fields).decode() if c.fields else None),
            form_type=c.form_type, items=c.items, consent_marketing=c.consent_marketing,
            attribution=attribution, response=answer,
        )

    def _forwards(self, tenant: Tenant, c: ConversionInput, conversion_id: uuid.UUID,
                  session: SessionRecord | None, attribution: Attribution, converted_at: datetime,
                  gpc: bool) -> list[ForwardWrite]:
        """One outbox row per configured platform: pending, or skipped with its reason: by the consent gate, or
        because the platform would have nothing to match the person on (`no_identifiers`: not a dead letter
        later, since no retry or operator can mend it)."""
        platforms = [name for name in FORWARDERS if getattr(tenant.forwarders, name) is not None]
        if not platforms:
            return []
        gate = consent_gate(c, session, gpc)
        rows = []
        event = None if gate else self._event(tenant, c, conversion_id, session, attribution, converted_at)
        for platform in platforms:
            event_id = f"{c.kind}-{conversion_id}"
            skip = gate or (event is not None and unmatchable(platform, event, converted_at))
            if skip:
                rows.append(ForwardWrite(platform=platform, event_id=event_id, payload_enc=None, status="skipped",
                                         reason=skip))
            else:
                assert event is not None
                payload = self.keys.encrypt(tenant.id, "forwards", "payload_enc", event.to_json().decode())
                rows.append(ForwardWrite(platform=platform, event_id=event_id, payload_enc=payload))
        return rows

    def _event(self, tenant: Tenant, c: ConversionInput, conversion_id: uuid.UUID, session: SessionRecord | None,
               attribution: Attribution, converted_at: datetime) -> ForwardEvent:
        t = tenant.id
        clicks = dict(attribution.click_ids)
        if session is not None:
            clicks = {**session.click_id_values, **clicks}
        fbclid_seen = session.click_ids["fbclid"].at if session is not None and "fbclid" in session.click_ids else None
        ip = ua = None
        if session is not None and session.consent.marketing:
            ip = self.keys.decrypt(t, "sessions", "ip_enc", session.ip_enc) if session.ip_enc else None
            ua = (self.keys.decrypt(t, "sessions", "user_agent_enc", session.user_agent_enc)
                  if session.user_agent_enc else None)
        granted = True  # the consent gate passed: marketing consent from the visitor or the form
        return ForwardEvent(
            kind=c.kind, event_id=f"{c.kind}-{conversion_id}", event_time=converted_at,
            value=float(Decimal(c.value)) if c.value is not None else None,
            currency=c.currency or tenant.currency,
            order_id=c.external_id if c.kind == "order" else None,
            email=c.email, phone=c.phone, first_name=c.first_name, last_name=c.last_name,
            city=c.city, region=c.region, postal_code=c.postal_code,
            country=c.country or (session.geo.country if session is not None else None),
            external_id=str(session.id) if session is not None else None,
            client_ip=ip, user_agent=ua,
            fbc=session.fbc if session is not None else None,
            fbp=session.fbp if session is not None else None,
            fbclid=clicks.get("fbclid"), fbclid_seen_at=fbclid_seen,
            gclid=clicks.get("gclid"), gbraid=clicks.get("gbraid"), wbraid=clicks.get("wbraid"),
            ttclid=clicks.get("ttclid"), ga_client_id=c.ga_client_id,
            session_id=str(session.id) if session is not None else None,
            event_source_url=c.event_source_url or _landing_url(tenant, attribution),
            ad_user_data=granted, ad_personalization=granted,
        )

    @staticmethod
    def _answer(record: ConversionRecord) -> dict[str, Any]:
        if record.response:
            return record.response
        return {"id": str(record.id), "match_type": record.match_type,
                "attribution": attribution_json(record.attribution)}


def consent_gate(c: ConversionInput, session: SessionRecord | None, gpc: bool) -> str | None:
    """None when the conversion may be forwarded, else the reason it may not.

    GPC (from the request or the visitor's session) always means no forwarding. Otherwise the lead's own
    explicit consent box, or the visitor's marketing consent, allows it.
    """
    if gpc or (session is not None and session.consent.gpc):
        return "gpc"
    if c.consent_marketing is False:
        return "form_denied"
    if c.consent_marketing is True:
        return None
    if session is not None and session.consent.marketing:
        return None
    return "no_consent" if session is not None else "no_session_consent"


def unmatchable(platform: str, event: ForwardEvent, now: datetime) -> str | None:
    """``no_identifiers`` when `platform` could match the event to no one (each module's `check` says so: no
    customer information, or for Meta none beyond its matching baseline), else None. Other refusals (too old, a
    purchase without a value) stay the delivery worker's, as dead letters."""
    refused = FORWARDERS[platform].check(event, now)
    return "no_identifiers" if refused is not None and refused.reason == "no_identifiers" else None


def _landing_url(tenant: Tenant, attribution: Attribution) -> str | None:
    touch = attribution.last_touch or attribution.first_touch
    if touch is None or not tenant.hosts:
        return None
    host = next((h for h in tenant.hosts if not h.startswith("*.")), None)
    return f"https://{host}{touch.landing_path}" if host else None
