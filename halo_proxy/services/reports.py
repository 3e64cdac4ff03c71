"""Reports as use cases: what each touch key earned over a period under an attribution model
(`GET /_halo/report`), and the pieces of the operators' dashboard (a daily series, channels, the latest
conversions with their touch path).

Every conversion created in the period counts once: its credits under the model (tracking/credit.py, stored with
the conversion by storage/credits.py) sum to one conversion and to its value, so the rows sum exactly to the
totals. Revenue counts conversions in the tenant's currency only; conversions in other currencies still count as
conversions. A period is whole local days of the tenant's `timezone` (tracking/period.py).

Before reading, any conversion of the period still without current credits (stored before migration 0009, by a
process of an older version, or whose attribution changed) is credited (`storage.credits.credit_pending`:
normally one probe of an empty index); then every read runs in a read-only transaction, the dashboard's in one
snapshot so its parts agree. Nothing here decrypts anything: no personal data is read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from uuid import UUID

import asyncpg

from ..config import Tenant
from ..storage import credits as credit_store
from ..storage import reports as report_store
from ..storage.errors import StorageError
from ..tracking.attribution import attribution_from_record
from ..tracking.credit import DEFAULT_MODEL, MODELS, shares, touch_key
from ..tracking.models import Touch
from ..tracking.period import Period
from ..tracking.period import period as make_period

log = logging.getLogger(__name__)

LATEST_MAX = 100


@dataclass(frozen=True, slots=True)
class ReportRow:
    """What one touch key earned: a share of conversions (exact decimal, may be fractional) and of revenue."""

    source: str
    medium: str
    campaign: str
    channel: str
    conversions: Decimal
    revenue: Decimal


@dataclass(frozen=True, slots=True)
class Totals:
    """The period's conversions (leads + orders), their revenue in the tenant's currency, how many had a touch
    to credit (`attributed`), `attribution_rate` = attributed / conversions (0.0 without conversions) and the
    attributed conversions' mean days from first touch to conversion (None without any)."""

    conversions: int
    leads: int
    orders: int
    revenue: Decimal
    attributed: int
    attribution_rate: float
    avg_days_to_convert: float | None


@dataclass(frozen=True, slots=True)
class Report:
    tenant: str
    period: Period
    model: str
    currency: str
    totals: Totals
    rows: tuple[ReportRow, ...]  # revenue desc, then conversions desc, then source, medium, campaign, channel


@dataclass(frozen=True, slots=True)
class Day:
    """One local day of the period (every day is present, zeros included)."""

    day: date
    conversions: int
    leads: int
    orders: int
    revenue: Decimal


@dataclass(frozen=True, slots=True)
class ChannelRow:
    channel: str
    conversions: Decimal
    revenue: Decimal


@dataclass(frozen=True, slots=True)
class TouchStep:
    """One stored touch of a conversion, named as the report's rows name it (`(not set)` for a missing value)."""

    source: str
    medium: str
    campaign: str
    channel: str
    at: datetime


@dataclass(frozen=True, slots=True)
class RecentConversion:
    """A conversion without any personal data: when, what, how much, how it was matched, and its touch path
    (the stored touches within the lookback window, oldest first; empty when unattributed) with each touch's
    share of it under the model asked for (summing to 1)."""

    id: UUID
    created_at: datetime
    kind: str
    value: Decimal | None
    currency: str | None
    match_type: str
    touches: tuple[TouchStep, ...]
    shares: tuple[Decimal, ...] = ()


@dataclass(frozen=True, slots=True)
class Dashboard:
    """The dashboard's data, read in one snapshot."""

    report: Report
    daily: tuple[Day, ...]
    channels: tuple[ChannelRow, ...]
    latest: tuple[RecentConversion, ...]


def _count(value: Decimal) -> int:
    return int(value.to_integral_value(ROUND_HALF_EVEN))


def _row_order(row: ReportRow) -> tuple[Any, ...]:
    return (-row.revenue, -row.conversions, row.source, row.medium, row.campaign, row.channel)


def _step(touch: Touch) -> TouchStep:
    key = touch_key(touch)
    return TouchStep(source=key.source, medium=key.medium, campaign=key.campaign, channel=key.channel, at=touch.at)


def _recent(c: report_store.LatestConversion, model: str) -> RecentConversion:
    attribution = attribution_from_record(c.attribution) if c.attribution else None
    touches = attribution.touches if attribution is not None else ()
    parts = shares(model, touches, c.occurred_at, attribution.last_touch) if touches else ()  # type: ignore[union-attr]
    return RecentConversion(id=c.id, created_at=c.created_at, kind=c.kind, value=c.value,
                            currency=c.currency.strip() if c.currency else None, match_type=c.match_type,
                            touches=tuple(_step(t) for t in touches),
                            shares=tuple(Decimal(p.numerator) / Decimal(p.denominator) for p in parts))


