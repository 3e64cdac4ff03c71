"""Conversions with their outbox rows, idempotency under concurrency, erasure and key rotation, against a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import pytest

from halo_proxy.crypto import KeyRing, blob_version
from halo_proxy.storage import conversions, identities, outbox, sessions
from halo_proxy.storage.conversions import PII_COLUMNS, ConversionWrite
from halo_proxy.storage.db import create_pool, init_connection
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


# -- key rotation -------------------------------------------------------------------------------------------------


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


@pytest.fixture
async def pool8(database: TestDatabase) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database.dsn, min_size=1, max_size=8)
    try:
        yield pool
    finally:
        await pool.close()


async def _seed_pii(db: asyncpg.Pool, tenant: str, ring: KeyRing, n: int) -> list[UUID]:
    """n sessions with an IP and a user agent, each linked to an email, and n leads: all under `ring`."""
    def encrypt(table: str, column: str, text: str) -> bytes:
        return ring.encrypt(tenant, table, column, text)

    sids = [uuid4() for _ in range(n)]
    await sessions.write_visits(
        db,
        [
            _visit(tenant, sid, encrypt("sessions", "ip_enc", f"10.0.0.{i}"), encrypt("sessions", "user_agent_enc", "UA"))
            for i, sid in enumerate(sids)
        ],
    )
    for i, sid in enumerate(sids):
        bidx = ring.blind_index(tenant, "email", f"p{i}@example.com")
        await identities.link_identity(
            db, tenant, sid, "email", bidx, encrypt("identities", "enc", f"p{i}@example.com"), DAY1
        )
        await conversions.insert_conversion(
            db,
            lead(
                tenant,
                external_id=f"e{i}",
                email_enc=encrypt("conversions", "email_enc", f"p{i}@example.com"),
                email_bidx=bidx,
                phone_enc=None if i % 2 else encrypt("conversions", "phone_enc", "+420601000000"),
                name_enc=encrypt("conversions", "name_enc", "Jan"),
                message_enc=encrypt("conversions", "message_enc", "Call me"),
                fields_enc=encrypt("conversions", "fields_enc", '{"budget": "high"}'),
            ),
        )
    return sids


async def _versions(db: asyncpg.Pool, tenant: str) -> set[int]:
    """Every key version found in the tenant's ciphertexts."""
    blobs: list[bytes | None] = []
    for row in await db.fetch("SELECT ip_enc, user_agent_enc FROM sessions WHERE tenant_id = $1", tenant):
        blobs.extend(row)
    blobs.extend(await _column(db, "SELECT enc FROM identities WHERE tenant_id = $1", tenant))
    for row in await db.fetch(
        "SELECT email_enc, phone_enc, name_enc, message_enc, fields_enc FROM conversions WHERE tenant_id = $1",
        tenant,
    ):
        blobs.extend(row)
    return {blob_version(b) for b in blobs if b is not None}


async def _column(db: asyncpg.Pool, sql: str, *args: object) -> list[bytes]:
    return [r[0] for r in await db.fetch(sql, *args)]


async def test_rewrap_moves_every_ciphertext_to_the_new_key(pool8: asyncpg.Pool, tenant: str) -> None:
    old, new = KeyRing(MASTER, 1), KeyRing(MASTER, 2)
    sids = await _seed_pii(pool8, tenant, old, 5)
    other = f"{tenant}_other"
    await _seed_pii(pool8, other, old, 1)
    assert await _versions(pool8, tenant) == {1}

    calls: list[tuple[str, str]] = []

    def fn(table: str, column: str, blob: bytes) -> bytes:
        calls.append((table, column))
        return new.reencrypt(tenant, table, column, blob)

    done = await conversions.rewrap_pii(pool8, tenant, new.current_version, fn, batch=2)
    assert done == {"sessions": 5, "identities": 5, "conversions": 5}
    assert await _versions(pool8, tenant) == {2}
    assert await _versions(pool8, other) == {1}  # another tenant is not touched
    assert {table for table, _ in calls} == set(PII_COLUMNS)
    assert {column for _, column in calls} == {c for cols in PII_COLUMNS.values() for c in cols}
    assert len(calls) == 5 * 2 + 5 + 5 * 4 + 3  # phones on every other lead

    # everything still decrypts, under the names it was bound to
    session = await sessions.get_session(pool8, tenant, sids[3])
    assert session is not None and session.ip_enc is not None
    assert new.decrypt(tenant, "sessions", "ip_enc", session.ip_enc) == "10.0.0.3"
    record = await conversions.find_by_external_id(pool8, tenant, "lead", "e0")
    assert record is not None and record.phone_enc is not None and record.fields_enc is not None
    assert new.decrypt(tenant, "conversions", "phone_enc", record.phone_enc) == "+420601000000"
    assert new.decrypt(tenant, "conversions", "fields_enc", record.fields_enc) == '{"budget": "high"}'
    [link] = await identities.identities_of_sessions(pool8, tenant, [sids[0]])
    assert link.key_version == 2
    assert new.decrypt(tenant, "identities", "enc", link.enc) == "p0@example.com"

    # a second run finds nothing older
    calls.clear()
    assert await conversions.rewrap_pii(pool8, tenant, 2, fn) == {"sessions": 0, "identities": 0, "conversions": 0}
    assert calls == []


