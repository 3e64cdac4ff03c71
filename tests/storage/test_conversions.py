"""Conversions with their outbox rows, idempotency under concurrency, erasure and key rotation, against a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import pytest

from halo_proxy.storage import conversions, outbox, sessions
from halo_proxy.storage.conversions import ConversionWrite
from halo_proxy.storage.db import init_connection
from halo_proxy.storage.errors import StorageError
from halo_proxy.storage.outbox import ForwardWrite
from halo_proxy.storage.sessions import SessionWrite
from halo_proxy.tracking.models import Attribution, Consent, Device, Geo, Touch
from tests.conftest import TestDatabase
from tests.storage.conftest import assert_indexed

DAY1 = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
MASTER = "ab" * 32  # 32 bytes, hex

GOOGLE = Touch(
    at=DAY1,
    source="google",
    medium="cpc",
    campaign="summer",
    channel="Paid Search",
    referrer_domain="www.google.com",
    landing_path="/shoes",
    click_ids=(("gclid", "abc123"),),
)
FACEBOOK = Touch(
    at=DAY2,
    source="facebook",
    medium="social",
    campaign="retargeting",
    channel="Organic Social",
    landing_path="/sale",
    click_ids=(("wbraid", "w1"), ("fbclid", "xyz789")),
)

_tenants = itertools.count(1)


@pytest.fixture
def tenant() -> str:
    return f"tenant_{next(_tenants)}"


def attribution(session_id: UUID) -> Attribution:
    return Attribution(
        match_type="session",
        session_id=str(session_id),
        first_touch=GOOGLE,
        last_touch=FACEBOOK,
        days_to_convert=2,
        click_ids=(("gclid", "abc123"), ("fbclid", "xyz789")),
        touches=(GOOGLE, FACEBOOK),
    )


def lead(tenant: str, external_id: str | None = "evt-1", **changes: object) -> ConversionWrite:
    write = ConversionWrite(
        id=uuid4(),
        tenant_id=tenant,
        kind="lead",
        source="api",
        created_at=DAY3,
        external_id=external_id,
        value="1250.5",
        currency="CZK",
        email_enc=b"\x01email-ciphertext........",
        email_bidx=b"E" * 16,
        phone_enc=b"\x01phone-ciphertext........",
        phone_bidx=b"P" * 16,
        name_enc=b"\x01name-ciphertext.........",
        form_type="contact",
        consent_marketing=True,
        response={"id": "x", "match_type": "none"},
    )
    return replace(write, **changes)


def forwards(*platforms: str) -> list[ForwardWrite]:
    return [ForwardWrite(platform=p, event_id=f"evt-1:{p}", payload_enc=b"\x01payload") for p in platforms]


async def test_insert_and_read_back(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    write = lead(
        tenant,
        attribution=attribution(sid),
        items=[{"sku": "A-1", "quantity": 2}],
        occurred_at=DAY2,
        fields_enc=b"\x01fields..................",
    )
    record, created = await conversions.insert_conversion(db_pool, write, forwards("meta", "ga4"))
    assert created
    assert record.id == write.id
    assert record.value == Decimal("1250.5")
    assert record.currency == "CZK"
    assert (record.created_at, record.occurred_at) == (DAY3, DAY2)
    assert (record.session_id, record.match_type) == (sid, "session")
    assert record.attribution == attribution(sid)
    assert record.attribution.last_touch is not None
    assert record.attribution.last_touch.click_ids == (("wbraid", "w1"), ("fbclid", "xyz789"))  # order kept
    assert record.items == [{"sku": "A-1", "quantity": 2}]
    assert record.response == {"id": "x", "match_type": "none"}
    assert record.anonymized_at is None
    assert await conversions.get_conversion(db_pool, tenant, write.id) == record
    assert await conversions.find_by_external_id(db_pool, tenant, "lead", "evt-1") == record

    rows = await outbox.forwards_for_conversions(db_pool, tenant, [write.id])
    assert [(r.platform, r.event_id, r.status, r.attempts) for r in rows] == [
        ("ga4", "evt-1:ga4", "pending", 0),
        ("meta", "evt-1:meta", "pending", 0),
    ]
    assert all(r.next_attempt_at == DAY3 and r.created_at == DAY3 for r in rows)


async def test_unmatched_conversion_defaults(db_pool: asyncpg.Pool, tenant: str) -> None:
    write = ConversionWrite(id=uuid4(), tenant_id=tenant, kind="order", source="shopify", created_at=DAY1)
    record, created = await conversions.insert_conversion(db_pool, write)
    assert created
    assert (record.match_type, record.session_id, record.attribution) == ("none", None, Attribution())
    assert record.occurred_at == DAY1
    assert record.value is None


async def test_redelivery_returns_the_first_and_writes_nothing(db_pool: asyncpg.Pool, tenant: str) -> None:
    first, created = await conversions.insert_conversion(db_pool, lead(tenant), forwards("meta"))
    assert created
    again, created = await conversions.insert_conversion(
        db_pool, lead(tenant, value="1", response={"other": True}), forwards("meta", "tiktok")
    )
    assert not created
    assert again == first
    assert len(await conversions.list_conversions(db_pool, tenant, DAY1, DAY3 + timedelta(days=1))) == 1
    assert [r.platform for r in await outbox.forwards_for_conversions(db_pool, tenant, [first.id])] == ["meta"]


async def test_idempotency_key_is_per_tenant_and_kind(db_pool: asyncpg.Pool, tenant: str) -> None:
    _, a = await conversions.insert_conversion(db_pool, lead(tenant))
    _, b = await conversions.insert_conversion(db_pool, lead(tenant, kind="order"))
    _, c = await conversions.insert_conversion(db_pool, lead(f"{tenant}_other"))
    # leads without an event id are never deduplicated
    _, d = await conversions.insert_conversion(db_pool, lead(tenant, external_id=None))
    _, e = await conversions.insert_conversion(db_pool, lead(tenant, external_id=None))
    assert (a, b, c, d, e) == (True, True, True, True, True)


async def test_concurrent_deliveries_create_exactly_one(
    db_pool: asyncpg.Pool, database: TestDatabase, tenant: str
) -> None:
    n = 16
    conns = [await asyncpg.connect(database.dsn) for _ in range(n)]
    for conn in conns:
        await init_connection(conn)
    barrier = asyncio.Barrier(n)

    async def deliver(conn: asyncpg.Connection) -> tuple[conversions.ConversionRecord, bool]:
        write = lead(tenant, external_id="order-77", kind="order")  # each delivery with its own new id
        await barrier.wait()
        return await conversions.insert_conversion(conn, write, forwards("meta", "ga4", "tiktok"))

    try:
        results = await asyncio.gather(*(deliver(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))

    assert sum(created for _, created in results) == 1
    winner = next(record for record, created in results if created)
    assert {record.id for record, _ in results} == {winner.id}
    assert await db_pool.fetchval("SELECT count(*) FROM conversions WHERE tenant_id = $1", tenant) == 1
    assert await db_pool.fetchval("SELECT count(*) FROM forwards WHERE tenant_id = $1", tenant) == 3


async def test_inside_a_callers_transaction(db_pool: asyncpg.Pool, tenant: str) -> None:
    write = lead(tenant)
    async with db_pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        _, created = await conversions.insert_conversion(conn, write, forwards("meta"))
        assert created
        await tx.rollback()
    assert await conversions.get_conversion(db_pool, tenant, write.id) is None
    assert await outbox.forwards_for_conversions(db_pool, tenant, [write.id]) == []


async def test_a_failing_forward_writes_no_conversion(db_pool: asyncpg.Pool, tenant: str) -> None:
    write = lead(tenant)
    broken = ForwardWrite(platform="meta", event_id=None, payload_enc=b"\x01p")  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        await conversions.insert_conversion(db_pool, write, [broken])
    assert await conversions.get_conversion(db_pool, tenant, write.id) is None


async def test_writes_are_validated(tenant: str) -> None:
    with pytest.raises(ValueError):
        lead(tenant, kind="refund")
    with pytest.raises(ValueError):
        lead(tenant, attribution=Attribution(match_type="cookie"))
    with pytest.raises(ValueError):
        ForwardWrite(platform="bing", event_id="e", payload_enc=b"\x01")
    with pytest.raises(ValueError):
        ForwardWrite(platform="meta", event_id="e", payload_enc=None)
    with pytest.raises(ValueError):
        await conversions.insert_conversion(None, lead(tenant), forwards("meta") * 2)  # type: ignore[arg-type]


async def test_list_for_reports(db_pool: asyncpg.Pool, tenant: str) -> None:
    made = []
    for i in range(4):
        write = lead(tenant, external_id=f"e{i}", kind="order" if i % 2 else "lead", created_at=DAY1 + timedelta(hours=i))
        made.append((await conversions.insert_conversion(db_pool, write))[0])
    await conversions.insert_conversion(db_pool, lead(f"{tenant}_other", created_at=DAY1))

    listed = await conversions.list_conversions(db_pool, tenant, DAY1, DAY1 + timedelta(hours=3))
    assert [r.external_id for r in listed] == ["e0", "e1", "e2"]  # until is exclusive
    orders = await conversions.list_conversions(db_pool, tenant, DAY1, DAY2, kind="order")
    assert [r.external_id for r in orders] == ["e1", "e3"]


async def test_erasure_keeps_value_and_attribution(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    by_email, _ = await conversions.insert_conversion(db_pool, lead(tenant, external_id="a", phone_bidx=None, created_at=DAY1))
    by_phone, _ = await conversions.insert_conversion(
        db_pool, lead(tenant, external_id="b", kind="order", email_bidx=None, phone_bidx=b"Q" * 16, created_at=DAY2)
    )
    by_session, _ = await conversions.insert_conversion(
        db_pool,
        lead(tenant, external_id="c", email_bidx=None, phone_bidx=None, attribution=attribution(sid)),
    )
    await conversions.insert_conversion(db_pool, lead(tenant, external_id="d", email_bidx=b"X" * 16))

    found = await conversions.find_for_person(
        db_pool, tenant, email_bidx=b"E" * 16, phone_bidx=b"Q" * 16, session_ids=[sid]
    )
    assert [r.id for r in found] == [by_email.id, by_phone.id, by_session.id]
    assert [r.id for r in await conversions.find_for_person(db_pool, tenant, phone_bidx=b"Q" * 16)] == [
        by_phone.id
    ]
    assert await conversions.find_for_person(db_pool, tenant) == []
    assert await conversions.find_for_person(db_pool, f"{tenant}_other", email_bidx=b"E" * 16) == []

    ids = [r.id for r in found]
    assert await conversions.anonymize_conversions(db_pool, tenant, ids, DAY3) == {"lead": 2, "order": 1}
    assert await conversions.anonymize_conversions(db_pool, tenant, ids, DAY3) == {}  # repeating is safe
    assert await conversions.anonymize_conversions(db_pool, f"{tenant}_other", ids, DAY3) == {}
    for before in found:
        after = await conversions.get_conversion(db_pool, tenant, before.id)
        assert after is not None
        assert (after.email_enc, after.email_bidx, after.phone_enc, after.phone_bidx) == (None,) * 4
        assert (after.name_enc, after.message_enc, after.fields_enc) == (None,) * 3
        assert after.anonymized_at == DAY3
        # value, match type and the touches stay; the matched session goes (a returning cookie must not relink)
        assert (after.value, after.attribution, after.match_type) == (
            before.value,
            dataclasses.replace(before.attribution, session_id=None),
            before.match_type,
        )
        assert after.session_id is None
    assert await conversions.find_for_person(db_pool, tenant, email_bidx=b"E" * 16) == []


async def test_deleting_the_session_keeps_the_conversion(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    await sessions.write_visits(db_pool, [_visit(tenant, sid, b"", b"")])
    record, _ = await conversions.insert_conversion(db_pool, lead(tenant, attribution=attribution(sid)))
    assert await sessions.delete_sessions(db_pool, tenant, [sid]) == 1
    kept = await conversions.get_conversion(db_pool, tenant, record.id)
    assert kept is not None and kept.session_id == sid


def _visit(tenant: str, sid: UUID, ip_enc: bytes | None, ua_enc: bytes | None) -> SessionWrite:
    return SessionWrite(
        tenant_id=tenant,
        session_id=sid,
        is_new=True,
        touch=GOOGLE,
        device=Device("desktop", "Firefox", "Linux"),
        geo=Geo(),
        consent=Consent(analytics=True, marketing=True),
        ip_enc=ip_enc or None,
        user_agent_enc=ua_enc or None,
    )


# -- plans --------------------------------------------------------------------------------------------------------

PLANS = {
    "find_by_external_id": (conversions._FIND_BY_EXTERNAL_ID, {"conversions_tenant_kind_external_id"}),
    "list_conversions": (conversions._LIST, {"conversions_tenant_created_at"}),
    "find_for_person": (
        conversions._FIND_FOR_PERSON,
        {"conversions_tenant_email_bidx", "conversions_tenant_phone_bidx", "conversions_tenant_session"},
    ),
}


@pytest.mark.parametrize("name", sorted(PLANS))
async def test_reads_use_indexes(planner: asyncpg.Connection, name: str) -> None:  # noqa: F811
    sql, indexes = PLANS[name]
    await assert_indexed(planner, sql, indexes)
