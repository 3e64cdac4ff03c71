"""Group commit of conversions (`storage.conversion_writer`): many conversions per statement, each caller answered
exactly as `insert_conversion` answers it, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import timedelta, timezone
from uuid import uuid4

import asyncpg
import orjson
import pytest

from halo_proxy.metrics import Metrics
from halo_proxy.storage import conversions, identities, outbox, sessions
from halo_proxy.storage.conversion_writer import ConversionWriter
from halo_proxy.storage.conversions import LinkWrite
from halo_proxy.storage.errors import StorageError, StorageUnavailable
from halo_proxy.storage.outbox import ForwardWrite
from tests.conftest import TestDatabase
from tests.storage.test_conversions import DAY3, _visit, attribution, forwards, lead

_tenants = itertools.count(1)


@pytest.fixture
def tenant() -> str:
    return f"batch_tenant_{next(_tenants)}"


def link(sid, bidx: bytes = b"E" * 16, at=DAY3, enc: bytes = b"\x01email") -> LinkWrite:
    return LinkWrite(session_id=sid, kind="email", bidx=bidx, enc=enc, at=at)


async def test_conversions_arriving_together_share_a_statement(db_pool: asyncpg.Pool, tenant: str) -> None:
    """Sixty concurrent conversions: each created with its own row, forwards, credits and link, in fewer
    statements than conversions; each caller's row is what the database holds."""
    sid = uuid4()
    await sessions.write_visits(db_pool, [_visit(tenant, sid, b"", b"")])
    metrics = Metrics()
    writer = ConversionWriter(db_pool, metrics)
    n = 60
    writes = [lead(tenant, external_id=f"e-{i}", attribution=attribution(sid)) for i in range(n)]
    results = await asyncio.gather(*(
        writer.insert(w, forwards("meta", "ga4"), [link(sid, bidx=bytes([i]) * 16)]) for i, w in enumerate(writes)))
    assert [created for _, created in results] == [True] * n
    assert [record.id for record, _ in results] == [w.id for w in writes]
    assert 1 <= writer.batches < n
    sample = metrics.registry.get_sample_value
    assert sample("halo_conversion_batch_size_count") == writer.batches
    assert sample("halo_conversion_batch_size_sum") == n
    assert sample("halo_conversions_stored_alone_total", {"reason": "repeat"}) == 0
    for w, (record, _) in zip(writes, results, strict=True):
        assert await conversions.get_conversion(db_pool, tenant, w.id) == record
    assert await db_pool.fetchval("SELECT count(*) FROM forwards WHERE tenant_id = $1", tenant) == 2 * n
    one = await db_pool.fetchval("SELECT count(*) FROM conversion_credits WHERE conversion_id = $1", writes[0].id)
    assert one > 0
    assert await db_pool.fetchval("SELECT count(*) FROM conversion_credits WHERE tenant_id = $1", tenant) == one * n
    assert await db_pool.fetchval("SELECT count(*) FROM identities WHERE tenant_id = $1", tenant) == n
    assert await db_pool.fetchval(
        "SELECT count(*) FROM conversions WHERE tenant_id = $1 AND credits_version IS NULL", tenant) == 0


async def test_a_batch_equals_one_by_one(db_pool: asyncpg.Pool, tenant: str) -> None:
    """The batch statement stores exactly what the single insert stores (every column, forwards, credits)."""
    sid = uuid4()
    single, batched = (lead(tenant, external_id=x, attribution=attribution(sid), items=[{"sku": "A"}],
                            fields_enc=b"\x01f") for x in ("one", "two"))
    a, _ = await conversions.insert_conversion(db_pool, single, forwards("tiktok"))
    [b] = await conversions.insert_conversions(db_pool, [(batched, forwards("tiktok"), ())])
    assert b is not None
    assert replace(b, id=a.id, external_id=a.external_id) == a

    async def children(conversion_id) -> tuple[list, list]:
        fwd = await db_pool.fetch("SELECT platform, event_id, status, reason, payload_enc, attempts, next_attempt_at "
                                  "FROM forwards WHERE conversion_id = $1", conversion_id)
        cred = await db_pool.fetch("SELECT model, kind, source, medium, campaign, channel, conversions, revenue, "
                                   "currency, days_to_convert, created_at FROM conversion_credits "
                                   "WHERE conversion_id = $1 ORDER BY model, source, campaign", conversion_id)
        return [tuple(r) for r in fwd], [tuple(r) for r in cred]

    assert await children(a.id) == await children(b.id)


async def test_one_idempotency_key_twice_in_a_batch_creates_one(db_pool: asyncpg.Pool, tenant: str) -> None:
    writer = ConversionWriter(db_pool)
    first, second = lead(tenant, external_id="dup"), lead(tenant, external_id="dup")
    (a, a_created), (b, b_created) = await asyncio.gather(
        writer.insert(first, forwards("meta")), writer.insert(second, forwards("meta")))
    assert (a_created, b_created) == (True, False)
    assert a.id == b.id == first.id
    assert writer.batches == 1
    assert await db_pool.fetchval("SELECT count(*) FROM forwards WHERE tenant_id = $1", tenant) == 1


