"""The report's reads: sums of conversion credits over a period (storage/credits.py keeps them), and the latest
conversions with their touch path. Read-only, each one range of one index (tests/storage/test_reports.py checks
every plan):

- credit sums (`credit_sums`, `channel_sums`, `daily_sums`) read `conversion_credits_report` (tenant, model,
  created_at) alone: every column they sum is in the index, so a year of a tenant under one model is an index-only
  range scan and one hash aggregate;
- `latest` walks `conversions_tenant_created_at` backwards and stops after `limit` rows.

`revenue` sums only credits in `currency` (the tenant's): conversions in other currencies count as conversions
and add no revenue. Nothing here reads a ciphertext, and the touch path carries only source, medium, campaign,
channel and time (no referrer URL, landing path or click id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from .db import translate_errors

__all__ = ["ChannelSums", "CreditSums", "DaySums", "LatestConversion", "channel_sums", "credit_sums", "daily_sums",
           "latest"]

Executor = asyncpg.Pool | asyncpg.Connection

# Every conversion has exactly one credit row under a single-touch model: the daily series reads these.
_ONE_ROW_MODEL = "first_touch"


@dataclass(frozen=True, slots=True)
class CreditSums:
    """One touch key's credits over the period: `conversions` and `revenue` (tenant currency), and of those
    conversions the share that were leads, the share that had touches, and that share times their days to
    convert (so a period's average days to convert is `days / attributed`)."""

    source: str
    medium: str
    campaign: str
    channel: str
    conversions: Decimal
    revenue: Decimal
    leads: Decimal
    attributed: Decimal
    days: Decimal


@dataclass(frozen=True, slots=True)
class ChannelSums:
    channel: str
    conversions: Decimal
    revenue: Decimal


@dataclass(frozen=True, slots=True)
class DaySums:
    """`bucket` is the index of the day in the period's day starts (0 = the first day)."""

    bucket: int
    conversions: Decimal
    leads: Decimal
    revenue: Decimal


@dataclass(frozen=True, slots=True)
class LatestConversion:
    """A conversion as the report shows it: its attribution record as stored (tracking/attribution.py reads it;
    it holds no personal data) and the time it was attributed for."""

    id: UUID
    created_at: datetime
    occurred_at: datetime
    kind: str
    value: Decimal | None
    currency: str | None
    match_type: str
    attribution: dict[str, Any] | None


CREDIT_SUMS = """
SELECT source, medium, campaign, channel,
       sum(conversions) AS conversions,
       coalesce(sum(revenue) FILTER (WHERE currency = $5), 0) AS revenue,
       coalesce(sum(conversions) FILTER (WHERE kind = 'lead'), 0) AS leads,
       coalesce(sum(conversions) FILTER (WHERE days_to_convert IS NOT NULL), 0) AS attributed,
       coalesce(sum(conversions * days_to_convert), 0) AS days
FROM conversion_credits
WHERE tenant_id = $1 AND model = $2 AND created_at >= $3 AND created_at < $4
GROUP BY source, medium, campaign, channel
"""

CHANNEL_SUMS = """
SELECT channel, sum(conversions) AS conversions, coalesce(sum(revenue) FILTER (WHERE currency = $5), 0) AS revenue
FROM conversion_credits
WHERE tenant_id = $1 AND model = $2 AND created_at >= $3 AND created_at < $4
GROUP BY channel
"""

# width_bucket over the day starts (the period's, then its end): bucket 1 is the first day.
DAILY_SUMS = """
SELECT width_bucket(created_at, $5::timestamptz[]) - 1 AS bucket,
       sum(conversions) AS conversions,
       coalesce(sum(conversions) FILTER (WHERE kind = 'lead'), 0) AS leads,
       coalesce(sum(revenue) FILTER (WHERE currency = $6), 0) AS revenue
FROM conversion_credits
WHERE tenant_id = $1 AND model = $2 AND created_at >= $3 AND created_at < $4
GROUP BY 1
"""

LATEST = """
SELECT id, created_at, occurred_at, kind, value, currency, match_type, attribution
FROM conversions
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
ORDER BY created_at DESC, id DESC
LIMIT $4
"""


async def credit_sums(db: Executor, tenant_id: str, model: str, since: datetime, until: datetime,
                      currency: str) -> list[CreditSums]:
    """Credits of conversions created in [since, until) under `model`, summed per touch key (no order)."""
    with translate_errors():
        rows = await db.fetch(CREDIT_SUMS, tenant_id, model, since, until, currency)
    return [CreditSums(**dict(r)) for r in rows]


async def channel_sums(db: Executor, tenant_id: str, model: str, since: datetime, until: datetime,
                       currency: str) -> list[ChannelSums]:
    """Credits of conversions created in [since, until) under `model`, summed per channel (no order)."""
    with translate_errors():
        rows = await db.fetch(CHANNEL_SUMS, tenant_id, model, since, until, currency)
    return [ChannelSums(**dict(r)) for r in rows]


async def daily_sums(db: Executor, tenant_id: str, starts: Sequence[datetime], currency: str) -> list[DaySums]:
    """Conversions, leads and revenue per day; `starts` are the days' first instants followed by the end of the
    last day (exclusive). Days without conversions are absent."""
    if len(starts) < 2:
        return []
    with translate_errors():
        rows = await db.fetch(DAILY_SUMS, tenant_id, _ONE_ROW_MODEL, starts[0], starts[-1], list(starts), currency)
    return [DaySums(**dict(r)) for r in rows]


async def latest(db: Executor, tenant_id: str, since: datetime, until: datetime, limit: int) -> list[LatestConversion]:
    """The `limit` latest conversions created in [since, until), newest first."""
    with translate_errors():
        rows = await db.fetch(LATEST, tenant_id, since, until, limit)
    return [LatestConversion(**dict(r)) for r in rows]