class Reports:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @staticmethod
    def period(tenant: Tenant, first: str | date, last: str | date) -> Period:
        """The tenant's period from `first` to `last` (local days, inclusive); PeriodError when it is not one."""
        return make_period(first, last, tenant.timezone)

    # -- reads ----------------------------------------------------------------------------------------------

    async def report(self, tenant: Tenant, period: Period, model: str = DEFAULT_MODEL) -> Report:
        """Rows per touch key and totals of the conversions created in the period, credited under `model`."""
        _check_model(model)
        await self._credit(tenant, period)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            return await self._report(conn, tenant, period, model)

    async def daily(self, tenant: Tenant, period: Period) -> tuple[Day, ...]:
        """Conversions (leads, orders) and revenue per local day of the period, every day present."""
        await self._credit(tenant, period)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            return await self._daily(conn, tenant, period)

    async def by_channel(self, tenant: Tenant, period: Period, model: str = DEFAULT_MODEL) -> tuple[ChannelRow, ...]:
        """Conversions and revenue per channel under `model`, revenue desc, conversions desc, channel."""
        _check_model(model)
        await self._credit(tenant, period)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            return await self._channels(conn, tenant, period, model)

    async def latest(self, tenant: Tenant, period: Period, limit: int = 20,
                     model: str = DEFAULT_MODEL) -> tuple[RecentConversion, ...]:
        """The `limit` (1 to 100) latest conversions created in the period, newest first, with their touches'
        shares under `model`."""
        _check_limit(limit)
        _check_model(model)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            return await self._latest(conn, tenant, period, limit, model)

    async def dashboard(self, tenant: Tenant, period: Period, model: str = DEFAULT_MODEL,
                        latest: int = 20) -> Dashboard:
        """`report`, `daily`, `by_channel` and `latest` in one read-only snapshot, so they agree."""
        _check_model(model)
        _check_limit(latest)
        await self._credit(tenant, period)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            return Dashboard(report=await self._report(conn, tenant, period, model),
                             daily=await self._daily(conn, tenant, period),
                             channels=await self._channels(conn, tenant, period, model),
                             latest=await self._latest(conn, tenant, period, latest, model))

    # -- crediting ------------------------------------------------------------------------------------------

    async def _credit(self, tenant: Tenant, period: Period) -> None:
        credited = await credit_store.credit_pending(self.pool, tenant.id, period.since, period.until)
        if credited:
            log.info("credited %d conversions of tenant %s before its report", credited, tenant.id)

    async def backfill(self) -> int:
        """Credit every conversion of every tenant still without current credits; how many were credited."""
        return await credit_store.credit_all_pending(self.pool)

    async def credit_backlog(self, ready: Callable[[], bool], retry_s: float = 30.0) -> None:
        """At start, in the background: once the schema is current (`ready`), `backfill`, retried while the
        database is unavailable. Reports credit their own period first in any case; this spares the first
        report after an upgrade the wait."""
        while True:
            if ready():
                try:
                    credited = await self.backfill()
                except StorageError as err:
                    log.warning("crediting stored conversions failed (%s); retrying", type(err).__name__)
                else:
                    if credited:
                        log.info("credited %d conversions stored without attribution credits", credited)
                    return
            await asyncio.sleep(retry_s)

    # -- the reads, on a connection in a transaction ----------------------------------------------------------

    async def _report(self, conn: asyncpg.Connection, tenant: Tenant, period: Period, model: str) -> Report:
        sums = await report_store.credit_sums(conn, tenant.id, model, period.since, period.until, tenant.currency)
        rows = sorted((ReportRow(s.source, s.medium, s.campaign, s.channel, s.conversions, s.revenue) for s in sums),
                      key=_row_order)
        conversions = _count(sum((s.conversions for s in sums), Decimal(0)))
        leads = _count(sum((s.leads for s in sums), Decimal(0)))
        attributed_share = sum((s.attributed for s in sums), Decimal(0))
        attributed = _count(attributed_share)
        days = sum((s.days for s in sums), Decimal(0))
        totals = Totals(
            conversions=conversions, leads=leads, orders=conversions - leads,
            revenue=sum((s.revenue for s in sums), Decimal(0)),
            attributed=attributed,
            attribution_rate=round(attributed / conversions, 4) if conversions else 0.0,
            avg_days_to_convert=round(float(days / attributed_share), 2) if attributed_share else None,
        )
        return Report(tenant=tenant.id, period=period, model=model, currency=tenant.currency, totals=totals,
                      rows=tuple(rows))

    async def _daily(self, conn: asyncpg.Connection, tenant: Tenant, period: Period) -> tuple[Day, ...]:
        sums = {s.bucket: s for s in await report_store.daily_sums(conn, tenant.id, period.starts, tenant.currency)}
        days = []
        for i, day in enumerate(period.days):
            s = sums.get(i)
            conversions = _count(s.conversions) if s else 0
            leads = _count(s.leads) if s else 0
            days.append(Day(day=day, conversions=conversions, leads=leads, orders=conversions - leads,
                            revenue=s.revenue if s else Decimal(0)))
        return tuple(days)

    async def _channels(self, conn: asyncpg.Connection, tenant: Tenant, period: Period,
                        model: str) -> tuple[ChannelRow, ...]:
        sums = await report_store.channel_sums(conn, tenant.id, model, period.since, period.until, tenant.currency)
        rows = [ChannelRow(s.channel, s.conversions, s.revenue) for s in sums]
        return tuple(sorted(rows, key=lambda r: (-r.revenue, -r.conversions, r.channel)))

    async def _latest(self, conn: asyncpg.Connection, tenant: Tenant, period: Period, limit: int,
                      model: str) -> tuple[RecentConversion, ...]:
        found = await report_store.latest(conn, tenant.id, period.since, period.until, limit)
        return tuple(_recent(c, model) for c in found)


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown attribution model {model!r}; known: {', '.join(MODELS)}")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= LATEST_MAX:
        raise ValueError(f"limit must be between 1 and {LATEST_MAX}")
