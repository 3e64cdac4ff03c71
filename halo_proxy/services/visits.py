"""Page-view tracking on the proxy's hot path: the use case that carries out `tracking.visit.decide_visit`.

`VisitTracker.observe` runs synchronously before a page is forwarded. It opens the visitor's sealed `_halo`
cookie, asks the rules for a decision, seals the cookie it says to set, and hands any write to the
`storage.write_queue.VisitWriter`, which queues it without waiting and writes batches in the background: a page is
never held back by the database.

The returning visitor who brings no campaign data and whose consent is unchanged costs no database call at all:
their consent bits travel, authenticated, in the cookie itself. The encryption of the IP address and user agent
of a new visit is left to the writer, which does it just before the batch is written: the page waits only for the
decisions.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from uuid import UUID

from ..config import Tenant
from ..crypto import KeyRing, new_session_id, random_below
from ..metrics import Metrics
from ..storage.write_queue import PendingVisit, VisitWriter
from ..tracking.consent import ConsentPolicy
from ..tracking.models import AnonEvent, Consent, SessionWrite
from ..tracking.visit import (
    SiteRules,
    VisitDecision,
    VisitFacts,
    decide_visit,
    judge_visit,
    set_cookie_header,
)

Clock = Callable[[], datetime]

RECENT_TOUCHES = 10_000  # campaign touches remembered per process for the repeat rule


def utc_now() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=256)
def consent_policy(tenant: Tenant) -> ConsentPolicy:
    """The tenant's consent settings as the consent rules take them (one per `Tenant`: a reload makes new ones)."""
    consent = tenant.consent
    return ConsentPolicy(
        unknown=consent.unknown == "granted",
        onetrust_analytics_groups=consent.onetrust_analytics_groups,
        onetrust_marketing_groups=consent.onetrust_marketing_groups,
        own_cookie=consent_cookie_name(tenant),
    )


def consent_cookie_name(tenant: Tenant) -> str:
    """HaloTrack's own consent cookie, named after the tenant's visitor cookie (`_halo_consent`)."""
    return tenant.cookie.name + "_consent"


class SystemFresh:
    """Randomness from the operating system (`crypto`'s buffered CSPRNG)."""

    @staticmethod
    def session_id() -> UUID:
        return new_session_id()

    @staticmethod
    def fbp_number() -> int:
        return random_below(9_000_000_000) + 1_000_000_000


class VisitTracker:
    """Per-request tracking. Synchronous and cheap: no I/O happens here."""

    def __init__(self, keys: KeyRing, writer: VisitWriter, metrics: Metrics, reserved_prefix: str,
                 clock: Clock = utc_now, fresh: SystemFresh | None = None):
        self.keys = keys
        self.writer = writer
        self.metrics = metrics
        self.reserved_prefix = reserved_prefix
        self.clock = clock
        self.fresh = fresh if fresh is not None else SystemFresh()
        self._rules: dict[str, tuple[Tenant, SiteRules]] = {}
        self._recent: OrderedDict[tuple[str, UUID], tuple[int, float]] = OrderedDict()

    def rules(self, tenant: Tenant) -> SiteRules:
        """The tenant's rules, rebuilt when a config reload gave it a new `Tenant`."""
        cached = self._rules.get(tenant.id)
        if cached is not None and cached[0] is tenant:
            return cached[1]
        rules = SiteRules(
            tenant_id=tenant.id, cookie_name=tenant.cookie.name, hosts=tenant.hosts,
            reserved_prefix=self.reserved_prefix, consent=consent_policy(tenant),
        )
        self._rules[tenant.id] = (tenant, rules)
        return rules

    def observe(self, facts: VisitFacts, tenant: Tenant, client_ip: str | None, https: bool) -> list[str]:
        """The Set-Cookie values for this response (empty when nothing is to be set)."""
        rules = self.rules(tenant)
        raw_cookie = facts.cookies.get(rules.cookie_name)
        opened = self.keys.open_session_state(tenant.id, raw_cookie) if raw_cookie is not None else None
        decision = decide_visit(facts, opened, rules, self._recent, self.clock(), self.fresh)
        return self.carry_out(decision, tenant, client_ip, https)

    def judge(self, facts: VisitFacts, consent: Consent, opened: tuple[UUID, int] | None,
              tenant: Tenant) -> VisitDecision:
        """A page reported by the browser (`/touch`, a consent granted on a page), judged under `consent`."""
        return judge_visit(facts, consent, opened, self.rules(tenant), self._recent, self.clock(), self.fresh)

    def carry_out(self, decision: VisitDecision, tenant: Tenant, client_ip: str | None, https: bool) -> list[str]:
        """Seal or expire the cookies the decision names, queue its write, count it; the Set-Cookie values."""
        metrics = self.metrics
        if decision.skip is not None:
            metrics.skip(tenant.id, decision.skip)
            return []
        set_cookies: list[str] = []
        cookie = tenant.cookie
        if decision.seal_state is not None:
            value = self.keys.seal_session(tenant.id, decision.session_id, decision.seal_state)  # type: ignore[arg-type]
            set_cookies.append(set_cookie_header(cookie.name, value, cookie.max_age_days * 86400, https,
                                                 domain=cookie.domain))
        elif decision.expire_session:
            set_cookies.append(set_cookie_header(cookie.name, "", 0, https, domain=cookie.domain))
        for extra in decision.cookies:
            set_cookies.append(set_cookie_header(extra.name, extra.value, extra.max_age, https, http_only=False))
        write = decision.write
        if write is not None:
            if type(write) is SessionWrite:
                self._submit_visit(write, client_ip, decision.user_agent)
            elif type(write) is AnonEvent:
                self.writer.count_anon(write)
            else:
                self.writer.submit(write)
        if decision.withdraw is not None:
            self.writer.submit(decision.withdraw)
        if decision.remember is not None:
            self._remember((tenant.id, decision.session_id), decision.remember,  # type: ignore[arg-type]
                           write.at.timestamp())  # type: ignore[union-attr]
        if decision.created:
            metrics.session_created(tenant.id)
        if decision.touched:
            metrics.touch(tenant.id)
        metrics.visit(tenant.id, decision.consent.state, decision.channel)  # type: ignore[union-attr, arg-type]
        return set_cookies

    def _submit_visit(self, write: SessionWrite, client_ip: str | None, user_agent: str | None) -> None:
        if client_ip:
            write = replace(write, ip_hash=self.keys.hash_ip(write.tenant_id, client_ip))
        if write.consent.marketing and (client_ip or user_agent):
            # IP and user agent are encrypted by the writer, just before the batch is stored.
            self.writer.submit(PendingVisit(write, self.keys, client_ip, user_agent))
        else:
            self.writer.submit(write)

    def _remember(self, key: tuple[str, UUID], fingerprint: int, at: float) -> None:
        recent = self._recent
        recent[key] = (fingerprint, at)
        recent.move_to_end(key)
        if len(recent) > RECENT_TOUCHES:
            recent.popitem(last=False)
