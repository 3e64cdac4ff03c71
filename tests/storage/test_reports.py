"""The report's queries (storage/reports.py) and the credit backfill's (storage/credits.py) each read one index
range, never a whole table, as planned for any parameter values on a database seeded like production."""

from __future__ import annotations

import pytest

from halo_proxy.storage import credits, reports
from tests.storage.conftest import assert_indexed

# Credits for the planner fixture's conversions: every model, one to three keys each; all but a few credited.
_CREDITS = """
INSERT INTO conversion_credits (tenant_id, conversion_id, created_at, model, kind, source, medium, campaign, channel,
                                conversions, revenue, currency, days_to_convert)
SELECT c.tenant_id, c.id, c.created_at, m, c.kind, 'source' || k, 'medium', 'campaign' || k, 'Paid Search',
       1.0 / 3, 10, 'CZK', 2
FROM conversions c,
     unnest(ARRAY['first_touch', 'last_touch', 'last_non_direct', 'linear', 'time_decay', 'position_based']) m,
     generate_series(1, 3) k;
UPDATE conversions SET credits_version = 1 WHERE hashtext(id::text) % 50 <> 0;
ANALYZE conversion_credits;
ANALYZE conversions;
"""


@pytest.fixture
async def seeded(planner):
    if not await planner.fetchval("SELECT EXISTS (SELECT 1 FROM conversion_credits WHERE tenant_id = 'seed_0')"):
        await planner.execute(_CREDITS)
    return planner


@pytest.mark.parametrize("sql", [reports.CREDIT_SUMS, reports.CHANNEL_SUMS, reports.DAILY_SUMS],
                         ids=["credit_sums", "channel_sums", "daily_sums"])
async def test_credit_sums_read_the_report_index_alone(seeded, sql):
    await assert_indexed(seeded, sql, {"conversion_credits_report"})


async def test_latest_walks_the_created_at_index(seeded):
    await assert_indexed(seeded, reports.LATEST, {"conversions_tenant_created_at"})


async def test_the_backfill_reads_the_uncredited_index(seeded):
    await assert_indexed(seeded, credits._PENDING_IN_RANGE, {"conversions_tenant_uncredited"})
    await assert_indexed(seeded, credits._PENDING_ANY, {"conversions_tenant_uncredited"})
    await assert_indexed(seeded, credits._DELETE, {"conversion_credits_conversion"})
