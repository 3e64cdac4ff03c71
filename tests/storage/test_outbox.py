"""The forwarding outbox against a real PostgreSQL: leases, concurrent claimers, retries, dead letters,
requeue, cancellation and the metrics reads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from halo_proxy.storage import conversions, outbox
from halo_proxy.storage.conversions import ConversionWrite
from halo_proxy.storage.outbox import ForwardWrite
from tests.conftest import TestDatabase
from tests.storage.conftest import assert_indexed

T0 = datetime(2026, 5, 3, 12, 0, tzinfo=UTC)
LEASE_S = 30.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(autouse=True)
async def empty_outbox(db_pool: asyncpg.Pool) -> None:
    """Claims see every tenant's rows: each test starts from an empty outbox."""
    await db_pool.execute("TRUNCATE forward_attempts, forwards, conversions")


async def add(
    db: asyncpg.Pool,
    n: int = 1,
    *,
    tenant: str = "acme",
    platforms: Sequence[str] = ("meta",),
    created_at: datetime = T0,
    **forward: object,
) -> list[UUID]:
    """n conversions, each with one forward per platform; returns the conversion ids."""
    ids = []
    for _ in range(n):
        cid = uuid4()
        await conversions.insert_conversion(
            db,
            ConversionWrite(id=cid, tenant_id=tenant, kind="lead", source="api", created_at=created_at),
            [
                ForwardWrite(platform=p, event_id=f"{cid}:{p}", payload_enc=b"\x01event", **forward)  # type: ignore[arg-type]
                for p in platforms
            ],
        )
        ids.append(cid)
    return ids


async def forward_ids(db: asyncpg.Pool, conversion_ids: Sequence[UUID], tenant: str = "acme") -> list[int]:
    return [r.id for r in await outbox.forwards_for_conversions(db, tenant, conversion_ids)]


async def test_claim_leases_due_rows_oldest_first(db_pool: asyncpg.Pool) -> None:
    late = await add(db_pool, created_at=at(-10))
    early = await add(db_pool, created_at=at(-60))
    future = await add(db_pool, created_at=at(60))

    claimed = await outbox.claim(db_pool, "w1", 10, LEASE_S, T0)
    assert [r.conversion_id for r in claimed] == [early[0], late[0]]  # the future row is not due
    for row in claimed:
        assert (row.status, row.attempts, row.locked_by, row.locked_until) == ("pending", 1, "w1", at(LEASE_S))
        assert row.payload_enc == b"\x01event"
        assert row.event_id == f"{row.conversion_id}:meta"
    # leased rows are not claimed again while the lease runs
    assert await outbox.claim(db_pool, "w2", 10, LEASE_S, at(1)) == []
    assert await outbox.claim(db_pool, "w2", 10, LEASE_S, at(LEASE_S)) == []
    # later the future row is due, and the first two leases have run out
    again = await outbox.claim(db_pool, "w2", 10, LEASE_S, at(60))
    assert [(r.conversion_id, r.attempts) for r in again] == [(early[0], 2), (late[0], 2), (future[0], 1)]


async def test_claim_respects_limit_and_platform(db_pool: asyncpg.Pool) -> None:
    await add(db_pool, 3, platforms=("meta", "ga4", "tiktok"))
    assert len(await outbox.claim(db_pool, "w1", 2, LEASE_S, T0)) == 2
    ga4 = await outbox.claim(db_pool, "w1", 10, LEASE_S, T0, platform="ga4")
    assert {r.platform for r in ga4} <= {"ga4"} and len(ga4) >= 2
    assert await outbox.claim(db_pool, "w1", 0, LEASE_S, T0) == []
    with pytest.raises(ValueError):
        await outbox.claim(db_pool, "w1", 1, LEASE_S, T0, platform="bing")
    with pytest.raises(ValueError):
        await outbox.claim(db_pool, "w1", 1, 0, T0)


