"""The report service (services/reports.py) against a real PostgreSQL: the stored credits' rollup equals the
direct computation from every conversion's stored attribution, under every model, to the last decimal (with
conversions stored before the credits existed among them); the daily series, the channels and the latest
conversions agree with it, and none of it carries personal data."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

import asyncpg
import pytest

from halo_proxy.config import parse
from halo_proxy.services.reports import ReportRow, Reports
from halo_proxy.storage import conversions as conversion_store
from halo_proxy.storage.conversions import ConversionWrite
from halo_proxy.tracking.attribution import attribute, attribution_record
from halo_proxy.tracking.credit import MODELS, UNATTRIBUTED_KEY, TouchKey, credit, shares, touch_key
from halo_proxy.tracking.models import Attribution, Touch

START = datetime(2026, 3, 20, 0, 0, tzinfo=UTC)  # the period spans the daylight-saving change of the 29th
KEY_POOL = [
    ("google", "cpc", "spring", "Paid Search"), ("google", "organic", None, "Organic Search"),
    ("facebook", "paid_social", "retargeting", "Paid Social"), ("(direct)", "(none)", None, "Direct"),
    ("newsletter", "email", "march", "Email"), ("partner.example", "referral", None, "Referral"),
]
_tenants = itertools.count(1)


def tenant_config(tenant_id: str):  # type: ignore[no-untyped-def]
    return parse(f"""
tenants:
  - id: {tenant_id}
    hosts: [{tenant_id.replace("_", "-")}.localhost]
    upstream: http://127.0.0.1:9
    currency: CZK
    timezone: Europe/Prague
""", "t.yaml", {}).tenants[0]


@pytest.fixture
def tenant():  # type: ignore[no-untyped-def]
    return tenant_config(f"reports_{next(_tenants)}")


def random_attribution(rng: random.Random, converted_at: datetime) -> Attribution:
    if rng.random() < 0.3:
        return Attribution()
    touches = []
    for _ in range(rng.randint(1, 6)):
        source, medium, campaign, channel = rng.choice(KEY_POOL)
        at = converted_at - timedelta(seconds=rng.randint(0, 40 * 86400))
        touches.append(Touch(at=at, source=source, medium=medium, campaign=campaign, channel=channel,
                             referrer_domain="partner.example" if medium == "referral" else None))
    return attribute(touches, match_type=rng.choice(["session", "email"]), session_id=str(uuid4()),
                     converted_at=converted_at, lookback_days=30)


def random_value(rng: random.Random) -> str | None:
    return rng.choice([None, str(rng.randint(1, 5000)), f"{rng.randint(0, 999)}.{rng.randint(0, 9999):04d}",
                       f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}"])


async def seed(pool: asyncpg.Pool, tenant_id: str, n: int = 150, old: int = 20) -> None:
    """`n` conversions through the insert (credits with them), `old` as stored before credits existed."""
    rng = random.Random(20260320)
    for i in range(n + old):
        created = START + timedelta(seconds=rng.randint(0, 14 * 86400))
        occurred = created - timedelta(seconds=rng.choice([0, 0, 0, 3600]))
        attribution = random_attribution(rng, occurred)
        kind, value = rng.choice(["lead", "order"]), random_value(rng)
        currency = rng.choice(["CZK", "CZK", "CZK", "EUR"])
        if i < n:
            await conversion_store.insert_conversion(pool, ConversionWrite(
                id=uuid4(), tenant_id=tenant_id, kind=kind, source="api", created_at=created, occurred_at=occurred,
                external_id=f"c-{i}", value=value, currency=currency, attribution=attribution,
                email_enc=b"\x01ciphertext-of-an-email", email_bidx=b"B" * 16))
        else:
            await pool.execute(
                "INSERT INTO conversions (id, tenant_id, kind, source, created_at, occurred_at, value, currency,"
                " match_type, attribution) VALUES ($1, $2, $3, 'api', $4, $5, $6, $7, $8, $9)",
                uuid4(), tenant_id, kind, created, occurred, None if value is None else Decimal(value), currency,
                attribution.match_type, attribution_record(attribution))


def direct_rows(records, model: str) -> list[ReportRow]:  # type: ignore[no-untyped-def]
    """The report computed straight from each conversion's stored attribution, without the credits table."""
    sums: dict[TouchKey, list[Decimal]] = {}
    for r in records:
        for c in credit(model, r.attribution.touches, converted_at=r.occurred_at, value=r.value,
                        last_touch=r.attribution.last_touch):
            entry = sums.setdefault(c.key, [Decimal(0), Decimal(0)])
            entry[0] += c.conversions
            entry[1] += c.revenue if r.currency == "CZK" else 0
    rows = [ReportRow(k.source, k.medium, k.campaign, k.channel, v[0], v[1]) for k, v in sums.items()]
    return sorted(rows, key=lambda r: (-r.revenue, -r.conversions, r.source, r.medium, r.campaign, r.channel))


