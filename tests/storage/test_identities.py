"""Identities linked to sessions, and the cross-device lookup, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from halo_proxy.storage import identities, sessions
from halo_proxy.storage.identities import LinkedSession
from halo_proxy.storage.sessions import SessionWrite
from halo_proxy.tracking.models import Consent, Device, Geo, Touch
from tests.conftest import TestDatabase

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


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", ()):
        nodes.extend(plan_nodes(child))
    return nodes


_EXPLAIN = """
CREATE OR REPLACE FUNCTION pg_temp.generic_plan(query text) RETURNS SETOF json LANGUAGE plpgsql AS $fn$
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN (GENERIC_PLAN, FORMAT JSON) ' || query;
END
$fn$
"""


async def generic_plan(conn: asyncpg.Connection, sql: str) -> list[dict[str, Any]]:
    """The plan nodes of a statement with $n parameters, as planned for any parameter values."""
    await conn.execute(_EXPLAIN)
    raw = await conn.fetchval("SELECT pg_temp.generic_plan($1)", sql)
    return plan_nodes(json.loads(raw)[0]["Plan"])


# Enough rows, spread over tenants, for the planner to cost plans as in production (statistics from ANALYZE).
_SEED = """
TRUNCATE sessions, touches, identities, conversions, forwards;
INSERT INTO sessions (tenant_id, id, created_at, updated_at, ft_channel, ft_landing_path, ft_at,
                      lt_channel, lt_landing_path, lt_at, consent_analytics, consent_marketing,
                      ip_enc, user_agent_enc)
SELECT 'seed_' || (i % 20), gen_random_uuid(), t, t, 'Direct', '/', t, 'Direct', '/', t, true, true,
       '\\x01'::bytea || sha256(i::text::bytea), '\\x01'::bytea || sha256(i::text::bytea)
FROM generate_series(1, 5000) i, LATERAL (SELECT timestamptz '2026-01-01' + i * interval '1 minute' AS t) x;
INSERT INTO touches (tenant_id, session_id, at, channel, landing_path)
SELECT s.tenant_id, s.id, s.created_at + n * interval '1 hour', 'Direct', '/'
FROM sessions s, generate_series(0, 2) n;
INSERT INTO identities (tenant_id, session_id, kind, bidx, enc, created_at, last_seen_at)
SELECT tenant_id, id, 'email', sha256(id::text::bytea), ip_enc, created_at, created_at FROM sessions;
INSERT INTO conversions (id, tenant_id, kind, source, external_id, created_at, occurred_at,
                         email_enc, email_bidx, phone_bidx, session_id)
SELECT gen_random_uuid(), tenant_id, CASE WHEN hashtext(id::text) % 2 = 0 THEN 'lead' ELSE 'order' END, 'api',
       id::text, created_at, created_at, ip_enc, sha256(id::text::bytea), sha256(('p' || id::text)::bytea), id
FROM sessions;
INSERT INTO forwards (tenant_id, conversion_id, platform, event_id, status, attempts, next_attempt_at,
                      payload_enc, created_at, updated_at)
SELECT c.tenant_id, c.id, p, c.id || ':' || p,
       CASE abs(hashtext(c.id::text || p)) % 100 WHEN 0 THEN 'pending' WHEN 1 THEN 'dead' ELSE 'sent' END,
       1, c.created_at, '\\x01'::bytea, c.created_at, c.created_at
FROM conversions c, unnest(ARRAY['meta', 'ga4']) p;
ANALYZE;
"""


@pytest.fixture
async def planner(db_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection on a database holding a production-like spread of rows (seeded once per module; this
    empties the tables first, so plan tests come last in their module)."""
    async with db_pool.acquire() as conn:
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM forwards WHERE tenant_id = 'seed_0')"):
            await conn.execute(_SEED)
        yield conn


async def assert_indexed(conn: asyncpg.Connection, sql: str, indexes: set[str]) -> None:
    """The statement's generic plan reads its tables through exactly these indexes, never a full scan."""
    nodes = await generic_plan(conn, sql)
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    assert {n["Index Name"] for n in nodes if "Index Name" in n} == indexes, nodes


async def test_sessions_for_reads_only_indexes(planner: asyncpg.Connection) -> None:
    await assert_indexed(planner, identities._SESSIONS_FOR, {"identities_pkey", "touches_tenant_session_at"})
    nodes = await generic_plan(planner, identities._SESSIONS_FOR)
    assert {n["Node Type"] for n in nodes if "Index Name" in n} == {"Index Only Scan"}


async def test_link_reads_the_session_by_its_key(planner: asyncpg.Connection) -> None:
    await assert_indexed(planner, identities._LINK, {"sessions_pkey"})
