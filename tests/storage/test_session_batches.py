"""Batches that mix new sessions, sessions that already exist, repeats and returning visitors give what writing
each page view on its own gives; a batch written on a caller's connection joins its transaction."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from halo_proxy.storage import sessions
from halo_proxy.storage.sessions import SessionWrite
from halo_proxy.tracking.models import Consent, Device, Geo, Touch

DAY1 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
GOOGLE = Touch(at=DAY2, source="google", medium="cpc", channel="Paid Search", landing_path="/a",
               click_ids=(("gclid", "g1"),))
FACEBOOK = Touch(at=DAY3, source="facebook", medium="social", channel="Organic Social", landing_path="/b",
                 click_ids=(("fbclid", "f1"),))
BING = Touch(at=DAY1, source="bing", medium="cpc", channel="Paid Search", landing_path="/c")
GRANTED = Consent(analytics=True, marketing=True, explicit=True, source="cookieyes")

_tenants = itertools.count(1)


@pytest.fixture
def tenant() -> str:
    return f"batch_{next(_tenants)}"


def visit(tenant: str, sid: UUID, touch: Touch, *, is_new: bool, **changes: object) -> SessionWrite:
    write = SessionWrite(tenant_id=tenant, session_id=sid, is_new=is_new, touch=touch,
                         device=Device("mobile", "Chrome Mobile", "Android"), geo=Geo("CZ", None, None),
                         consent=GRANTED, ip_hash=b"h", ip_enc=b"e", user_agent_enc=b"u", fbp="fb.1.1.1", at=touch.at)
    return replace(write, **changes)


async def snapshot(db: asyncpg.Pool, tenant: str, sids: list[UUID]) -> list[tuple]:
    out = []
    for sid in sids:
        record = await sessions.get_session(db, tenant, sid)
        out.append((record, await sessions.list_touches(db, tenant, sid)))
    return out


async def test_mixed_batch_equals_one_write_per_page_view(db_pool: asyncpg.Pool, tenant: str) -> None:
    fresh, existing, twice, other_tenant = uuid4(), uuid4(), uuid4(), uuid4()
    before = [visit(tenant, existing, FACEBOOK, is_new=False)]  # another process stored a later touch first
    batch = [
        visit(tenant, fresh, GOOGLE, is_new=True),
        visit(tenant, existing, GOOGLE, is_new=True, device=Device("desktop", None, None)),
        visit(tenant, twice, GOOGLE, is_new=True),
        visit(tenant, twice, BING, is_new=True),  # a repeated "new" write, earlier touch
        visit(tenant, fresh, FACEBOOK, is_new=False),
        visit(tenant + "x", other_tenant, BING, is_new=True),
    ]
    await sessions.write_visits(db_pool, before)
    await sessions.write_visits(db_pool, batch)
    bulk = await snapshot(db_pool, tenant, [fresh, existing, twice])

    reference = tenant + "r"
    ids = {fresh: uuid4(), existing: uuid4(), twice: uuid4(), other_tenant: uuid4()}
    for write in before + batch:  # one page view per call
        await sessions.write_visits(db_pool, [replace(write, tenant_id=reference + write.tenant_id[len(tenant):],
                                                      session_id=ids[write.session_id])])
    one_by_one = await snapshot(db_pool, reference, [ids[fresh], ids[existing], ids[twice]])

    def neutral(rows: list[tuple]) -> list[tuple]:
        return [(replace(record, tenant_id="", id=None), touches) for record, touches in rows]

    assert neutral(bulk) == neutral(one_by_one)
    record, touches = bulk[0]
    assert (record.first_touch.source, record.last_touch.source, len(touches)) == ("google", "facebook", 2)
    record, touches = bulk[1]
    assert (record.first_touch.source, record.last_touch.source, len(touches)) == ("google", "facebook", 2)
    assert record.device == Device("mobile", "Chrome Mobile", "Android")  # the later write's device
    record, touches = bulk[2]
    assert (record.first_touch.source, record.created_at, len(touches)) == ("bing", DAY1, 2)
    assert await sessions.count_sessions(db_pool, tenant + "x") == 1


async def test_batch_inside_a_callers_transaction_rolls_back_with_it(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    async with db_pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await sessions.write_visits(conn, [visit(tenant, sid, GOOGLE, is_new=True)])
                assert await sessions.count_sessions(conn, tenant) == 1
                raise RuntimeError("caller gives up")
    assert await sessions.count_sessions(db_pool, tenant) == 0
