"""Sessions, touches and anonymous aggregates against a real PostgreSQL."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from halo_proxy.storage import sessions
from halo_proxy.storage.sessions import AnonEvent, ClickId, SessionWrite
from halo_proxy.tracking.models import Consent, Device, Geo, Touch
from tests.storage.conftest import assert_indexed

DAY1 = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)

GOOGLE = Touch(
    at=DAY1,
    source="google",
    medium="cpc",
    campaign="summer",
    channel="Paid Search",
    referrer_domain="www.google.com",
    referrer_url="https://www.google.com/",
    landing_path="/shoes",
    click_ids=(("gclid", "abc123"),),
)
FACEBOOK = Touch(
    at=DAY2,
    source="facebook",
    medium="social",
    campaign="retargeting",
    channel="Organic Social",
    referrer_domain="m.facebook.com",
    landing_path="/sale",
    click_ids=(("fbclid", "xyz789"),),
)
MOBILE = Device(device_type="mobile", browser="Chrome Mobile", os="Android")
GRANTED = Consent(analytics=True, marketing=True, explicit=True, source="cookieyes")

_tenants = itertools.count(1)


@pytest.fixture
def tenant() -> str:
    """A tenant id of its own for each test: tests of the module share one database."""
    return f"tenant_{next(_tenants)}"


def visit(tenant: str, session_id: UUID, touch: Touch, *, is_new: bool, **changes: object) -> SessionWrite:
    write = SessionWrite(
        tenant_id=tenant,
        session_id=session_id,
        is_new=is_new,
        touch=touch,
        device=MOBILE,
        geo=Geo(country="CZ", region="10", city="Prague"),
        consent=GRANTED,
        ip_hash=b"hash-1",
        ip_enc=b"enc-ip-1",
        user_agent_enc=b"enc-ua-1",
        fbp="fb.1.1714555800000.111",
        at=touch.at,
    )
    return replace(write, **changes)


async def test_seed_journey_keeps_first_touch_and_moves_last_touch(
    db_pool: asyncpg.Pool, tenant: str
) -> None:
    sid = uuid4()
    await sessions.write_visits(db_pool, [visit(tenant, sid, GOOGLE, is_new=True)])

    record = await sessions.get_session(db_pool, tenant, sid)
    assert record is not None
    assert (record.first_touch.source, record.first_touch.medium) == ("google", "cpc")
    assert record.last_touch == record.first_touch
    assert record.click_ids == {"gclid": ClickId("abc123", DAY1)}
    assert record.created_at == DAY1

    await sessions.write_visits(
        db_pool,
        [visit(tenant, sid, FACEBOOK, is_new=False, fbc="fb.1.1714642200000.xyz789", ip_enc=b"enc-ip-2")],
    )

    record = await sessions.get_session(db_pool, tenant, sid)
    assert record is not None
    assert record.first_touch == replace(GOOGLE, click_ids=())
    assert record.last_touch == replace(FACEBOOK, click_ids=())
    assert record.click_ids == {"gclid": ClickId("abc123", DAY1), "fbclid": ClickId("xyz789", DAY2)}
    assert record.click_id_values == {"gclid": "abc123", "fbclid": "xyz789"}
    assert (record.created_at, record.updated_at) == (DAY1, DAY2)
    assert record.device == MOBILE
    assert record.geo == Geo("CZ", "10", "Prague")
    assert (record.consent.analytics, record.consent.marketing, record.consent.source) == (
        True,
        True,
        "cookieyes",
    )
    assert record.ip_enc == b"enc-ip-2"
    assert record.fbc == "fb.1.1714642200000.xyz789"
    assert record.fbp == "fb.1.1714555800000.111"

    touches = await sessions.list_touches(db_pool, tenant, sid)
    assert touches == [GOOGLE, FACEBOOK]
    assert await sessions.list_touches(db_pool, tenant, sid, since=DAY2) == [FACEBOOK]
    assert await sessions.list_touches(db_pool, tenant, sid, until=DAY1) == [GOOGLE]
    assert await sessions.count_touches(db_pool, tenant, sid) == 2
    assert await sessions.count_sessions(db_pool, tenant) == 1


async def test_new_session_and_its_next_touch_in_one_batch(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid, other = uuid4(), uuid4()
    await sessions.write_visits(
        db_pool,
        [
            visit(tenant, sid, GOOGLE, is_new=True),
            visit(tenant, other, replace(GOOGLE, source="bing", click_ids=()), is_new=True),
            visit(tenant, sid, FACEBOOK, is_new=False),
        ],
    )
    record = await sessions.get_session(db_pool, tenant, sid)
    assert record is not None
    assert (record.first_touch.source, record.last_touch.source) == ("google", "facebook")
    assert await sessions.count_touches(db_pool, tenant, sid) == 2
    assert await sessions.count_sessions(db_pool, tenant) == 2


async def test_touch_for_a_missing_session_creates_it(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    await sessions.write_visits(db_pool, [visit(tenant, sid, FACEBOOK, is_new=False)])
    record = await sessions.get_session(db_pool, tenant, sid)
    assert record is not None
    assert record.first_touch == record.last_touch == replace(FACEBOOK, click_ids=())
    assert await sessions.list_touches(db_pool, tenant, sid) == [FACEBOOK]


async def test_repeated_new_session_does_not_reset_first_touch(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    await sessions.write_visits(db_pool, [visit(tenant, sid, GOOGLE, is_new=True)])
    direct_later = Touch(at=DAY3, landing_path="/")
    await sessions.write_visits(db_pool, [visit(tenant, sid, direct_later, is_new=True)])
    record = await sessions.get_session(db_pool, tenant, sid)
    assert record is not None
    assert record.first_touch.source == "google"
    assert (
        record.last_touch.source == "google"
    )  # a "new" visit never moves the last touch of an existing session
    assert record.created_at == DAY1


async def test_same_batch_written_twice_adds_nothing(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    batch = [visit(tenant, sid, GOOGLE, is_new=True), visit(tenant, sid, FACEBOOK, is_new=False)]
    await sessions.write_visits(db_pool, batch)
    before = await sessions.get_session(db_pool, tenant, sid)
    await sessions.write_visits(db_pool, batch)
    assert await sessions.get_session(db_pool, tenant, sid) == before
    assert await sessions.count_touches(db_pool, tenant, sid) == 2


async def test_writes_arriving_out_of_order_give_the_same_session(db_pool: asyncpg.Pool, tenant: str) -> None:
    """Two proxy processes may commit a visitor's first and second page views in either order."""
    sid = uuid4()
    await sessions.write_visits(db_pool, [visit(tenant, sid, FACEBOOK, is_new=False, ip_enc=b"enc-ip-2")])
    await sessions.write_visits(
        db_pool, [visit(tenant, sid, GOOGLE, is_new=True, device=Device("desktop", None, None))]
    )
    record = await sessions.get_session(db_pool, tenant, sid)
    assert record is not None
    assert (record.first_touch.source, record.last_touch.source) == ("google", "facebook")
    assert record.created_at == DAY1 and record.updated_at == DAY2
    assert record.device == MOBILE  # from the later page view
    assert record.ip_enc == b"enc-ip-2"
    assert record.click_ids == {"gclid": ClickId("abc123", DAY1), "fbclid": ClickId("xyz789", DAY2)}


