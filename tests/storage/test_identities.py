"""Identities linked to sessions, and the cross-device lookup, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from halo_proxy.storage import identities, sessions
from halo_proxy.storage.identities import LinkedSession
from halo_proxy.storage.sessions import SessionWrite
from halo_proxy.tracking.models import Consent, Device, Geo, Touch
from tests.conftest import TestDatabase
from tests.storage.conftest import assert_indexed, generic_plan

DAY1 = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
EMAIL_BIDX = b"\x11" * 16
PHONE_BIDX = b"\x22" * 16


def enc(version: int, text: bytes = b"x") -> bytes:
    """A stand-in ciphertext: key version byte, then 28 bytes (nonce and tag sized)."""
    return bytes((version,)) + text.ljust(28, b".")


_tenants = itertools.count(1)


@pytest.fixture
def tenant() -> str:
    return f"tenant_{next(_tenants)}"


async def visit(db: asyncpg.Pool, tenant: str, session_id: UUID, *touch_times: datetime) -> None:
    await sessions.write_visits(
        db,
        [
            SessionWrite(
                tenant_id=tenant,
                session_id=session_id,
                is_new=i == 0,
                touch=Touch(at=at, source="google", medium="cpc", channel="Paid Search"),
                device=Device("desktop", "Firefox", "Linux"),
                geo=Geo(),
                consent=Consent(analytics=True, marketing=True),
            )
            for i, at in enumerate(touch_times)
        ],
    )


async def test_link_needs_an_existing_session(db_pool: asyncpg.Pool, tenant: str) -> None:
    assert await identities.link_identity(db_pool, tenant, uuid4(), "email", EMAIL_BIDX, enc(1), DAY1) is False
    assert await identities.find_identities(db_pool, tenant, "email", EMAIL_BIDX) == []
    assert await sessions.count_sessions(db_pool, tenant) == 0


async def test_link_is_idempotent_and_keeps_the_newest_ciphertext(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    await visit(db_pool, tenant, sid, DAY1)
    assert await identities.link_identity(db_pool, tenant, sid, "email", EMAIL_BIDX, enc(1, b"a"), DAY2)
    assert await identities.link_identity(db_pool, tenant, sid, "email", EMAIL_BIDX, enc(2, b"b"), DAY3)
    # an older write arriving late keeps the newer ciphertext and times
    assert await identities.link_identity(db_pool, tenant, sid, "email", EMAIL_BIDX, enc(1, b"c"), DAY1)

    [record] = await identities.find_identities(db_pool, tenant, "email", EMAIL_BIDX)
    assert (record.session_id, record.kind, record.bidx) == (sid, "email", EMAIL_BIDX)
    assert record.enc == enc(2, b"b")
    assert record.key_version == 2  # read from the ciphertext's first byte
    assert (record.created_at, record.last_seen_at) == (DAY1, DAY3)


async def test_concurrent_links_of_one_identifier_make_one_row(
    db_pool: asyncpg.Pool, database: TestDatabase, tenant: str
) -> None:
    sid = uuid4()
    await visit(db_pool, tenant, sid, DAY1)
    conns = [await asyncpg.connect(database.dsn) for _ in range(8)]
    try:
        barrier = asyncio.Barrier(len(conns))

        async def link(conn: asyncpg.Connection, i: int) -> bool:
            await barrier.wait()
            return await identities.link_identity(
                conn, tenant, sid, "phone", PHONE_BIDX, enc(1), DAY1 + timedelta(seconds=i)
            )

        assert all(await asyncio.gather(*(link(c, i) for i, c in enumerate(conns))))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    [record] = await identities.find_identities(db_pool, tenant, "phone", PHONE_BIDX)
    assert record.last_seen_at == DAY1 + timedelta(seconds=7)


async def test_sessions_for_gives_the_latest_touch_before_the_conversion(
    db_pool: asyncpg.Pool, tenant: str
) -> None:
    phone, laptop, later, bare = uuid4(), uuid4(), uuid4(), uuid4()
    await visit(db_pool, tenant, phone, DAY1, DAY1 + timedelta(hours=5))
    await visit(db_pool, tenant, laptop, DAY1 + timedelta(hours=1), DAY2)
    await visit(db_pool, tenant, later, DAY3)  # first seen after the conversion
    await visit(db_pool, tenant, bare, DAY1)
    for sid in (phone, laptop, later):
        assert await identities.link_identity(db_pool, tenant, sid, "email", EMAIL_BIDX, enc(1), DAY3)
    # same identifier, other kind and other identifier: not returned
    await identities.link_identity(db_pool, tenant, bare, "phone", EMAIL_BIDX, enc(1), DAY1)
    await identities.link_identity(db_pool, tenant, bare, "email", PHONE_BIDX, enc(1), DAY1)

    conversion_at = DAY2 + timedelta(hours=1)
    found = await identities.sessions_for(db_pool, tenant, "email", EMAIL_BIDX, conversion_at)
    assert found == [
        LinkedSession(laptop, DAY2),
        LinkedSession(phone, DAY1 + timedelta(hours=5)),
        LinkedSession(later, None),
    ]
    session_id, last_touch_at = found[0]
    assert (session_id, last_touch_at) == (laptop, DAY2)

    # "at or before": a touch at the very instant counts
    found = await identities.sessions_for(db_pool, tenant, "email", EMAIL_BIDX, DAY1 + timedelta(hours=1))
    assert found[:2] == [
        LinkedSession(laptop, DAY1 + timedelta(hours=1)),
        LinkedSession(phone, DAY1),
    ]
    assert await identities.sessions_for(db_pool, tenant, "email", b"\x00" * 16, DAY3) == []


async def test_tenants_are_isolated(db_pool: asyncpg.Pool, tenant: str) -> None:
    other = f"{tenant}_other"
    sid = uuid4()
    await visit(db_pool, tenant, sid, DAY1)
    # a session of another tenant cannot be linked, even with the same id
    assert not await identities.link_identity(db_pool, other, sid, "email", EMAIL_BIDX, enc(1), DAY1)
    assert await identities.link_identity(db_pool, tenant, sid, "email", EMAIL_BIDX, enc(1), DAY1)
    assert await identities.sessions_for(db_pool, other, "email", EMAIL_BIDX, DAY3) == []
    assert await identities.find_identities(db_pool, other, "email", EMAIL_BIDX) == []
    assert await identities.delete_identities(db_pool, other, "email", EMAIL_BIDX) == 0
    assert await identities.unlink_session(db_pool, other, sid) == 0
    assert await identities.identities_of_sessions(db_pool, other, [sid]) == []
    assert len(await identities.find_identities(db_pool, tenant, "email", EMAIL_BIDX)) == 1


async def test_unlink_delete_and_cascade(db_pool: asyncpg.Pool, tenant: str) -> None:
    a, b = uuid4(), uuid4()
    await visit(db_pool, tenant, a, DAY1)
    await visit(db_pool, tenant, b, DAY2)
    for sid in (a, b):
        await identities.link_identity(db_pool, tenant, sid, "email", EMAIL_BIDX, enc(1), DAY2)
        await identities.link_identity(db_pool, tenant, sid, "phone", PHONE_BIDX, enc(1), DAY2)

    linked = await identities.identities_of_sessions(db_pool, tenant, [a, b])
    assert sorted((r.session_id, r.kind) for r in linked) == sorted(
        [(a, "email"), (a, "phone"), (b, "email"), (b, "phone")]
    )
    assert await identities.identities_of_sessions(db_pool, tenant, []) == []

    assert await identities.unlink_session(db_pool, tenant, a) == 2  # consent withdrawn on session a
    assert [r.session_id for r in await identities.find_identities(db_pool, tenant, "email", EMAIL_BIDX)] == [b]

    assert await identities.delete_identities(db_pool, tenant, "phone", PHONE_BIDX) == 1
    assert await sessions.delete_sessions(db_pool, tenant, [b]) == 1  # cascades to its links
    assert await identities.identities_of_sessions(db_pool, tenant, [a, b]) == []


async def test_kind_is_checked(db_pool: asyncpg.Pool, tenant: str) -> None:
    with pytest.raises(ValueError):
        await identities.link_identity(db_pool, tenant, uuid4(), "ip", EMAIL_BIDX, enc(1), DAY1)
    with pytest.raises(ValueError):
        await identities.sessions_for(db_pool, tenant, "name", EMAIL_BIDX, DAY1)


# -- plans --------------------------------------------------------------------------------------------------------


async def test_sessions_for_reads_only_indexes(planner: asyncpg.Connection) -> None:
    await assert_indexed(planner, identities._SESSIONS_FOR, {"identities_pkey", "touches_tenant_session_at"})
    nodes = await generic_plan(planner, identities._SESSIONS_FOR)
    assert {n["Node Type"] for n in nodes if "Index Name" in n} == {"Index Only Scan"}


async def test_link_reads_the_session_by_its_key(planner: asyncpg.Connection) -> None:
    await assert_indexed(planner, identities._LINK, {"sessions_pkey"})