async def test_rewrap_that_does_not_reach_the_version_changes_nothing(pool8: asyncpg.Pool, tenant: str) -> None:
    ring = KeyRing(MASTER, 1)
    await _seed_pii(pool8, tenant, ring, 2)
    before = await _column(pool8, "SELECT ip_enc FROM sessions WHERE tenant_id = $1 ORDER BY id", tenant)
    with pytest.raises(ValueError):
        await conversions.rewrap_pii(pool8, tenant, 2, lambda table, column, blob: blob)
    assert await _column(pool8, "SELECT ip_enc FROM sessions WHERE tenant_id = $1 ORDER BY id", tenant) == before


async def test_rewrap_loses_no_concurrent_write(pool8: asyncpg.Pool, tenant: str) -> None:
    """Visits written while the rotation runs keep their own (current) values."""
    old, new = KeyRing(MASTER, 1), KeyRing(MASTER, 2)
    sids = await _seed_pii(pool8, tenant, old, 20)

    async def rotate() -> dict[str, int]:
        return await conversions.rewrap_pii(
            pool8, tenant, 2, lambda t, c, b: new.reencrypt(tenant, t, c, b), batch=3
        )

    async def revisit() -> None:
        for i, sid in enumerate(sids):
            write = _visit(
                tenant,
                sid,
                new.encrypt(tenant, "sessions", "ip_enc", f"192.168.0.{i}"),
                new.encrypt(tenant, "sessions", "user_agent_enc", "UA2"),
            )
            await sessions.write_visits(pool8, [replace(write, is_new=False, touch=FACEBOOK)])

    await asyncio.gather(rotate(), revisit())
    assert await _versions(pool8, tenant) == {2}
    for i, sid in enumerate(sids):
        session = await sessions.get_session(pool8, tenant, sid)
        assert session is not None and session.ip_enc is not None
        assert new.decrypt(tenant, "sessions", "ip_enc", session.ip_enc) == f"192.168.0.{i}"


# -- plans --------------------------------------------------------------------------------------------------------

PLANS = {
    "find_by_external_id": (conversions._FIND_BY_EXTERNAL_ID, {"conversions_tenant_kind_external_id"}),
    "list_conversions": (conversions._LIST, {"conversions_tenant_created_at"}),
    "find_for_person": (
        conversions._FIND_FOR_PERSON,
        {"conversions_tenant_email_bidx", "conversions_tenant_phone_bidx", "conversions_tenant_session"},
    ),
    "rewrap_sessions": (conversions._SESSIONS_BATCH, {"sessions_pkey"}),
    "rewrap_identities": (conversions._IDENTITIES_BATCH, {"identities_tenant_key_version"}),
    "rewrap_conversions": (conversions._CONVERSIONS_BATCH, {"conversions_tenant_pii_key_version"}),
}


@pytest.mark.parametrize("name", sorted(PLANS))
async def test_reads_use_indexes(planner: asyncpg.Connection, name: str) -> None:  # noqa: F811
    sql, indexes = PLANS[name]
    await assert_indexed(planner, sql, indexes)
