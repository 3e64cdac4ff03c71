"""Key rotation's rows against PostgreSQL: a new master secret, every ciphertext, blind index and IP hash of a
tenant rewritten under it, readable afterwards without the old secret; concurrent writes kept; the start-up
check that refuses an old version it cannot read."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from halo_proxy.config import Tenant
from halo_proxy.crypto import KeyRing, blob_version, ip_hash_version
from halo_proxy.services.rotation import TenantRekey, UnreadableKeyVersion, check_readable, rotate
from halo_proxy.storage import conversions, events, identities, rotation, sessions
from halo_proxy.storage.conversions import ConversionWrite
from halo_proxy.storage.db import create_pool
from halo_proxy.storage.outbox import ForwardWrite
from halo_proxy.storage.rotation import PII_COLUMNS
from halo_proxy.storage.sessions import SessionWrite
from halo_proxy.tracking.models import Consent, Device, Geo, Touch
from tests.conftest import TestDatabase
from tests.storage.conftest import assert_indexed

OLD = "ab" * 32
NEW = "cd" * 32
AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
_tenants = itertools.count()


@pytest.fixture
def tenant() -> str:
    return f"rot_{next(_tenants)}"


@pytest.fixture
async def pool8(database: TestDatabase) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database.dsn, min_size=1, max_size=8)
    try:
        yield pool
    finally:
        await pool.close()


def _visit(tenant: str, sid: UUID, ring: KeyRing, ip: str | None, *, encrypt_ip: bool = True) -> SessionWrite:
    return SessionWrite(
        tenant_id=tenant, session_id=sid, is_new=True, touch=Touch(at=AT, source="google", medium="cpc"),
        device=Device("desktop", "Firefox", "Linux"), geo=Geo(), consent=Consent(True, encrypt_ip),
        ip_hash=ring.hash_ip(tenant, ip) if ip else None,
        ip_enc=ring.encrypt(tenant, "sessions", "ip_enc", ip) if ip and encrypt_ip else None,
        user_agent_enc=ring.encrypt(tenant, "sessions", "user_agent_enc", "UA") if encrypt_ip else None, at=AT)


async def _seed(db: asyncpg.Pool, tenant: str, ring: KeyRing, n: int) -> list[UUID]:
    """n sessions (IP, user agent, IP hash), each linked to an email, with an event and a lead naming the email
    (and every other one a phone) with a pending forward: all under `ring`."""
    def enc(table: str, column: str, text: str) -> bytes:
        return ring.encrypt(tenant, table, column, text)

    sids = [uuid4() for _ in range(n)]
    await sessions.write_visits(db, [_visit(tenant, sid, ring, f"10.0.0.{i}") for i, sid in enumerate(sids)])
    for i, sid in enumerate(sids):
        email = f"p{i}@example.com"
        await identities.link_identity(db, tenant, sid, "email", ring.blind_index(tenant, "email", email),
                                       enc("identities", "enc", email), AT)
        await events.insert_event(db, tenant, sid, "add_to_cart", enc("events", "props_enc", '{"sku": "A1"}'), AT)
        phone = None if i % 2 else "+420601000000"
        await conversions.insert_conversion(db, ConversionWrite(
            id=uuid4(), tenant_id=tenant, kind="lead", source="api", created_at=AT, external_id=f"e{i}",
            email_enc=enc("conversions", "email_enc", email), email_bidx=ring.blind_index(tenant, "email", email),
            phone_enc=enc("conversions", "phone_enc", phone) if phone else None,
            phone_bidx=ring.blind_index(tenant, "phone", phone) if phone else None,
            name_enc=enc("conversions", "name_enc", "Jan"), message_enc=enc("conversions", "message_enc", "Call"),
            fields_enc=enc("conversions", "fields_enc", '{"budget": "high"}')),
            [ForwardWrite(platform="meta", event_id=f"e{i}:meta", payload_enc=enc("forwards", "payload_enc", "{}"))])
    return sids


async def _blobs(db: asyncpg.Pool, tenant: str) -> list[tuple[str, str, bytes]]:
    found = []
    for table, columns in PII_COLUMNS.items():
        for row in await db.fetch(f"SELECT {', '.join(columns)} FROM {table} WHERE tenant_id = $1", tenant):
            found.extend((table, column, bytes(row[column])) for column in columns if row[column] is not None)
    return found


async def test_a_new_master_secret_rewrites_everything_readable_without_the_old_one(pool8, tenant):
    old = KeyRing(OLD)
    sids = await _seed(pool8, tenant, old, 5)
    bystander = f"{tenant}_other"
    await _seed(pool8, bystander, old, 1)
    # one session hashed its IP without keeping the address (analytics consent only)
    hashed_only = uuid4()
    await sessions.write_visits(pool8, [_visit(tenant, hashed_only, old, "192.0.2.9", encrypt_ip=False)])

    ring = KeyRing(NEW, 2, previous={1: OLD})
    # Before the rotation the new ring still reads the old rows and finds the old links.
    assert [r.session_id for r in await identities.find_identities(
        pool8, tenant, "email", ring.blind_indexes(tenant, "email", "p1@example.com"))] == [sids[1]]

    done = await rotation.rotate_tenant(pool8, tenant, TenantRekey(ring, tenant), batch=2)
    assert done == {"sessions": 6, "identities": 5, "conversions": 5, "events": 5, "forwards": 5}

    only_new = KeyRing(NEW, 2)  # the old secret is gone
    blobs = await _blobs(pool8, tenant)
    assert len(blobs) == 5 * 2 + 5 + (5 * 4 + 3) + 5 + 5
    for table, column, blob in blobs:
        assert blob_version(blob) == 2
        only_new.decrypt(tenant, table, column, blob)
    session = await sessions.get_session(pool8, tenant, sids[3])
    assert only_new.decrypt(tenant, "sessions", "ip_enc", session.ip_enc) == "10.0.0.3"
    assert session.ip_hash == only_new.hash_ip(tenant, "10.0.0.3") and ip_hash_version(session.ip_hash) == 2
    # a hash with no address beside it cannot be made again: it goes with the old key
    assert (await sessions.get_session(pool8, tenant, hashed_only)).ip_hash is None
    # blind indexes under the new key alone find the person
    [link] = await identities.find_identities(pool8, tenant, "email", only_new.blind_index(tenant, "email",
                                                                                           "p1@example.com"))
    assert link.session_id == sids[1] and only_new.decrypt(tenant, "identities", "enc", link.enc) == "p1@example.com"
    found = await conversions.find_for_person(
        pool8, tenant, email_bidx=only_new.blind_index(tenant, "email", "p0@example.com"),
        phone_bidx=only_new.blind_index(tenant, "phone", "+420601000000"))
    assert sorted(c.external_id for c in found) == ["e0", "e2", "e4"]
    # another tenant is not touched
    assert {blob_version(b) for _, _, b in await _blobs(pool8, bystander)} == {1}
    # a second run finds nothing older
    again = await rotation.rotate_tenant(pool8, tenant, TenantRekey(ring, tenant))
    assert set(again.values()) == {0}


async def test_a_version_sharing_the_secret_relabels_hashes_and_keeps_every_address(pool8, tenant):
    """HALO_KEY_VERSION raised without a new secret: only the PII keys change; hashes keep their value."""
    old = KeyRing(OLD)
    hashed_only = uuid4()
    await sessions.write_visits(pool8, [_visit(tenant, hashed_only, old, "192.0.2.9", encrypt_ip=False)])
    ring = KeyRing(OLD, 2)
    await rotation.rotate_tenant(pool8, tenant, TenantRekey(ring, tenant))
    session = await sessions.get_session(pool8, tenant, hashed_only)
    assert session.ip_hash == ring.hash_ip(tenant, "192.0.2.9") == b"\x02" + old.hash_ip(tenant, "192.0.2.9")


async def test_links_indexed_apart_by_two_versions_become_one(pool8, tenant):
    old = KeyRing(OLD)
    ring = KeyRing(NEW, 2, previous={1: OLD})
    sid = uuid4()
    await sessions.write_visits(pool8, [_visit(tenant, sid, old, "10.1.1.1")])
    email = "same@example.com"
    await identities.link_identity(pool8, tenant, sid, "email", old.blind_index(tenant, "email", email),
                                   old.encrypt(tenant, "identities", "enc", email), AT)
    # the proxy, already on the new key, links the same person to the same session again
    later = AT + timedelta(days=1)
    await identities.link_identity(pool8, tenant, sid, "email", ring.blind_index(tenant, "email", email),
                                   ring.encrypt(tenant, "identities", "enc", email), later)
    assert len(await identities.find_identities(pool8, tenant, "email", ring.blind_indexes(tenant, "email",
                                                                                           email))) == 2
    await rotation.rotate_tenant(pool8, tenant, TenantRekey(ring, tenant))
    [link] = await identities.find_identities(pool8, tenant, "email", ring.blind_index(tenant, "email", email))
    assert (link.created_at, link.last_seen_at, link.key_version) == (AT, later, 2)


async def test_rotation_loses_no_concurrent_write(pool8, tenant):
    """Visits written while the rotation runs keep their own (current) values."""
    old = KeyRing(OLD)
    ring = KeyRing(NEW, 2, previous={1: OLD})
    sids = await _seed(pool8, tenant, old, 20)

    async def revisit() -> None:
        for i, sid in enumerate(sids):
            write = _visit(tenant, sid, ring, f"192.168.0.{i}")
            await sessions.write_visits(pool8, [replace(write, is_new=False,
                                                        touch=Touch(at=AT, source="facebook", medium="paid"))])

    await asyncio.gather(rotation.rotate_tenant(pool8, tenant, TenantRekey(ring, tenant), batch=3), revisit())
    only_new = KeyRing(NEW, 2)
    for i, sid in enumerate(sids):
        session = await sessions.get_session(pool8, tenant, sid)
        assert only_new.decrypt(tenant, "sessions", "ip_enc", session.ip_enc) == f"192.168.0.{i}"
        assert session.ip_hash == only_new.hash_ip(tenant, f"192.168.0.{i}")


async def test_a_rewrite_that_does_not_reach_the_version_changes_nothing(pool8, tenant):
    old = KeyRing(OLD)
    await _seed(pool8, tenant, old, 2)
    before = await _blobs(pool8, tenant)

    class Broken(TenantRekey):
        def reencrypt(self, table: str, column: str, blob: bytes) -> bytes:
            return blob

    with pytest.raises(ValueError):
        await rotation.rotate_tenant(pool8, tenant, Broken(KeyRing(NEW, 2, previous={1: OLD}), tenant))
    assert await _blobs(pool8, tenant) == before


def _tenant(tenant_id: str) -> Tenant:
    return Tenant(id=tenant_id, hosts=(f"{tenant_id}.localhost",), upstream="http://127.0.0.1:1")


async def test_the_start_check_refuses_an_older_version_it_cannot_read(pool8, tenant):
    await _seed(pool8, tenant, KeyRing(OLD), 1)
    with pytest.raises(UnreadableKeyVersion, match=r"key version 1 .*HALO_PREVIOUS_SECRET_KEYS as '1:<secret>'"):
        await check_readable(pool8, KeyRing(NEW, 2), [_tenant(tenant)])
    with pytest.raises(UnreadableKeyVersion, match="its own secret"):
        await check_readable(pool8, KeyRing(NEW, 2, previous={1: "ef" * 32}), [_tenant(tenant)])
    ring = KeyRing(NEW, 2, previous={1: OLD})
    await check_readable(pool8, ring, [_tenant(tenant)])
    assert (await rotate(pool8, ring, [_tenant(tenant)]))[tenant]["conversions"] == 1
    await check_readable(pool8, KeyRing(NEW, 2), [_tenant(tenant)])  # nothing old left to read


# -- plans (last: the planner fixture empties the tables) ------------------------------------------------------

PLANS = {
    "sessions": (rotation._SESSIONS_BATCH, {"sessions_pkey"}),
    "identities": (rotation._IDENTITIES_BATCH, {"identities_tenant_key_version"}),
    "conversions": (rotation._CONVERSIONS_BATCH, {"conversions_tenant_pii_key_version"}),
    "events": (rotation._BY_ID_BATCH.format(table="events", column="props_enc"), {"events_pkey"}),
    "forwards": (rotation._BY_ID_BATCH.format(table="forwards", column="payload_enc"), {"forwards_pkey"}),
    "samples": (rotation._SAMPLES, {"identities_tenant_key_version", "conversions_tenant_pii_key_version"}),
}


@pytest.mark.parametrize("name", sorted(PLANS))
async def test_rotation_reads_use_indexes(planner: asyncpg.Connection, name: str) -> None:
    sql, indexes = PLANS[name]
    await assert_indexed(planner, sql, indexes)