async def test_latest_value_of_each_click_id_is_kept(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    again = replace(GOOGLE, at=DAY3, click_ids=(("gclid", "def456"),))
    await sessions.write_visits(
        db_pool, [visit(tenant, sid, GOOGLE, is_new=True), visit(tenant, sid, again, is_new=False)]
    )
    record = await sessions.get_session(db_pool, tenant, sid)
    assert record is not None
    assert record.click_ids == {"gclid": ClickId("def456", DAY3)}
    assert [t.click_id_map for t in await sessions.list_touches(db_pool, tenant, sid)] == [
        {"gclid": "abc123"},
        {"gclid": "def456"},
    ]


async def test_losing_marketing_consent_clears_identifiers(db_pool: asyncpg.Pool, tenant: str) -> None:
    sid = uuid4()
    await sessions.write_visits(db_pool, [visit(tenant, sid, GOOGLE, is_new=True, fbc="fb.1.1.abc")])
    analytics_only = Consent(analytics=True, marketing=False, explicit=True, source="cookiebot")
    await sessions.write_visits(
        db_pool, [visit(tenant, sid, FACEBOOK, is_new=False, consent=analytics_only, ip_hash=b"hash-2")]
    )
    record = await sessions.get_session(db_pool, tenant, sid)
    assert record is not None
    assert (record.consent.marketing, record.consent.source) == (False, "cookiebot")
    assert (record.ip_enc, record.user_agent_enc, record.fbp, record.fbc) == (None, None, None, None)
    assert record.ip_hash == b"hash-2"


async def test_tenants_are_isolated(db_pool: asyncpg.Pool, tenant: str) -> None:
    other_tenant = f"{tenant}_other"
    sid = uuid4()
    await sessions.write_visits(
        db_pool,
        [visit(tenant, sid, GOOGLE, is_new=True), visit(other_tenant, sid, FACEBOOK, is_new=True)],
    )
    mine = await sessions.get_session(db_pool, tenant, sid)
    theirs = await sessions.get_session(db_pool, other_tenant, sid)
    assert mine is not None and theirs is not None
    assert (mine.first_touch.source, theirs.first_touch.source) == ("google", "facebook")
    assert await sessions.list_touches(db_pool, tenant, sid) == [GOOGLE]
    assert await sessions.count_sessions(db_pool, tenant) == 1
    assert await sessions.count_sessions(db_pool, other_tenant) == 1
    assert await sessions.get_session(db_pool, "nobody", sid) is None

    assert await sessions.delete_sessions(db_pool, tenant, [sid]) == 1
    assert await sessions.get_session(db_pool, tenant, sid) is None
    assert await sessions.count_touches(db_pool, tenant, sid) == 0  # deleted with it
    assert await sessions.get_session(db_pool, other_tenant, sid) is not None
    assert await sessions.count_touches(db_pool, other_tenant, sid) == 1  # the same id of another tenant stays


async def test_anon_events_are_counted(db_pool: asyncpg.Pool, tenant: str) -> None:
    day = date(2026, 5, 1)
    google = AnonEvent(tenant, day, "google", "cpc", "summer", "www.google.com", "/shoes", "Paid Search")
    direct = AnonEvent(tenant, day, path="/", channel="Direct")
    await sessions.add_anon_events(db_pool, [google, google, direct])
    await sessions.add_anon_events(db_pool, [replace(google, count=3), AnonEvent(f"{tenant}_other", day)])
    await sessions.add_anon_events(db_pool, [])

    rows = await sessions.list_anon_events(db_pool, tenant, day, day)
    counts = {(r.utm_source, r.path): r.count for r in rows}
    assert counts == {("google", "/shoes"): 5, ("", "/"): 1}
    assert all(r.tenant_id == tenant for r in rows)
    assert (
        await sessions.list_anon_events(db_pool, tenant, day + timedelta(days=1), day + timedelta(days=9))
        == []
    )


async def test_retention_purge(db_pool: asyncpg.Pool, tenant: str) -> None:
    old, recent = uuid4(), uuid4()
    await sessions.write_visits(
        db_pool,
        [
            visit(tenant, old, GOOGLE, is_new=True),
            visit(tenant, recent, replace(FACEBOOK, at=DAY3), is_new=True),
        ],
    )
    await sessions.add_anon_events(
        db_pool, [AnonEvent(tenant, date(2026, 4, 1)), AnonEvent(tenant, date(2026, 5, 1))]
    )
    deleted = await sessions.purge_expired(
        db_pool, tenant, sessions_before=DAY2, anon_events_before=date(2026, 5, 1)
    )
    assert deleted == (1, 1)
    assert await sessions.get_session(db_pool, tenant, old) is None
    assert await sessions.count_touches(db_pool, tenant, old) == 0
    assert await sessions.get_session(db_pool, tenant, recent) is not None
    assert await sessions.count_touches(db_pool, tenant, recent) == 1


async def test_session_deletes_read_through_indexes(planner: asyncpg.Connection) -> None:
    await assert_indexed(planner, sessions._DELETE_SESSIONS,
                         {"sessions_pkey", "touches_tenant_session_at", "events_session",
                          "consent_changes_session"})
    await assert_indexed(planner, sessions._PURGE_SESSIONS,
                         {"sessions_tenant_updated_at", "touches_tenant_session_at", "events_session",
                          "consent_changes_session"})
