"""The browser side as use cases: a consent change (`POST /consent`), a visit reported by a site not behind the
proxy (`POST /touch`), and the visitor's state for `t.js` (`GET /session`).

The rules are pure (`tracking.consent_change`, `tracking.visit.judge_visit`); this carries them out. A withdrawal
is committed before the answer, after the write queue has been flushed, so that a page view still queued cannot
bring back an identifier the visitor has just taken away.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import NamedTuple

import asyncpg

from ..config import Tenant
from ..crypto import KeyRing
from ..metrics import Metrics
from ..storage import consent as consent_store
from ..storage import sessions as session_store
from ..storage.write_queue import VisitWriter
from ..tracking.consent_change import WITHDRAWN, ConsentChange, decide_consent_change
from ..tracking.models import Consent
from ..tracking.visit import VisitFacts, consent_bits, set_cookie_header
from .visits import Clock, VisitTracker, consent_cookie_name


class ConsentAnswer(NamedTuple):
    change: ConsentChange
    set_cookies: list[str]
    session_id: uuid.UUID | None


class BrowserVisits:
    def __init__(self, pool: asyncpg.Pool, keys: KeyRing, writer: VisitWriter, tracker: VisitTracker,
                 metrics: Metrics, clock: Clock):
        self.pool = pool
        self.keys = keys
        self.writer = writer
        self.tracker = tracker
        self.metrics = metrics
        self.clock = clock

    def opened(self, tenant: Tenant, cookies: Mapping[str, str]) -> tuple[uuid.UUID, int] | None:
        raw = cookies.get(tenant.cookie.name)
        return self.keys.open_session_state(tenant.id, raw) if raw is not None else None

    # -- POST /consent -------------------------------------------------------------------------------------

    async def change_consent(self, tenant: Tenant, page: VisitFacts, previous: Consent, analytics: bool,
                             marketing: bool, gpc: bool, client_ip: str | None, https: bool) -> ConsentAnswer:
        cookies = page.cookies
        opened = self.opened(tenant, cookies)
        change = decide_consent_change(analytics, marketing, gpc, opened, previous, cookies, tenant.cookie.name)
        now = self.clock()
        cookie = tenant.cookie
        set_cookies = [set_cookie_header(consent_cookie_name(tenant), change.own_value, cookie.max_age_days * 86400,
                                         https, domain=cookie.domain)]
        session_id: uuid.UUID | None = None
        if change.withdraw is not None or change.update is not None:
            await self.writer.flush()  # a queued page view of this session must not land after the change
            target = change.withdraw or change.update
            async with self.pool.acquire() as conn, conn.transaction():
                if change.withdraw is not None:
                    await consent_store.withdraw_session(conn, tenant.id, change.withdraw, change.consent, now)
                else:
                    await session_store.update_consent(conn, tenant.id, change.update, change.consent, now,
                                                       history=False)
                    session_id = change.update
                await consent_store.record_change(conn, tenant.id, target, change.consent, change.change, now)
            if change.seal_state is not None:
                value = self.keys.seal_session(tenant.id, change.update, change.seal_state)  # type: ignore[arg-type]
                set_cookies.append(set_cookie_header(cookie.name, value, cookie.max_age_days * 86400, https,
                                                     domain=cookie.domain))
        elif change.start:
            visit = self.tracker.judge(page, change.consent, None, tenant)
            set_cookies += self.tracker.carry_out(visit, tenant, client_ip, https)
            session_id = visit.session_id
            if session_id is not None:
                await consent_store.record_change(self.pool, tenant.id, session_id, change.consent, change.change,
                                                  now)
        elif opened is not None and change.consent.analytics:
            session_id = opened[0]
        for name in change.expire:
            set_cookies.append(set_cookie_header(name, "", 0, https,
                                                 domain=cookie.domain if name == cookie.name else None,
                                                 http_only=name == cookie.name))
        self.metrics.consent_changes.labels(tenant=tenant.id, change=change.change).inc()
        return ConsentAnswer(change, set_cookies, session_id)

    # -- POST /touch ---------------------------------------------------------------------------------------

    async def touch(self, tenant: Tenant, page: VisitFacts, session_ref: uuid.UUID | None, consent: Consent,
                    client_ip: str | None) -> uuid.UUID | None:
        """A visit on a site not behind the proxy: judged like a page view. `session_ref` continues a session
        when it exists in this tenant and is still tracked; an unknown or withdrawn one starts a new session with
        a fresh id (an id is never chosen by the caller, and a withdrawal cannot be undone with an old id). None when consent is denied (only the anonymous aggregate is kept)."""
        opened = None
        if session_ref is not None:
            record = await session_store.get_session(self.pool, tenant.id, session_ref)
            if record is None:
                await self.writer.flush()  # a session started by the previous touch may still be queued
                record = await session_store.get_session(self.pool, tenant.id, session_ref)
            if record is not None and not (consent.analytics or consent.marketing):
                if record.consent.analytics or record.consent.marketing:  # withdrawn on the outside site
                    now = self.clock()
                    async with self.pool.acquire() as conn, conn.transaction():
                        await consent_store.withdraw_session(conn, tenant.id, record.id, consent, now)
                        await consent_store.record_change(conn, tenant.id, record.id, consent, WITHDRAWN, now)
                    self.metrics.consent_changes.labels(tenant=tenant.id, change=WITHDRAWN).inc()
            elif record is not None and (record.consent.analytics or record.consent.marketing):
                # a withdrawn session is never tracked again: consent given later starts a new one
                opened = (uuid.UUID(bytes=record.id.bytes), consent_bits(record.consent))  # not asyncpg's own UUID
        visit = self.tracker.judge(page, consent, opened, tenant)
        self.tracker.carry_out(visit, tenant, client_ip, https=True)  # cookies: none on a cross-site answer
        outcome = "session" if visit.session_id is not None else "anonymous"
        self.metrics.browser_touches.labels(tenant=tenant.id, outcome=outcome).inc()
        return visit.session_id

    # -- GET /session --------------------------------------------------------------------------------------

    def session_state(self, tenant: Tenant, cookies: Mapping[str, str], consent: Consent) -> dict[str, object]:
        """What `t.js` starts from: the public session id (None without a tracked session) and the consent in
        force, which it compares with the banner's to report only real changes."""
        opened = self.opened(tenant, cookies)
        tracked = opened is not None and (consent.analytics or consent.marketing) and bool(opened[1] & 3)
        groups = tenant.consent
        return {"session_id": str(opened[0]) if tracked else None,  # type: ignore[index]
                "analytics": consent.analytics, "marketing": consent.marketing,
                "onetrust": {"analytics": list(groups.onetrust_analytics_groups),
                             "marketing": list(groups.onetrust_marketing_groups)}}

