"""Page-view tracking through the real proxy, against a real upstream and the real PostgreSQL.

The seed journey: day 1 from Google Ads, day 2 from Facebook, then a direct visit; a consent-denied visitor,
a forged cookie, a bot; the returning visitor's zero-query fast path; the database going away.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from halo_proxy.app import WORKER, WRITER, create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.metrics import Metrics
from halo_proxy.storage import sessions as store
from halo_proxy.storage.db import init_connection
from tests.procs import TEST_SECRET
from tests.upstream import SEEN, create_upstream

HOST = "shop.localhost"
MOBILE_CHROME = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                 "Chrome/126.0.0.0 Mobile Safari/537.36")
DESKTOP_FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
PAGE = {"Host": HOST, "Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Dest": "document",
        "User-Agent": MOBILE_CHROME}
DAY1 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
KEYS = KeyRing(TEST_SECRET)


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settings(upstream_port: int, unknown: str = "granted"):
    return parse(f"""
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    consent: {{unknown: {unknown}}}
""", "t.yaml", {})




@pytest.fixture
async def upstream(aiohttp_server):
    return await aiohttp_server(create_upstream())


@pytest.fixture
def clock():
    return Clock(DAY1)


@pytest.fixture
async def site(aiohttp_server, upstream, clean, clock):
    metrics = Metrics()
    app = create_app(settings(upstream.port), metrics, keys=KEYS, pool=clean, migrate=False, clock=clock)
    server = await aiohttp_server(app)
    server.metrics = metrics
    return server


@pytest.fixture
async def browser():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def visit(browser, server, path: str, cookies: dict[str, str] | None = None, **headers: str):
    hdrs = {**PAGE, **{name.replace("_", "-"): value for name, value in headers.items()}}
    if cookies:
        hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    async with browser.get(f"http://127.0.0.1:{server.port}{path}", headers=hdrs) as resp:
        assert resp.status == 200
        await resp.read()
        jar = SimpleCookie()
        for line in resp.headers.getall("Set-Cookie", []):
            jar.load(line)
        return {name: morsel for name, morsel in jar.items()}


async def flush(server) -> None:
    assert await server.app[WRITER].flush()


async def test_seed_journey_first_touch_kept_last_touch_updated(site, browser, clock, clean):
    set1 = await visit(browser, site, "/landing?utm_source=google&utm_medium=cpc&gclid=abc123")
    cookie = set1["_halo"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert cookie["max-age"] == str(365 * 86400)
    assert not cookie["secure"]
    session_id = KEYS.open_session("shop", cookie.value)
    await flush(site)
    record = await store.get_session(clean, "shop", session_id)
    assert (record.first_touch.source, record.first_touch.medium, record.first_touch.channel) == \
        ("google", "cpc", "Paid Search")
    assert record.first_touch.landing_path == "/landing"
    assert record.device.device_type == "mobile" and record.device.browser == "Chrome Mobile"
    assert record.click_id_values == {"gclid": "abc123"}

    clock.now = DAY1 + timedelta(days=1)
    set2 = await visit(browser, site, "/?utm_source=facebook&utm_medium=social&fbclid=xyz789",
                       cookies={"_halo": cookie.value}, Referer="https://l.facebook.com/")
    assert "_halo" not in set2  # same visitor, same consent: the cookie stands
    assert set2["_fbc"].value == f"fb.1.{int(clock.now.timestamp() * 1000)}.xyz789"
    await flush(site)
    record = await store.get_session(clean, "shop", session_id)
    assert (record.first_touch.source, record.first_touch.medium) == ("google", "cpc")
    assert (record.last_touch.source, record.last_touch.medium, record.last_touch.channel) == \
        ("facebook", "social", "Organic Social")
    assert record.click_id_values == {"gclid": "abc123", "fbclid": "xyz789"}
    assert record.click_ids["gclid"].at == DAY1
    assert record.click_ids["fbclid"].at == clock.now
    assert record.fbc == set2["_fbc"].value

    clock.now = DAY1 + timedelta(days=2)
    set3 = await visit(browser, site, "/pricing", cookies={"_halo": cookie.value, "_fbc": set2["_fbc"].value,
                                                           "_fbp": set1["_fbp"].value})
    assert set3 == {}
    await flush(site)
    after = await store.get_session(clean, "shop", session_id)
    assert after.last_touch == record.last_touch and after.first_touch == record.first_touch
    assert await store.count_touches(clean, "shop", session_id) == 2
    assert await store.count_sessions(clean, "shop") == 1
    value = site.metrics.registry.get_sample_value
    assert value("halo_sessions_created_total", {"tenant": "shop"}) == 1
    assert value("halo_touches_total", {"tenant": "shop"}) == 1
    assert value("halo_visits_total", {"tenant": "shop", "consent": "granted", "channel": "Paid Search"}) == 1


async def test_consent_denied_leaves_only_an_anonymous_aggregate(site, browser, clean, upstream):
    denied = "consentid:abc,consent:no,action:yes,necessary:yes,analytics:no,advertisement:no"
    for _ in range(2):
        set_cookies = await visit(browser, site, "/offer?utm_source=google&utm_medium=cpc&gclid=zzz",
                                  cookies={"cookieyes-consent": denied}, Referer="https://www.google.com/")
        assert set_cookies == {}
    await flush(site)
    assert await store.count_sessions(clean, "shop") == 0
    rows = await clean.fetch("SELECT * FROM anon_events")
    assert len(rows) == 1
    row = dict(rows[0])
    assert row["count"] == 2 and row["day"] == DAY1.date()
    assert (row["utm_source"], row["utm_medium"], row["path"], row["channel"], row["referrer_domain"]) == \
        ("google", "cpc", "/offer", "Paid Search", "google.com")
    assert set(row) == {"tenant_id", "day", "utm_source", "utm_medium", "utm_campaign", "referrer_domain", "path",
                        "channel", "count"}


async def test_tenant_default_denied_and_a_stale_cookie_is_expired(aiohttp_server, upstream, clean, clock, browser):
    app = create_app(settings(upstream.port, unknown="denied"), Metrics(), keys=KEYS, pool=clean, migrate=False,
                     clock=clock)
    server = await aiohttp_server(app)
    old = KEYS.seal_session("shop", KEYS.new_session_id(), 3)
    set_cookies = await visit(browser, server, "/", cookies={"_halo": old})
    assert set_cookies["_halo"].value == "" and set_cookies["_halo"]["max-age"] == "0"
    await server.app[WRITER].flush()
    assert await store.count_sessions(clean, "shop") == 0


async def test_forged_cookie_is_ignored_and_replaced(site, browser, clean):
    real = KEYS.seal_session("shop", KEYS.new_session_id())
    forged = real[:-2] + ("AA" if real[-2:] != "AA" else "BB")
    other_tenant = KEYS.seal_session("other", KEYS.new_session_id())
    for bad in (forged, other_tenant, "garbage", "x" * 44):
        set_cookies = await visit(browser, site, "/", cookies={"_halo": bad})
        fresh = KEYS.open_session("shop", set_cookies["_halo"].value)
        assert fresh is not None
    await flush(site)
    assert await store.count_sessions(clean, "shop") == 4


@pytest.mark.parametrize("headers", [
    {"User-Agent": "curl/8.5.0"},
    {"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"},
    {"User-Agent": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"},
    {"Sec-Purpose": "prefetch;prerender"},
    {"Sec-Fetch-Dest": "image"},
], ids=["curl", "googlebot", "slack", "prerender", "image"])
async def test_bots_and_non_visits_leave_nothing(site, browser, clean, headers):
    set_cookies = await visit(browser, site, "/?utm_source=google&gclid=bot", **headers)
    assert set_cookies == {}
    await flush(site)
    assert await store.count_sessions(clean, "shop") == 0
    assert await clean.fetchval("SELECT count(*) FROM anon_events") == 0


async def test_assets_and_reserved_paths_are_not_visits(site, browser, clean):
    async with browser.get(f"http://127.0.0.1:{site.port}/static/app.js", headers=PAGE) as resp:
        assert "Set-Cookie" not in resp.headers
    async with browser.head(f"http://127.0.0.1:{site.port}/", headers=PAGE) as resp:
        assert "Set-Cookie" not in resp.headers
    await flush(site)
    assert await store.count_sessions(clean, "shop") == 0


async def test_returning_visitor_fast_path_makes_zero_database_calls(aiohttp_server, upstream, database, clean,
                                                                  clock, browser):
    queries: list[str] = []

    async def counting(conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        conn.add_query_logger(lambda record: queries.append(record.query))

    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=2, init=counting)
    try:
        app = create_app(settings(upstream.port), Metrics(), keys=KEYS, pool=pool, migrate=False, clock=clock)
        server = await aiohttp_server(app)
        await server.app[WORKER].stop()  # the outbox poller shares the pool; only page views may query now
        first = await visit(browser, server, "/?utm_source=google&utm_medium=cpc")
        await flush(server)
        assert queries, "the new visitor's session is written"
        queries.clear()
        cookies = {"_halo": first["_halo"].value, "_fbp": first["_fbp"].value}
        for path in ("/", "/pricing", "/blog/post?page=2"):
            assert await visit(browser, server, path, cookies=cookies,
                               Referer=f"http://{HOST}/previous") == {}
        await flush(server)
        assert queries == []
        assert len(upstream.app[SEEN]) == 4  # every page was still served
    finally:
        await pool.close()


async def test_consent_change_updates_the_session_without_a_touch(site, browser, clean, clock):
    first = await visit(browser, site, "/?utm_source=newsletter&utm_medium=email")
    session_id = KEYS.open_session("shop", first["_halo"].value)
    await flush(site)
    record = await store.get_session(clean, "shop", session_id)
    assert record.consent.marketing and record.ip_enc is not None and record.fbp is not None
    assert KEYS.decrypt("shop", "sessions", "ip_enc", record.ip_enc) == "127.0.0.1"

    clock.now = DAY1 + timedelta(hours=1)
    analytics_only = "consentid:a,consent:yes,action:yes,necessary:yes,analytics:yes,advertisement:no"
    changed = await visit(browser, site, "/", cookies={"_halo": first["_halo"].value,
                                                       "cookieyes-consent": analytics_only})
    assert KEYS.open_session_state("shop", changed["_halo"].value) == (session_id, 1)
    await flush(site)
    record = await store.get_session(clean, "shop", session_id)
    assert record.consent.analytics and not record.consent.marketing
    assert record.ip_enc is None and record.fbp is None and record.user_agent_enc is None
    assert record.ip_hash == KEYS.hash_ip("shop", "127.0.0.1")
    assert await store.count_touches(clean, "shop", session_id) == 1


async def test_gpc_keeps_analytics_but_no_marketing_identifiers(site, browser, clean):
    set_cookies = await visit(browser, site, "/?utm_source=x&fbclid=abc", Sec_GPC="1")
    assert "_fbp" not in set_cookies and "_fbc" not in set_cookies
    session_id = KEYS.open_session("shop", set_cookies["_halo"].value)
    await flush(site)
    record = await store.get_session(clean, "shop", session_id)
    assert record.consent.gpc and not record.consent.marketing
    assert record.ip_enc is None and record.fbc is None


async def test_geo_and_device_headers_are_kept(site, browser, clean):
    set_cookies = await visit(browser, site, "/?utm_source=bing&utm_medium=cpc", User_Agent=DESKTOP_FIREFOX,
                              **{"CF-IPCountry": "cz", "cf-region-code": "10", "cf-ipcity": "Prague"})
    await flush(site)
    record = await store.get_session(clean, "shop", KEYS.open_session("shop", set_cookies["_halo"].value))
    assert (record.geo.country, record.geo.region, record.geo.city) == ("CZ", "10", "Prague")
    assert (record.device.device_type, record.device.browser, record.device.os) == ("desktop", "Firefox", "Linux")


async def test_raw_tables_hold_no_plain_ip_or_user_agent(site, browser, clean):
    await visit(browser, site, "/?utm_source=google&utm_medium=cpc&gclid=q1")
    await flush(site)
    dump = "\n".join(str(dict(r)) for r in await clean.fetch("SELECT * FROM sessions"))
    dump += "\n".join(str(dict(r)) for r in await clean.fetch("SELECT * FROM touches"))
    assert "127.0.0.1" not in dump
    assert "Pixel 8" not in dump and "Mozilla" not in dump


async def test_database_down_pages_still_served_readyz_503_lost_writes_counted(upstream, clock):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]
    s.close()
    metrics = Metrics()
    app = create_app(settings(upstream.port), metrics, keys=KEYS,
                     dsn=f"postgresql://halo@127.0.0.1:{dead_port}/halo", clock=clock)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
    try:
        async with aiohttp.ClientSession() as browser:
            async with browser.get(f"http://127.0.0.1:{port}/?utm_source=google&utm_medium=cpc",
                                   headers=PAGE) as resp:
                assert resp.status == 200
                assert "_halo" in resp.cookies
            assert not await app[WRITER].flush()
            async with browser.get(f"http://127.0.0.1:{port}/_halo/readyz", headers={"Host": HOST}) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"]
                assert (await resp.json())["error"] == "database_unavailable"
    finally:
        await runner.cleanup()
    value = metrics.registry.get_sample_value
    assert value("halo_storage_errors_total", {"op": "visits"}) >= 1
    assert value("halo_storage_lost_writes_total", {"kind": "visit"}) == 1


@pytest.mark.parametrize("raw", [
    "/?utm_source=%ff%fe%fd&gclid=%00%01",
    "/?" + "utm_source=x&" * 500,
    "/%ff%fe?fbclid=%E2%28%A1",
])
async def test_odd_requests_are_always_served(site, clean, raw):
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    writer.write((f"GET {raw} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/html\r\nSec-Fetch-Dest: document\r\n"
                  f"User-Agent: {MOBILE_CHROME}\r\nReferer: http://[bad\r\n"
                  "Cookie: _halo=\"unterminated; cookieyes-consent=%%%; CookieConsent={stamp:'-1'\r\n"
                  "Connection: close\r\n\r\n").encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_sealing_a_pending_visit_keeps_every_other_field():
    from dataclasses import fields, replace
    from uuid import uuid4

    from halo_proxy.storage.sessions import SessionWrite
    from halo_proxy.storage.write_queue import PendingVisit
    from halo_proxy.tracking.models import Consent, Device, Geo, Touch

    at = datetime(2026, 6, 1, tzinfo=UTC)
    write = SessionWrite(tenant_id="shop", session_id=uuid4(), is_new=False, touch=Touch(at=at, source="g"),
                         device=Device("mobile", "Chrome", "Android"), geo=Geo("CZ", "10", "Prague"),
                         consent=Consent(True, True, source="cookieyes"), ip_hash=b"h", fbp="fb.1.1.2",
                         fbc="fb.1.1.x", at=at + timedelta(seconds=1))
    sealed = PendingVisit(write, KEYS, "203.0.113.9", "Mozilla/5.0").sealed()
    assert KEYS.decrypt("shop", "sessions", "ip_enc", sealed.ip_enc) == "203.0.113.9"
    assert KEYS.decrypt("shop", "sessions", "user_agent_enc", sealed.user_agent_enc) == "Mozilla/5.0"
    expected = replace(write, ip_enc=sealed.ip_enc, user_agent_enc=sealed.user_agent_enc)
    assert [getattr(sealed, f.name) for f in fields(SessionWrite)] == [getattr(expected, f.name)
                                                                      for f in fields(SessionWrite)]


async def test_undecodable_header_bytes_are_stored_not_fatal(site, clean):
    """A user agent or referrer with bytes that are not UTF-8 still gives a stored visit, and the writer goes on."""
    import asyncio

    for n in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(f"GET /?utm_source=s{n} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/html\r\n".encode()
                     + b"Sec-Fetch-Dest: document\r\nUser-Agent: Mozilla/5.0 (X11; caf\xe9\xff) Firefox/128.0\r\n"
                     + b"Referer: https://news.example/caf\xe9\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    await flush(site)
    assert await store.count_sessions(clean, "shop") == 2
    assert site.app[WRITER].healthy


async def test_a_refused_write_is_dropped_alone_and_the_writer_goes_on(clean):
    from dataclasses import replace
    from uuid import uuid4

    from halo_proxy.storage.sessions import SessionWrite
    from halo_proxy.storage.write_queue import PendingVisit, VisitWriter
    from halo_proxy.tracking.models import Consent, Device, Geo, Touch

    metrics = Metrics()
    writer = VisitWriter(clean, metrics)
    good = SessionWrite(tenant_id="shop", session_id=uuid4(), is_new=True, touch=Touch(at=DAY1, source="g"),
                        device=Device("desktop", None, None), geo=Geo(), consent=Consent(True, True, source="x"),
                        at=DAY1)
    refused = replace(good, session_id=uuid4(), fbp="fb\x00nul")  # PostgreSQL refuses NUL in text
    unsealable = PendingVisit(replace(good, session_id=uuid4()), KEYS, "203.0.113.1", "\ud800 lone")
    later = replace(good, session_id=uuid4())
    for write in (good, refused, unsealable, later):
        writer.submit(write)
    assert await writer.flush() is True
    assert await store.count_sessions(clean, "shop") == 2  # good and later
    assert metrics.registry.get_sample_value("halo_storage_lost_writes_total", {"kind": "invalid"}) == 2
    writer.submit(replace(good, session_id=uuid4()))
    assert await writer.flush() is True
    assert await store.count_sessions(clean, "shop") == 3


async def test_a_click_id_cannot_add_attributes_to_a_cookie(site, browser, clean):
    """`fbclid=abc; Domain=...` in a link would otherwise become `_fbc`'s Domain: a cookie on other hosts."""
    async with browser.get(f"http://127.0.0.1:{site.port}/land?fbclid=abc%3B%20Domain%3Dlocalhost%3B%20Path%3D%2Fx"
                           "&utm_source=fb", headers={**PAGE, "Cookie": "_fbc=evil; Domain=localhost"}) as resp:
        assert resp.status == 200
        lines = resp.headers.getall("Set-Cookie", [])
    assert lines and not any("Domain" in line or "/x" in line or "evil" in line for line in lines), lines


