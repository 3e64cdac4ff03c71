"""`POST /_halo/event` through the app, with PostgreSQL: stored against the visitor's session with its props
encrypted, refused by name when bad (nothing stored), `accepted: false` without a session or analytics consent,
deleted with the session."""

from __future__ import annotations

import json

import aiohttp
import pytest

from halo_proxy.app import METRICS, WRITER, create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.metrics import Metrics
from halo_proxy.storage import events as event_store
from halo_proxy.storage import sessions
from tests.procs import TEST_SECRET
from tests.upstream import create_upstream

HOST = "shop.localhost"
KEYS = KeyRing(TEST_SECRET)
PAGE = {"Host": HOST, "Accept": "text/html", "Sec-Fetch-Dest": "document",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"}


def settings(upstream_port: int, burst: int = 50):  # type: ignore[no-untyped-def]
    return parse(f"""
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    external_origins: ["https://landing.example"]
    rate_limit: {{per_second: 1, burst: {burst}}}
""", "t.yaml", {})




async def make_site(aiohttp_server, pool, burst: int = 50):  # type: ignore[no-untyped-def]
    upstream = await aiohttp_server(create_upstream())
    return await aiohttp_server(create_app(settings(upstream.port, burst), Metrics(), keys=KEYS, pool=pool,
                                           migrate=False))


@pytest.fixture
async def site(aiohttp_server, clean):
    return await make_site(aiohttp_server, clean)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def visitor_cookie(http, site) -> str:  # type: ignore[no-untyped-def]
    async with http.get(f"http://127.0.0.1:{site.port}/?utm_source=news", headers=PAGE) as resp:
        assert resp.status == 200
        return resp.cookies["_halo"].value


async def send(http, site, body: object, cookie: str | None = None, **headers: str):  # type: ignore[no-untyped-def]
    hdrs = {"Host": HOST, "Content-Type": "application/json", **headers}
    if cookie:
        hdrs["Cookie"] = f"_halo={cookie}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"http://127.0.0.1:{site.port}/_halo/event", data=data, headers=hdrs) as resp:
        return resp.status, await resp.json()


async def test_an_event_is_stored_against_the_session_with_its_props_encrypted(site, http, clean):
    cookie = await visitor_cookie(http, site)
    props = {"sku": "A-1", "email": "someone@example.com"}
    assert await send(http, site, {"name": "add_to_cart", "props": props}, cookie) == (202, {"accepted": True})
    session_id = KEYS.open_session("shop", cookie)
    [row] = await event_store.events_for_sessions(clean, "shop", [session_id])
    assert row.name == "add_to_cart" and row.props_enc is not None
    assert b"someone@example.com" not in row.props_enc
    assert json.loads(KEYS.decrypt("shop", "events", "props_enc", row.props_enc)) == props
    # sendBeacon's text/plain is taken too, and a Origin of the site itself.
    assert (await send(http, site, {"name": "beacon"}, cookie, **{"Content-Type": "text/plain",
                                                                 "Origin": f"http://{HOST}"}))[0] == 202
    # Deleted with the session (the GDPR delete and retention go through delete_sessions / purge_expired).
    assert await site.app[WRITER].flush()
    assert await sessions.delete_sessions(clean, "shop", [session_id]) == 1
    assert await event_store.events_for_sessions(clean, "shop", [session_id]) == []


async def test_without_a_session_or_analytics_consent_nothing_is_stored(site, http, clean):
    assert await send(http, site, {"name": "view"}) == (202, {"accepted": False})
    assert await send(http, site, {"name": "view"}, "not-a-real-cookie") == (202, {"accepted": False})
    marketing_only = KEYS.seal_session("shop", KEYS.new_session_id(), 2)
    assert await send(http, site, {"name": "view"}, marketing_only) == (202, {"accepted": False})
    # Consent withdrawn in the banner on this page, no page view since: the sealed bit says yes, the CMP now no.
    cookie = await visitor_cookie(http, site)
    status, answer = await send(http, site, {"name": "view"}, None, **{
        "Cookie": f"_halo={cookie}; cookieyes-consent=action:yes,analytics:no,advertisement:no"})
    assert (status, answer) == (202, {"accepted": False})
    other_tenant = KEYS.seal_session("other", KEYS.new_session_id(), 3)
    assert await send(http, site, {"name": "view"}, other_tenant) == (202, {"accepted": False})
    assert await clean.fetchval("SELECT count(*) FROM events") == 0


@pytest.mark.parametrize(("body", "headers", "status", "error", "field"), [
    (b"{not json", {}, 400, "invalid_json", None),
    (b"[1, 2]", {}, 400, "invalid_json", None),
    ({"name": "Bad Name"}, {}, 422, "invalid_field", "name"),
    ({"props": {}}, {}, 422, "missing_field", "name"),
    ({"name": "ok", "props": [1]}, {}, 422, "invalid_field", "props"),
    ({"name": "ok", "props": {"x": "y" * 3000}}, {}, 422, "invalid_field", "props"),
    ({"name": "ok", "extra": 1}, {}, 422, "unknown_field", "extra"),
    (b'{"name":"ok","props":{"x":' + b"[" * 980 + b"]" * 980 + b"}}", {}, 422, "invalid_field", "props"),
    ({"name": "ok", "props": {"x": "y" * 9000}}, {}, 413, "body_too_large", None),
    ({"name": "ok"}, {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", None),
    ({"name": "ok"}, {"Origin": "https://evil.example"}, 403, "forbidden_origin", None),
])
async def test_bad_input_is_refused_by_name_and_nothing_is_stored(site, http, clean, body, headers, status, error,
                                                                  field):
    cookie = await visitor_cookie(http, site)
    got_status, answer = await send(http, site, body, cookie, **headers)
    assert (got_status, answer["error"], answer.get("field")) == (status, error, field)
    assert await clean.fetchval("SELECT count(*) FROM events") == 0


async def test_a_listed_external_origin_may_send_and_the_rate_limit_holds(aiohttp_server, http, clean):
    site = await make_site(aiohttp_server, clean, burst=2)
    cookie = KEYS.seal_session("shop", KEYS.new_session_id(), 1)
    origin = {"Origin": "https://landing.example"}
    assert await send(http, site, {"name": "a"}, cookie, **origin) == (202, {"accepted": True})
    assert await send(http, site, {"name": "b"}, cookie, **origin) == (202, {"accepted": True})
    status, answer = await send(http, site, {"name": "c"}, cookie, **origin)
    assert (status, answer["error"]) == (429, "rate_limited")
    assert await clean.fetchval("SELECT count(*) FROM events") == 2
    registry = site.app[METRICS].registry
    assert registry.get_sample_value("halo_events_total", {"tenant": "shop"}) == 2
