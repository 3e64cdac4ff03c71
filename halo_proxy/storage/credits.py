"""Conversion credits (`conversion_credits`, migration 0009): each conversion's share per attribution model and
touch key, as tracking/credit.py computes it from the touches stored with the conversion.

Why a table. A year of a busy tenant is ~100,000 conversions; crediting each one's stored touches under a model at
every report means reading and parsing all their attribution records (~1 s of Python per 20,000 conversions),
while the credits never change once the conversion is stored. So they are computed once, when the conversion is
written (`credit_arrays`, in the insert statement of storage/conversions.py, atomic with it), and a report is one
GROUP BY over an index range that holds every column it sums (storage/reports.py).

Consistency. `conversions.credits_version` is NULL for a conversion without current credits: stored before the
migration, by a process of an older version during a rolling upgrade, or changed since (a trigger marks any
change of its attribution, value, currency, kind or times; an erasure removes only the matched session and leaves
the credits as they are). `credit_pending` credits those of one tenant's range, waiting for rows another process
is crediting: the report calls it first, so it never reads stale credits (normally one probe of an empty partial
index). `credit_all_pending` is the sweep at start, in batches, skipping rows others hold, so several processes
share the work. Both are idempotent: a conversion's credits are replaced, never added to, and each batch is one
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from halo_proxy.tracking.attribution import attribution_from_record
from halo_proxy.tracking.credit import CREDIT_VERSION, MODELS, credit_models
from halo_proxy.tracking.models import Attribution

from .db import translate_errors

__all__ = ["CREDIT_VERSION", "CreditArrays", "credit_all_pending", "credit_arrays", "credit_pending",
           "days_to_convert"]

Executor = asyncpg.Pool | asyncpg.Connection

# model, source, medium, campaign, channel, conversions, revenue: parallel arrays, one entry per credit row.
CreditArrays = tuple[list[str], list[str], list[str], list[str], list[str], list[Decimal], list[Decimal]]


def credit_arrays(attribution: Attribution, converted_at: datetime, value: Decimal | str | None) -> CreditArrays:
    """Every model's credits of one conversion as parallel arrays (see `CreditArrays`)."""
    models: list[str] = []
    sources: list[str] = []
    mediums: list[str] = []
    campaigns: list[str] = []
    channels: list[str] = []
    conversions: list[Decimal] = []
    revenue: list[Decimal] = []
    by_model = credit_models(attribution.touches, converted_at=converted_at, value=value,
                             last_touch=attribution.last_touch)
    for model in MODELS:
        for c in by_model[model]:
            models.append(model)
            sources.append(c.key.source)
            mediums.append(c.key.medium)
            campaigns.append(c.key.campaign)
            channels.append(c.key.channel)
            conversions.append(c.conversions)
            revenue.append(c.revenue)
    return models, sources, mediums, campaigns, channels, conversions, revenue


def days_to_convert(attribution: Attribution) -> int | None:
    """What the credit rows carry as days to convert: None for a conversion without a touch (Unattributed)."""
    return attribution.days_to_convert if attribution.touches else None


_PENDING_IN_RANGE = """
SELECT id, tenant_id, kind, created_at, occurred_at, value, currency, attribution FROM conversions
WHERE tenant_id = $1 AND credits_version IS NULL AND created_at >= $2 AND created_at < $3
ORDER BY created_at, id
LIMIT $4
FOR NO KEY UPDATE
"""
_PENDING_ANY = """
SELECT id, tenant_id, kind, created_at, occurred_at, value, currency, attribution FROM conversions
WHERE credits_version IS NULL
ORDER BY tenant_id, created_at, id
LIMIT $1
FOR NO KEY UPDATE SKIP LOCKED
"""
_DELETE = """
DELETE FROM conversion_credits c USING unnest($1::text[], $2::uuid[]) AS g(tenant_id, id)
WHERE c.tenant_id = g.tenant_id AND c.conversion_id = g.id
"""
_INSERT = """
INSERT INTO conversion_credits (tenant_id, conversion_id, created_at, model, kind, source, medium, campaign,
                                channel, conversions, revenue, currency, days_to_convert)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::numeric[], $11::numeric[], $12::text[], $13::int[])
"""
_MARK = "UPDATE conversions SET credits_version = $2 WHERE id = ANY($1::uuid[])"


async def _credit(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> None:
    """Replace the credits of these (locked) conversions and mark them credited."""
    columns: list[list[Any]] = [[] for _ in range(13)]
    for row in rows:
        attribution = attribution_from_record(row["attribution"]) if row["attribution"] else Attribution()
        days = days_to_convert(attribution)
        arrays = credit_arrays(attribution, row["occurred_at"], row["value"])
        for model, source, medium, campaign, channel, conversions, revenue in zip(*arrays, strict=True):
            values = (row["tenant_id"], row["id"], row["created_at"], model, row["kind"], source, medium, campaign,
                      channel, conversions, revenue, row["currency"], days)
            for column, item in zip(columns, values, strict=True):
                column.append(item)
    await conn.execute(_DELETE, [r["tenant_id"] for r in rows], [r["id"] for r in rows])
    await conn.execute(_INSERT, *columns)
    await conn.execute(_MARK, [r["id"] for r in rows], CREDIT_VERSION)


async def credit_pending(db: Executor, tenant_id: str, since: datetime, until: datetime, *,
                         batch: int = 500) -> int:
    """Credit the tenant's conversions created in [since, until) that have no current credits, waiting for any
    another process is crediting at the moment. Returns how many were credited here."""
    return await _drain(db, _PENDING_IN_RANGE, (tenant_id, since, until), batch)


async def credit_all_pending(db: Executor, *, batch: int = 500) -> int:
    """Credit every conversion of every tenant that has no current credits, a batch per transaction, skipping
    those another process is crediting. Returns how many were credited here."""
    return await _drain(db, _PENDING_ANY, (), batch)


async def _drain(db: Executor, sql: str, args: tuple[Any, ...], batch: int) -> int:
    if batch <= 0:
        raise ValueError("batch must be positive")
    with translate_errors():
        if isinstance(db, asyncpg.Pool):
            async with db.acquire() as conn:
                return await _drain_on(conn, sql, args, batch)
        return await _drain_on(db, sql, args, batch)


async def _drain_on(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], batch: int) -> int:
    done = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(sql, *args, batch)
            if rows:
                await _credit(conn, rows)
        if not rows:  # not "fewer than a batch": rows another process credited meanwhile drop out of a batch
            return done
        done += len(rows)

