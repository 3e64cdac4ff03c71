"""Conversion credits (storage/credits.py, migration 0009) against a real PostgreSQL: written in the conversion's
own insert, exact per conversion and model, kept through an erasure, re-credited after a change of attribution,
gone with their conversion, and conversions stored without credits (before the migration, by an older process)
credited by the backfill, idempotently and once across concurrent callers."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import pytest

from halo_proxy.storage import conversions, credits
from halo_proxy.storage.conversions import ConversionWrite
from halo_proxy.tracking.attribution import attribution_record
from halo_proxy.tracking.credit import CREDIT_VERSION, MODELS, UNATTRIBUTED_KEY, credit_models
from halo_proxy.tracking.models import Attribution, Touch

AT = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
GOOGLE = Touch(at=AT - timedelta(days=9), source="google", medium="cpc", campaign="summer", channel="Paid Search",
               click_ids=(("gclid", "g1"),))
EMAIL = Touch(at=AT - timedelta(days=3), source="newsletter", medium="email", campaign="may", channel="Email")
DIRECT = Touch(at=AT - timedelta(hours=1), source="(direct)", medium="(none)", channel="Direct")
PATH = (GOOGLE, EMAIL, DIRECT)

UNMATCHED = Attribution()
_tenants = itertools.count(1)


@pytest.fixture
def tenant() -> str:
    return f"credits_{next(_tenants)}"


def matched(touches: tuple[Touch, ...] = PATH) -> Attribution:
    return Attribution(match_type="session", session_id=str(uuid4()), first_touch=touches[0],
                       last_touch=EMAIL if EMAIL in touches else touches[-1], days_to_convert=9,
                       touches=touches)


def write(tenant: str, attribution: Attribution = UNMATCHED, value: str | None = "300", **changes: object):
    base = ConversionWrite(id=uuid4(), tenant_id=tenant, kind="order", source="api", created_at=AT + timedelta(
        minutes=5), occurred_at=AT, external_id=str(uuid4()), value=value, currency="CZK", attribution=attribution)
    return replace(base, **changes)


async def stored(pool: asyncpg.Pool, tenant: str, conversion_id: UUID) -> dict[str, list[tuple]]:
    rows = await pool.fetch(
        "SELECT model, source, medium, campaign, channel, conversions, revenue, kind, currency, created_at,"
        " days_to_convert FROM conversion_credits WHERE tenant_id = $1 AND conversion_id = $2"
        " ORDER BY model, source", tenant, conversion_id)
    out: dict[str, list[tuple]] = {}
    for r in rows:
        out.setdefault(r["model"], []).append(tuple(r)[1:])
    return out


def expected(attribution: Attribution, value: str | None, *, kind: str = "order", currency: str = "CZK",
             created_at: datetime = AT + timedelta(minutes=5)) -> dict[str, list[tuple]]:
    days = attribution.days_to_convert if attribution.touches else None
    out = {}
    for model, cs in credit_models(attribution.touches, converted_at=AT, value=value,
                                   last_touch=attribution.last_touch).items():
        out[model] = sorted((c.key.source, c.key.medium, c.key.campaign, c.key.channel, c.conversions, c.revenue,
                             kind, currency, created_at, days) for c in cs)
    return out


async def version(pool: asyncpg.Pool, conversion_id: UUID) -> int | None:
    return await pool.fetchval("SELECT credits_version FROM conversions WHERE id = $1", conversion_id)


async def test_the_insert_writes_every_model_s_credits_exact_and_a_repeat_writes_none(db_pool, tenant):
    w = write(tenant, matched(), value="300")
    record, created = await conversions.insert_conversion(db_pool, w)
    assert created
    got = await stored(db_pool, tenant, record.id)
    assert got == expected(matched(), "300") and set(got) == set(MODELS)
    assert got["last_touch"] == [("newsletter", "email", "may", "Email", Decimal("1.000000"), Decimal("300.0000"),
                                  "order", "CZK", w.created_at, 9)]
    for model, rows in got.items():
        assert sum(r[4] for r in rows) == 1 and sum(r[5] for r in rows) == 300, model
    assert await version(db_pool, record.id) == CREDIT_VERSION
    again, created = await conversions.insert_conversion(db_pool, replace(w, id=uuid4()))
    assert not created and again.id == record.id
    assert await db_pool.fetchval("SELECT count(*) FROM conversion_credits WHERE tenant_id = $1", tenant) == sum(
        len(v) for v in got.values())


async def test_an_unmatched_conversion_is_unattributed_under_every_model(db_pool, tenant):
    record, _ = await conversions.insert_conversion(db_pool, write(tenant, value=None, kind="lead"))
    key = (UNATTRIBUTED_KEY.source, UNATTRIBUTED_KEY.medium, UNATTRIBUTED_KEY.campaign, UNATTRIBUTED_KEY.channel)
    assert await stored(db_pool, tenant, record.id) == {
        model: [(*key, Decimal("1.000000"), Decimal("0.0000"), "lead", "CZK", AT + timedelta(minutes=5), None)]
        for model in MODELS}


async def test_an_erasure_keeps_the_credits_and_a_changed_attribution_is_credited_again(db_pool, tenant):
    record, _ = await conversions.insert_conversion(db_pool, write(tenant, matched()))
    before = await stored(db_pool, tenant, record.id)
    assert await conversions.anonymize_conversions(db_pool, tenant, [record.id], AT) == {"order": 1}
    assert await stored(db_pool, tenant, record.id) == before
    assert await version(db_pool, record.id) == CREDIT_VERSION
    # A re-match (what any later change of the attribution is): marked, then credited again from the new record.
    rematched = matched((GOOGLE,))
    await db_pool.execute("UPDATE conversions SET attribution = $2 WHERE id = $1", record.id,
                          attribution_record(rematched))
    assert await version(db_pool, record.id) is None
    assert await credits.credit_pending(db_pool, tenant, AT, AT + timedelta(days=1)) == 1
    assert await stored(db_pool, tenant, record.id) == expected(rematched, "300")
    assert await version(db_pool, record.id) == CREDIT_VERSION
    # So is a changed value; PII-only updates (key rotation) leave the mark alone.
    await db_pool.execute("UPDATE conversions SET value = 120 WHERE id = $1", record.id)
    assert await credits.credit_pending(db_pool, tenant, AT, AT + timedelta(days=1)) == 1
    assert await stored(db_pool, tenant, record.id) == expected(rematched, "120")
    await db_pool.execute("UPDATE conversions SET email_enc = '\\x02aa' WHERE id = $1", record.id)
    assert await version(db_pool, record.id) == CREDIT_VERSION


async def test_credits_go_with_their_conversion(db_pool, tenant):
    kept, _ = await conversions.insert_conversion(db_pool, write(tenant, matched()))
    gone, _ = await conversions.insert_conversion(db_pool, write(tenant, matched()))
    await db_pool.execute("DELETE FROM conversions WHERE id = $1", gone.id)
    assert await stored(db_pool, tenant, gone.id) == {}
    assert await stored(db_pool, tenant, kept.id) != {}


async def raw_conversion(pool: asyncpg.Pool, tenant: str, attribution: Attribution | None, value: str | None,
                         created_at: datetime) -> UUID:
    """A conversion as a process before migration 0009 stored it: no credits, no credits_version."""
    cid = uuid4()
    await pool.execute(
        "INSERT INTO conversions (id, tenant_id, kind, source, created_at, occurred_at, value, currency,"
        " match_type, attribution) VALUES ($1, $2, 'order', 'api', $3, $4, $5, 'CZK', $6, $7)",
        cid, tenant, created_at, AT, None if value is None else Decimal(value),
        "none" if attribution is None else attribution.match_type,
        None if attribution is None else attribution_record(attribution))
    return cid


async def test_the_backfill_credits_conversions_stored_without_credits_once(db_pool, tenant):
    made = AT + timedelta(minutes=5)
    ids = [await raw_conversion(db_pool, tenant, matched() if i % 3 else None, str(10 * i), made)
           for i in range(7)]
    outside = await raw_conversion(db_pool, tenant, matched(), "1", made + timedelta(days=3))
    assert await credits.credit_pending(db_pool, tenant, AT, AT + timedelta(days=1), batch=3) == 7
    for i, cid in enumerate(ids):
        assert await stored(db_pool, tenant, cid) == expected(matched() if i % 3 else Attribution(), str(10 * i))
        assert await version(db_pool, cid) == CREDIT_VERSION
    assert await stored(db_pool, tenant, outside) == {}  # outside the range: left to the sweep
    assert await credits.credit_pending(db_pool, tenant, AT, AT + timedelta(days=1)) == 0  # idempotent
    assert await credits.credit_all_pending(db_pool) >= 1
    assert await stored(db_pool, tenant, outside) == expected(matched(), "1", created_at=made + timedelta(days=3))


async def test_concurrent_backfills_credit_each_conversion_once(db_pool, tenant):
    made = AT + timedelta(minutes=5)
    ids = [await raw_conversion(db_pool, tenant, matched(), "50", made) for _ in range(40)]
    results = await asyncio.gather(
        credits.credit_all_pending(db_pool, batch=4), credits.credit_all_pending(db_pool, batch=4),
        credits.credit_pending(db_pool, tenant, AT, AT + timedelta(days=1), batch=4))
    assert sum(results) == 40
    rows = await db_pool.fetchval("SELECT count(*) FROM conversion_credits WHERE conversion_id = ANY($1)", ids)
    assert rows == 40 * sum(len(v) for v in expected(matched(), "50").values())


async def test_a_truncate_of_conversions_takes_the_credits(db_pool, tenant):
    await conversions.insert_conversion(db_pool, write(tenant, matched()))
    await db_pool.execute("TRUNCATE forward_attempts, forwards, conversions")
    assert await db_pool.fetchval("SELECT count(*) FROM conversion_credits") == 0