async def test_a_repeated_key_returns_the_first_and_links_nothing(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    await sessions.write_visits(db_pool, [_visit(tenant, sid, b"", b"")])
    metrics = Metrics()
    writer = ConversionWriter(db_pool, metrics)
    first, _ = await writer.insert(lead(tenant, external_id="k"), forwards("meta"))
    again, created = await writer.insert(lead(tenant, external_id="k"), forwards("meta"), [link(sid)])
    assert not created and again == first
    assert metrics.registry.get_sample_value("halo_conversions_stored_alone_total", {"reason": "repeat"}) == 1
    assert await db_pool.fetchval("SELECT count(*) FROM forwards WHERE tenant_id = $1", tenant) == 1
    assert await identities.find_identities(db_pool, tenant, "email", b"E" * 16) == []


async def test_links_follow_the_single_insert_rules(db_pool: asyncpg.Pool, tenant: str) -> None:
    """One link written once when two conversions name it (the latest sighting, the first creation kept); a
    session deleted meanwhile gets no link and fails nothing."""
    sid, gone = uuid4(), uuid4()
    await sessions.write_visits(db_pool, [_visit(tenant, sid, b"", b""), _visit(tenant, gone, b"", b"")])
    await sessions.delete_sessions(db_pool, tenant, [gone])
    early = DAY3.replace(hour=1)
    rows = await conversions.insert_conversions(db_pool, [
        (lead(tenant, external_id="a"), (), [link(sid, at=early, enc=b"\x01old")]),
        (lead(tenant, external_id="b"), (), [link(sid, enc=b"\x01new")]),
        (lead(tenant, external_id="c"), (), [link(gone)]),
    ])
    assert all(r is not None for r in rows)
    [kept] = await identities.find_identities(db_pool, tenant, "email", b"E" * 16)
    assert (kept.session_id, kept.created_at, kept.last_seen_at, kept.enc) == (sid, early, DAY3, b"\x01new")


async def test_a_refused_row_fails_only_its_own_caller(db_pool: asyncpg.Pool, tenant: str) -> None:
    metrics = Metrics()
    writer = ConversionWriter(db_pool, metrics)
    good = [lead(tenant, external_id=f"g{i}") for i in range(5)]
    broken = ForwardWrite(platform="meta", event_id=None, payload_enc=b"\x01p")  # type: ignore[arg-type]
    outcomes = await asyncio.gather(
        *(writer.insert(w, forwards("meta")) for w in good[:3]),
        writer.insert(lead(tenant, external_id="bad"), [broken]),
        *(writer.insert(w, forwards("meta")) for w in good[3:]),
        return_exceptions=True)
    assert isinstance(outcomes[3], StorageError)
    assert [o[1] for i, o in enumerate(outcomes) if i != 3] == [True] * 5
    assert await db_pool.fetchval("SELECT count(*) FROM conversions WHERE tenant_id = $1", tenant) == 5
    assert await conversions.find_by_external_id(db_pool, tenant, "lead", "bad") is None
    assert len(await outbox.forwards_for_conversions(db_pool, tenant, [w.id for w in good])) == 5
    assert metrics.registry.get_sample_value("halo_conversions_stored_alone_total", {"reason": "refused"}) >= 1


async def test_an_unreachable_database_fails_every_caller(database: TestDatabase, tenant: str) -> None:
    from halo_proxy.storage.db import create_pool

    pool = await create_pool(database.dsn, min_size=1, max_size=2)
    writer = ConversionWriter(pool)
    await pool.close()
    outcomes = await asyncio.gather(*(writer.insert(lead(tenant, external_id=f"u{i}")) for i in range(3)),
                                    return_exceptions=True)
    assert all(isinstance(o, StorageUnavailable) for o in outcomes), outcomes


async def test_a_caller_that_goes_away_does_not_lose_its_conversion(db_pool: asyncpg.Pool, tenant: str) -> None:
    """A request cancelled while its batch is in the database (its client disconnected): the conversion is
    stored, the batch's other callers answered; close() waits for what is in flight."""
    writer = ConversionWriter(db_pool)
    gone, other = lead(tenant, external_id="gone"), lead(tenant, external_id="other")
    task = asyncio.ensure_future(writer.insert(gone))
    kept = asyncio.ensure_future(writer.insert(other))
    await asyncio.sleep(0)  # both queued, the batch started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await kept)[1] is True
    await writer.close()
    assert await conversions.get_conversion(db_pool, tenant, gone.id) is not None


def test_a_link_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        asyncio.run(conversions.insert_conversion(None, lead("t"), (),  # type: ignore[arg-type]
                                                  [LinkWrite(session_id=uuid4(), kind="fax", bidx=b"x", enc=b"y",
                                                             at=DAY3)]))


async def test_a_key_locked_elsewhere_holds_up_only_its_own_repeat(db_pool: asyncpg.Pool, database: TestDatabase,
                                                                    tenant: str) -> None:
    """Another transaction holds the row of key "k" (an erasure, a key rotation): its repeat waits for it, while
    the conversions batched beside it, another tenant's among them, are stored and answered meanwhile."""
    writer = ConversionWriter(db_pool)
    first, _ = await writer.insert(lead(tenant, external_id="k"))
    blocker = await asyncpg.connect(database.dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("UPDATE conversions SET form_type = 'held' WHERE id = $1", first.id)
        repeat = asyncio.ensure_future(writer.insert(lead(tenant, external_id="k")))
        others = [lead(tenant, external_id="x"), lead(f"{tenant}_other", external_id="y")]
        stored = await asyncio.wait_for(asyncio.gather(*(writer.insert(w) for w in others)), 20)
        assert [created for _, created in stored] == [True, True]
        assert not repeat.done()  # still waiting for the lock, on its own
        await tx.rollback()
        again, created = await asyncio.wait_for(repeat, 20)
        assert not created and again.id == first.id
    finally:
        await blocker.close()


async def test_an_unexpected_error_fails_only_its_own_caller(db_pool: asyncpg.Pool, tenant: str) -> None:
    """A write that cannot even be encoded (a value JSON has no form for) fails alone; the conversions in its batch
    and those queued behind it (beyond one batch) are stored and answered."""
    writer = ConversionWriter(db_pool, max_batch=3)
    bad = lead(tenant, external_id="bad", items=[{"price": object()}])
    good = [lead(tenant, external_id=f"g{i}") for i in range(4)]
    outcomes = await asyncio.wait_for(asyncio.gather(
        writer.insert(good[0]), writer.insert(bad), writer.insert(good[1]), writer.insert(good[2]),
        writer.insert(good[3]), return_exceptions=True), 20)
    assert isinstance(outcomes[1], Exception) and not isinstance(outcomes[1], asyncio.CancelledError)
    assert [o[1] for i, o in enumerate(outcomes) if i != 1] == [True] * 4
    await writer.close()
    assert writer._queue == [] and writer._running is None and not writer._alone


async def test_the_first_answer_is_the_answer_a_repeat_gets(db_pool: asyncpg.Pool, tenant: str) -> None:
    """What a batch returns is the row as stored (amounts to the column's scale, times in UTC, JSON as the database
    keeps it): a re-delivery reads back exactly the same."""
    writer = ConversionWriter(db_pool)
    sid = uuid4()
    write = lead(tenant, external_id="same", value="12.5", occurred_at=DAY3.astimezone(timezone(timedelta(hours=2))),
                 items=[{"z": 1, "a": 2}], attribution=attribution(sid),
                 response={"id": "r", "match_type": "session", "attribution": {"z": 1, "a": 2}})
    record, created = await writer.insert(write)
    again, repeated = await writer.insert(replace(write, id=uuid4()))
    assert (created, repeated) == (True, False)
    assert orjson.dumps(record.response) == orjson.dumps(again.response)
    assert (str(record.value), str(record.occurred_at)) == (str(again.value), str(again.occurred_at))
    assert record == again


async def test_two_processes_batching_the_same_keys_create_each_once(database: TestDatabase, tenant: str) -> None:
    """Two writers on pools of their own (two proxy processes), each sent the same thirty idempotency keys at
    once, in opposite orders: every key is created exactly once with one set of forwards, every caller answered
    with that one row."""
    from halo_proxy.storage.db import create_pool

    pools = [await create_pool(database.dsn, min_size=1, max_size=4) for _ in range(2)]
    try:
        writers = [ConversionWriter(pool) for pool in pools]
        keys = [f"both-{i}" for i in range(30)]
        calls = [writers[0].insert(lead(tenant, external_id=k), forwards("meta", "ga4")) for k in keys]
        calls += [writers[1].insert(lead(tenant, external_id=k), forwards("meta", "ga4")) for k in reversed(keys)]
        results = await asyncio.wait_for(asyncio.gather(*calls), 60)
        by_key: dict[str, set] = {}
        for record, _ in results:
            by_key.setdefault(record.external_id, set()).add(record.id)
        assert all(len(ids) == 1 for ids in by_key.values()) and len(by_key) == 30
        assert sum(created for _, created in results) == 30
        count = pools[0].fetchval
        assert await count("SELECT count(*) FROM conversions WHERE tenant_id = $1", tenant) == 30
        assert await count("SELECT count(*) FROM forwards WHERE tenant_id = $1", tenant) == 60
    finally:
        for pool in pools:
            await pool.close()