async def test_concurrent_claimers_never_share_a_row(db_pool: asyncpg.Pool, database: TestDatabase) -> None:
    total, workers, batch = 240, 8, 7
    await add(db_pool, total // 2, platforms=("meta", "ga4"))
    conns = [await asyncpg.connect(database.dsn) for _ in range(workers)]
    barrier = asyncio.Barrier(workers)

    async def drain(conn: asyncpg.Connection, worker: str) -> list[int]:
        got: list[int] = []
        await barrier.wait()
        while rows := await outbox.claim(conn, worker, batch, LEASE_S, T0):
            got.extend(r.id for r in rows)
        return got

    try:
        results = await asyncio.gather(*(drain(c, f"w{i}") for i, c in enumerate(conns)))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    claimed = [i for got in results for i in got]
    assert len(claimed) == len(set(claimed)) == total
    assert sum(1 for got in results if got) > 1  # the work was actually shared
    assert await db_pool.fetchval("SELECT max(attempts) FROM forwards") == 1


async def test_expired_lease_is_claimed_again_and_the_old_worker_cannot_finish_it(db_pool: asyncpg.Pool) -> None:
    await add(db_pool)
    [first] = await outbox.claim(db_pool, "killed", 10, LEASE_S, T0)
    # the worker dies mid-send; once the lease has expired another takes the row, same event id
    assert await outbox.claim(db_pool, "w2", 10, LEASE_S, at(LEASE_S)) == []  # lease still runs at its end
    [again] = await outbox.claim(db_pool, "w2", 10, LEASE_S, at(LEASE_S + 1))
    assert (again.id, again.event_id, again.attempts, again.locked_by) == (first.id, first.event_id, 2, "w2")

    assert await outbox.mark_sent(db_pool, [first.id], "killed", at(LEASE_S + 2)) == 0
    assert await outbox.mark_dead(db_pool, first.id, "killed", "http_4xx") == 0
    assert await outbox.mark_retry(db_pool, first.id, "killed", at(100), "timeout") == 0
    row = await outbox.get_forward(db_pool, first.id)
    assert row is not None and (row.status, row.locked_by) == ("pending", "w2")

    assert await outbox.mark_sent(db_pool, [first.id], "w2", at(LEASE_S + 3)) == 1
    row = await outbox.get_forward(db_pool, first.id)
    assert row is not None
    assert (row.status, row.sent_at, row.locked_by, row.locked_until) == ("sent", at(LEASE_S + 3), None, None)
    assert await outbox.claim(db_pool, "w3", 10, LEASE_S, at(1000)) == []


async def test_a_late_finish_counts_when_nobody_took_the_row_over(db_pool: asyncpg.Pool) -> None:
    await add(db_pool)
    [row] = await outbox.claim(db_pool, "slow", 10, LEASE_S, T0)
    assert await outbox.mark_sent(db_pool, row.id, "slow", at(LEASE_S * 3)) == 1
    assert await outbox.mark_sent(db_pool, row.id, "slow", at(LEASE_S * 3)) == 0  # already sent


async def test_retry_waits_for_its_time(db_pool: asyncpg.Pool) -> None:
    await add(db_pool, 2)
    rows = await outbox.claim(db_pool, "w1", 10, LEASE_S, T0)
    ids = [r.id for r in rows]
    assert await outbox.mark_retry(db_pool, ids, "w1", at(60), "HTTP 503", reason="http_5xx", now=at(1)) == 2

    [row] = [r for r in await outbox.list_forwards(db_pool, "pending") if r.id == ids[0]]
    assert (row.next_attempt_at, row.last_error, row.reason) == (at(60), "HTTP 503", "http_5xx")
    assert (row.locked_by, row.locked_until, row.updated_at, row.attempts) == (None, None, at(1), 1)

    assert await outbox.claim(db_pool, "w1", 10, LEASE_S, at(59)) == []
    again = await outbox.claim(db_pool, "w2", 10, LEASE_S, at(60))
    assert sorted(r.id for r in again) == sorted(ids)
    assert {r.attempts for r in again} == {2}
    assert await outbox.mark_sent(db_pool, ids, "w2", at(61)) == 2
    sent = await outbox.get_forward(db_pool, ids[0])
    assert sent is not None and (sent.status, sent.last_error, sent.reason) == ("sent", None, None)


async def test_dead_letters_and_requeue(db_pool: asyncpg.Pool) -> None:
    meta_conv = await add(db_pool, platforms=("meta",))
    ga4_conv = await add(db_pool, platforms=("ga4",))
    other_conv = await add(db_pool, tenant="other", platforms=("meta",))
    rows = await outbox.claim(db_pool, "w1", 10, LEASE_S, T0)
    assert len(rows) == 3
    for row in rows:
        assert await outbox.mark_dead(db_pool, row.id, "w1", "meta_code_100", "Invalid parameter", now=at(1)) == 1

    dead = await outbox.list_forwards(db_pool, "dead")
    assert len(dead) == 3 and dead == sorted(dead, key=lambda r: -r.id)  # newest first
    assert {(r.reason, r.last_error) for r in dead} == {("meta_code_100", "Invalid parameter")}
    assert [r.conversion_id for r in await outbox.list_forwards(db_pool, "dead", "other")] == other_conv
    assert [r.conversion_id for r in await outbox.list_forwards(db_pool, "dead", platform="ga4")] == ga4_conv
    assert len(await outbox.list_forwards(db_pool, "dead", limit=1)) == 1
    assert len(await outbox.list_forwards(db_pool)) == 3
    assert await outbox.claim(db_pool, "w1", 10, LEASE_S, at(1000)) == []
    assert await outbox.count_by_status(db_pool) == {"dead": 3}
    assert await outbox.count_by_status(db_pool, "other") == {"dead": 1}

    # requeue by id, then one tenant, then the rest
    [meta_id] = await forward_ids(db_pool, meta_conv)
    assert await outbox.requeue(db_pool, None, ids=[meta_id], now=at(10)) == 1
    assert await outbox.requeue(db_pool, "other", now=at(10)) == 1
    row = await outbox.get_forward(db_pool, meta_id)
    assert row is not None
    assert (row.status, row.attempts, row.next_attempt_at, row.reason) == ("pending", 0, at(10), None)
    assert row.last_error == "Invalid parameter"  # kept for the operator
    assert await outbox.requeue(db_pool, None, platform="ga4", now=at(10)) == 1
    assert await outbox.requeue(db_pool, None, now=at(10)) == 0

    again = await outbox.claim(db_pool, "w2", 10, LEASE_S, at(10))
    assert len(again) == 3 and {r.attempts for r in again} == {1}
    with pytest.raises(ValueError):
        await outbox.requeue(db_pool, None, status="cancelled")
    with pytest.raises(ValueError):
        await outbox.list_forwards(db_pool, "lost")


async def test_requeue_pending_skips_the_backoff_but_not_a_live_lease(db_pool: asyncpg.Pool) -> None:
    await add(db_pool, 2)
    a, b = await outbox.claim(db_pool, "w1", 10, LEASE_S, T0)
    await outbox.mark_retry(db_pool, a.id, "w1", at(3600), "timeout", now=at(1))
    assert await outbox.requeue(db_pool, None, status="pending", now=at(2)) == 1  # b is leased
    [row] = await outbox.claim(db_pool, "w2", 10, LEASE_S, at(2))
    assert (row.id, row.attempts) == (a.id, 1)


async def test_skipped(db_pool: asyncpg.Pool) -> None:
    gated = await add(db_pool, status="skipped", reason="no_consent")
    [row] = await outbox.list_forwards(db_pool, "skipped")
    assert (row.conversion_id, row.reason, row.attempts) == (gated[0], "no_consent", 0)

    await add(db_pool)
    [claimed] = await outbox.claim(db_pool, "w1", 10, LEASE_S, T0)
    assert await outbox.mark_skipped(db_pool, claimed.id, "w1", "gpc", now=at(1)) == 1
    assert {r.reason for r in await outbox.list_forwards(db_pool, "skipped")} == {"no_consent", "gpc"}
    assert await outbox.requeue(db_pool, None, now=at(2)) == 0  # skipped is final
    assert await outbox.claim(db_pool, "w1", 10, LEASE_S, at(1000)) == []


async def test_cancel_for_erasure(db_pool: asyncpg.Pool) -> None:
    person = await add(db_pool, 2, platforms=("meta", "ga4"))
    bystander = await add(db_pool, platforms=("meta", "ga4"))
    other_tenant = await add(db_pool, tenant="other")
    # person's first conversion: meta sent, ga4 dead; second: meta leased right now, ga4 pending
    rows = {(r.conversion_id, r.platform): r for r in await outbox.claim(db_pool, "w1", 10, LEASE_S, T0)}
    await outbox.mark_sent(db_pool, rows[person[0], "meta"].id, "w1", at(1))
    await outbox.mark_dead(db_pool, rows[person[0], "ga4"].id, "w1", "http_4xx")
    await outbox.mark_retry(db_pool, rows[person[1], "ga4"].id, "w1", at(60), "timeout")
    in_flight = rows[person[1], "meta"]

    assert await outbox.cancel_for_conversions(db_pool, "other", person) == 0  # not that tenant's rows
    assert await outbox.cancel_for_conversions(db_pool, "acme", person, now=at(2)) == 3
    assert await outbox.cancel_for_conversions(db_pool, "acme", person, now=at(3)) == 0  # repeating is safe
    assert await outbox.cancel_for_conversions(db_pool, "acme", []) == 0

    mine = await outbox.forwards_for_conversions(db_pool, "acme", person)
    assert sorted((r.status, r.reason) for r in mine) == [
        ("cancelled", "erased"),
        ("cancelled", "erased"),
        ("cancelled", "erased"),
        ("sent", None),
    ]
    assert all(r.payload_enc is None for r in mine)
    # the worker that held a lease cannot resurrect the row, and nothing brings it back
    assert await outbox.mark_sent(db_pool, in_flight.id, "w1", at(4)) == 0
    assert await outbox.requeue(db_pool, None, now=at(5)) == 0
    assert await outbox.requeue(db_pool, None, status="pending", now=at(5)) == 0

    others = await outbox.forwards_for_conversions(db_pool, "acme", bystander)
    others += await outbox.forwards_for_conversions(db_pool, "other", other_tenant)
    assert {r.status for r in others} == {"pending"} and all(r.payload_enc for r in others)


async def test_depth_and_age(db_pool: asyncpg.Pool) -> None:
    assert await outbox.depth(db_pool) == {}
    assert await outbox.oldest_pending_age(db_pool, T0) == 0.0
    await add(db_pool, 2, platforms=("meta", "ga4"), created_at=at(-90))
    await add(db_pool, 1, platforms=("meta",), created_at=at(-30))
    assert await outbox.depth(db_pool) == {"meta": 3, "ga4": 2}
    assert await outbox.oldest_pending_age(db_pool, T0) == 90.0

    rows = await outbox.claim(db_pool, "w1", 10, LEASE_S, T0, platform="ga4")
    await outbox.mark_sent(db_pool, [r.id for r in rows], "w1", T0)
    assert await outbox.depth(db_pool) == {"meta": 3}


async def test_get_forward_and_purge(db_pool: asyncpg.Pool) -> None:
    conv = await add(db_pool, 2)
    [fid, pending_id] = sorted(await forward_ids(db_pool, conv))  # claimed in id order
    assert await outbox.get_forward(db_pool, fid, tenant_id="other") is None
    assert await outbox.get_forward(db_pool, 10**12) is None
    found = await outbox.get_forward(db_pool, fid, tenant_id="acme")
    assert found is not None and found.tenant_id == "acme"

    [claimed] = await outbox.claim(db_pool, "w1", 1, LEASE_S, T0)
    assert claimed.id == fid
    assert await outbox.mark_sent(db_pool, fid, "w1", at(1)) == 1
    assert await outbox.purge_finished(db_pool, "acme", at(1)) == 0  # updated at that instant: kept
    assert await outbox.purge_finished(db_pool, "other", at(100)) == 0
    assert await outbox.purge_finished(db_pool, "acme", at(100)) == 1  # the pending row stays
    assert [r.id for r in await outbox.list_forwards(db_pool)] == [pending_id]


# -- plans --------------------------------------------------------------------------------------------------------


PLANS = {
    "claim": (outbox._CLAIM_ANY, {"forwards_pending_due", "forwards_pkey"}),
    "claim_platform": (outbox._CLAIM_PLATFORM, {"forwards_pending_platform_due", "forwards_pkey"}),
    "dead_letters_of_a_tenant": (outbox._list_query("dead", "acme", None, 100)[0], {"forwards_status_tenant"}),
    "forwards_for_conversions": (outbox._FOR_CONVERSIONS, {"forwards_tenant_conversion_platform"}),
}


async def test_outbox_queries_use_indexes(planner: asyncpg.Connection) -> None:  # noqa: F811
    # one test for all statements: each test starts by emptying the outbox, and seeding takes a moment
    for name, (sql, indexes) in PLANS.items():
        try:
            await assert_indexed(planner, sql, indexes)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from None


async def test_list_shows_dead_letters_then_the_oldest_pending_then_the_rest(db_pool: asyncpg.Pool) -> None:
    old = await add(db_pool, created_at=at(-300))
    new = await add(db_pool, created_at=at(-10))
    dead = await add(db_pool, created_at=at(-5))
    done = await add(db_pool, created_at=at(-100))
    rows = await outbox.claim(db_pool, "w", 10, LEASE_S, T0)
    by_conversion = {r.conversion_id: r.id for r in rows}
    await outbox.mark_dead(db_pool, by_conversion[dead[0]], "w", "auth", now=T0)
    await outbox.mark_sent(db_pool, by_conversion[done[0]], "w", T0)
    await outbox.mark_retry(db_pool, [by_conversion[old[0]], by_conversion[new[0]]], "w", at(5), "later", now=T0)
    listed = [r.conversion_id for r in await outbox.list_forwards(db_pool, None, "acme")]
    assert listed == [dead[0], old[0], new[0], done[0]]


async def test_an_outcome_writes_its_ledger_entry_only_for_the_rows_it_changed(db_pool: asyncpg.Pool) -> None:
    ids = await forward_ids(db_pool, await add(db_pool, 2))
    await outbox.claim(db_pool, "w", 10, LEASE_S, T0)
    assert await outbox.begin_send(db_pool, ids, "w", at(20), T0) == set(ids)
    assert all(r.in_doubt for r in await outbox.list_forwards(db_pool, "pending", "acme"))
    await outbox.release(db_pool, "w", T0)  # the second row is another worker's now
    [second] = await outbox.claim(db_pool, "other", 1, LEASE_S, at(1))
    ledger = outbox.Ledger(at=at(2), outcome="sent", reason="ok", http_status=200, worker="w",
                           consents={ids[0]: True, ids[1]: False})
    assert await outbox.mark_sent(db_pool, ids, "w", at(2), ledger=ledger) == 0  # "w" holds neither now
    assert await outbox.attempts_for(db_pool, ids) == []
    assert await outbox.mark_sent(db_pool, ids, "other", at(2), ledger=ledger) == 1
    [entry] = await outbox.attempts_for(db_pool, ids)
    assert (entry.forward_id, entry.outcome, entry.http_status, entry.attempt) == (second.id, "sent", 200, 2)
    assert entry.consent_marketing is (ids.index(second.id) == 0)
    row = await outbox.get_forward(db_pool, second.id)
    assert row is not None and not row.in_doubt and row.status == "sent"


async def test_a_release_writes_its_ledger_in_the_same_statement_saying_whether_a_send_was_cut(
        db_pool: asyncpg.Pool) -> None:
    ids = await forward_ids(db_pool, await add(db_pool, 3))
    await outbox.claim(db_pool, "host:7:a", 2, LEASE_S, T0)
    [other] = await outbox.claim(db_pool, "host:8:b", 1, LEASE_S, T0)
    mine = sorted(i for i in ids if i != other.id)
    assert await outbox.begin_send(db_pool, mine[:1], "host:7:a", at(20), T0) == {mine[0]}
    ledger = outbox.Release("worker_died", cut="died mid-send", clean="died before", worker="host:7")
    released = await outbox.release_process(db_pool, "host", 7, at(1), ledger=ledger)
    assert sorted(r.id for r in released) == mine and all(r.locked_by is None for r in released)
    entries = {a.forward_id: a for a in await outbox.attempts_for(db_pool, ids)}
    assert set(entries) == set(mine)  # the other process's row is neither released nor in the ledger
    assert [(entries[i].outcome, entries[i].reason, entries[i].detail, entries[i].worker, entries[i].attempt,
             entries[i].at) for i in mine] == [("released", "worker_died", "died mid-send", "host:7", 1, at(1)),
                                              ("released", "worker_died", "died before", "host:7", 1, at(1))]
    # Taken again at once, the next attempt's entry comes after the release's: the ledger reads in order.
    again = await outbox.claim(db_pool, "host:9:c", 10, LEASE_S, at(2))
    assert {r.id for r in again} == set(mine) and all(r.in_doubt == (r.id == mine[0]) for r in again)
    await outbox.mark_sent(db_pool, mine, "host:9:c", at(3), ledger=outbox.Ledger(at=at(3), outcome="sent"))
    for i in mine:
        assert [a.outcome for a in await outbox.attempts_for(db_pool, [i])] == ["released", "sent"]
    # A worker's own release, without a ledger, writes none; and nothing held releases nothing.
    assert await outbox.release(db_pool, "host:8:b", at(4)) and len(await outbox.attempts_for(db_pool, ids)) == 4
    assert await outbox.release(db_pool, "host:8:b", at(5), ledger=ledger) == []


async def test_a_release_whose_ledger_is_refused_still_releases(db_pool: asyncpg.Pool) -> None:
    ids = await forward_ids(db_pool, await add(db_pool, 2))
    await outbox.claim(db_pool, "host:7:a", 10, LEASE_S, T0)
    # The ledger refuses every row (as a full disk or a broken constraint would): the release must not wait for it.
    await db_pool.execute("""
        CREATE FUNCTION refuse_ledger() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'ledger refused'; END $$;
        CREATE TRIGGER refuse_ledger BEFORE INSERT ON forward_attempts FOR EACH ROW EXECUTE FUNCTION refuse_ledger();
    """)
    try:
        released = await outbox.release_process(db_pool, "host", 7, at(1), ledger=outbox.Release(
            "worker_died", cut="mid-send", clean="before"))
    finally:
        await db_pool.execute("DROP TRIGGER refuse_ledger ON forward_attempts; DROP FUNCTION refuse_ledger();")
    assert sorted(r.id for r in released) == sorted(ids)
    assert all(r.locked_by is None for r in await outbox.list_forwards(db_pool, "pending", "acme"))
    assert await outbox.attempts_for(db_pool, ids) == []
    assert {r.id for r in await outbox.claim(db_pool, "host:8:b", 10, LEASE_S, at(2))} == set(ids)  # due at once


async def test_the_heartbeat_renews_only_the_rows_it_names(db_pool: asyncpg.Pool) -> None:
    ids = await forward_ids(db_pool, await add(db_pool, 2))
    await outbox.claim(db_pool, "w", 10, LEASE_S, T0)
    # One row's outcome could not be written: the worker no longer names it, so its lease runs out.
    assert await outbox.renew_leases(db_pool, "w", at(100), [ids[0]]) == 1
    assert await outbox.renew_leases(db_pool, "other", at(100), ids) == 0
    again = await outbox.claim(db_pool, "w2", 10, LEASE_S, at(LEASE_S + 1))
    assert [r.id for r in again] == [ids[1]]