@pytest.mark.parametrize("first, last", [("2026-03-20", "2026-04-05"), ("2026-03-25", "2026-03-30")])
async def test_the_rollup_equals_the_direct_computation_under_every_model(db_pool, tenant, first, last):
    await seed(db_pool, tenant.id)
    reports = Reports(db_pool)
    period = reports.period(tenant, first, last)
    records = await conversion_store.list_conversions(db_pool, tenant.id, period.since, period.until)
    assert len(records) > 40
    attributed = [r for r in records if r.attribution.touches]
    for model in MODELS:
        report = await reports.report(tenant, period, model)
        assert list(report.rows) == direct_rows(records, model), model
        t = report.totals
        assert (t.conversions, t.leads, t.orders) == (
            len(records), sum(r.kind == "lead" for r in records), sum(r.kind == "order" for r in records))
        assert t.revenue == sum((r.value or 0) for r in records if r.currency == "CZK")
        assert t.revenue == sum(row.revenue for row in report.rows)
        assert sum(row.conversions for row in report.rows) == t.conversions
        assert t.attributed == len(attributed) and t.attribution_rate == round(len(attributed) / len(records), 4)
        assert t.avg_days_to_convert == round(
            sum(r.attribution.days_to_convert for r in attributed) / len(attributed), 2)
        unattributed = [row for row in report.rows if row.channel == UNATTRIBUTED_KEY.channel]
        assert [row.conversions for row in unattributed] == [Decimal(len(records) - len(attributed))]
    # Every conversion created in the period was credited, the old ones by the report itself.
    assert await db_pool.fetchval("SELECT count(*) FROM conversions WHERE tenant_id = $1 AND created_at >= $2"
                                  " AND created_at < $3 AND credits_version IS NULL",
                                  tenant.id, period.since, period.until) == 0


async def test_daily_channels_latest_and_the_dashboard_agree(db_pool, tenant):
    await seed(db_pool, tenant.id, n=60, old=10)
    reports = Reports(db_pool)
    period = reports.period(tenant, "2026-03-22", "2026-04-02")
    records = await conversion_store.list_conversions(db_pool, tenant.id, period.since, period.until)
    daily = await reports.daily(tenant, period)
    assert [d.day for d in daily] == list(period.days)  # every local day, the 23-hour one included
    for d in daily:
        mine = [r for r in records if period.day_of(r.created_at) == d.day]
        assert (d.conversions, d.leads, d.orders) == (
            len(mine), sum(r.kind == "lead" for r in mine), sum(r.kind == "order" for r in mine)), d.day
        assert d.revenue == sum((r.value or 0) for r in mine if r.currency == "CZK"), d.day

    report = await reports.report(tenant, period, "time_decay")
    channels = await reports.by_channel(tenant, period, "time_decay")
    by_channel: dict[str, list[Decimal]] = {}
    for row in report.rows:
        entry = by_channel.setdefault(row.channel, [Decimal(0), Decimal(0)])
        entry[0] += row.conversions
        entry[1] += row.revenue
    assert {c.channel: [c.conversions, c.revenue] for c in channels} == by_channel
    assert [c.revenue for c in channels] == sorted((c.revenue for c in channels), reverse=True)

    latest = await reports.latest(tenant, period, 5, "time_decay")
    newest = sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)[:5]
    assert [c.id for c in latest] == [r.id for r in newest]
    for c, r in zip(latest, newest, strict=True):
        assert (c.created_at, c.kind, c.value, c.currency, c.match_type) == (
            r.created_at, r.kind, r.value, r.currency, r.match_type)
        assert [(TouchKey(s.source, s.medium, s.campaign, s.channel), s.at) for s in c.touches] == [
            (touch_key(t), t.at) for t in r.attribution.touches]
        # each touch's share under the model, as the credits are computed
        expected = shares("time_decay", r.attribution.touches, r.occurred_at, r.attribution.last_touch)
        assert [float(x) for x in c.shares] == pytest.approx([float(x) for x in expected])
        assert not c.touches or float(sum(c.shares)) == pytest.approx(1.0)

    dashboard = await reports.dashboard(tenant, period, "time_decay", latest=5)
    assert dashboard.report == report and dashboard.daily == daily
    assert dashboard.channels == channels and dashboard.latest == latest
    assert sum(d.conversions for d in daily) == report.totals.conversions
    assert sum(d.revenue for d in daily) == report.totals.revenue
    text = repr(dashboard)
    assert "ciphertext" not in text and "BBBB" not in text and "email_enc" not in text


async def test_bad_models_and_limits_are_refused(db_pool, tenant):
    reports = Reports(db_pool)
    period = reports.period(tenant, "2026-03-22", "2026-03-22")
    with pytest.raises(ValueError, match="unknown attribution model"):
        await reports.report(tenant, period, "u_shaped")
    for limit in (0, 101):
        with pytest.raises(ValueError, match="limit"):
            await reports.latest(tenant, period, limit)
    assert await reports.latest(tenant, period) == ()


async def test_the_backlog_at_start_waits_for_the_schema_then_credits_everything(db_pool, tenant):
    await seed(db_pool, tenant.id, n=0, old=12)
    answers = iter([False, False, True])  # the schema is current at the third look
    await Reports(db_pool).credit_backlog(lambda: next(answers), retry_s=0)
    assert await db_pool.fetchval("SELECT count(*) FROM conversions WHERE tenant_id = $1 AND credits_version IS NULL",
                                  tenant.id) == 0
    assert await db_pool.fetchval("SELECT count(DISTINCT conversion_id) FROM conversion_credits WHERE tenant_id = $1",
                                  tenant.id) == 12