def test_holds_finds_a_queued_write_of_the_session_and_bounds_its_scan():
    """What a conversion asks before matching: is this session's latest page view still queued here? A sealed
    visit and a plain one are found, another tenant's session of the same id is not; a queue longer than the scan
    bound (the database slow or away) answers no without looking: a conversion does not wait for a backlog."""
    from dataclasses import replace
    from uuid import uuid4

    from halo_proxy.storage import write_queue
    from halo_proxy.storage.sessions import SessionWrite
    from halo_proxy.storage.write_queue import PendingVisit, VisitWriter
    from halo_proxy.tracking.models import Consent, Device, Geo, Touch

    writer = VisitWriter(None, Metrics())  # type: ignore[arg-type] # never flushed
    base = SessionWrite(tenant_id="shop", session_id=uuid4(), is_new=True, touch=Touch(at=DAY1, source="g"),
                        device=Device("desktop", None, None), geo=Geo(), consent=Consent(True, True, source="x"),
                        at=DAY1)
    sealed_later = replace(base, session_id=uuid4())
    writer.submit(base)
    writer.submit(PendingVisit(sealed_later, KEYS, "203.0.113.1", "UA"))
    assert writer.holds("shop", base.session_id) and writer.holds("shop", sealed_later.session_id)
    assert not writer.holds("other", base.session_id) and not writer.holds("shop", uuid4())
    for _ in range(write_queue.HOLDS_SCAN_MAX):
        writer.submit(replace(base, session_id=uuid4()))
    assert not writer.holds("shop", base.session_id)  # a backlog: the database is behind, nobody waits for it
