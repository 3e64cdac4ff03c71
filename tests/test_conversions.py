"""Leads, orders, identify, Shopify and Stripe through the real app, against the real PostgreSQL.

Signatures are computed here from their documented algorithms with `hmac` (not with HaloTrack's own helpers),
so a wrong implementation cannot agree with itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web

from halo_proxy.app import create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.metrics import Metrics
from halo_proxy.storage import conversions as conversion_store
from tests.procs import TEST_SECRET
from tests.upstream import create_upstream

HOST = "shop.localhost"
SECRET = "whsec-test-0123456789abcdef"
SHOPIFY = "shpss_test_0123456789abcdef"
STRIPE = "whsec_stripe_0123456789abcdef"
KEYS = KeyRing(TEST_SECRET)
DAY1 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
BROWSER = {"Host": HOST, "Accept": "text/html", "Sec-Fetch-Dest": "document",
           "User-Agent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/126.0.0.0 Mobile Safari/537.36"}


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settings(upstream_port: int, *, burst: int = 50):
    return parse(f"""
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    currency: CZK
    default_phone_region: CZ
    webhook_secret: {SECRET}
    shopify_secret: {SHOPIFY}
    stripe_secret: {STRIPE}
    rate_limit: {{per_second: 1, burst: {burst}}}
    max_body_kb: 8
  - id: other
    hosts: [other.localhost]
    upstream: http://127.0.0.1:{upstream_port}
    webhook_secret: other-secret-0123456789
""", "t.yaml", {})


def sign(body: bytes, t: int, secret: str = SECRET) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"




@pytest.fixture
def clock():
    return Clock(DAY1)


@pytest.fixture
async def upstream(aiohttp_server):
    return await aiohttp_server(create_upstream())


@pytest.fixture
async def site(aiohttp_server, upstream, clean, clock):
    metrics = Metrics()
    server = await aiohttp_server(create_app(settings(upstream.port), metrics, keys=KEYS, pool=clean,
                                             migrate=False, clock=clock))
    server.metrics = metrics
    return server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def page(http, server, path: str, cookie: str | None = None, **headers: str) -> str | None:
    hdrs = {**BROWSER, **headers}
    if cookie:
        hdrs["Cookie"] = f"_halo={cookie}"
    async with http.get(url(server, path), headers=hdrs) as resp:
        assert resp.status == 200
        morsel = resp.cookies.get("_halo")
        return morsel.value if morsel is not None else cookie


async def post_json(http, server, path: str, payload: dict | bytes, clock: Clock, *, host: str = HOST,
                    secret: str = SECRET, t: int | None = None, headers: dict | None = None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    stamp = int(clock.now.timestamp()) if t is None else t
    hdrs = {"Host": host, "Content-Type": "application/json", "X-Halo-Signature": sign(body, stamp, secret),
            **(headers or {})}
    async with http.post(url(server, path), data=body, headers=hdrs) as resp:
        return resp.status, await resp.json(), resp.headers


async def three_day_journey(http, site, clock) -> str:
    cookie = await page(http, site, "/?utm_source=google&utm_medium=cpc&utm_campaign=summer&gclid=abc123")
    clock.now = DAY1 + timedelta(days=1)
    await page(http, site, "/?utm_source=facebook&utm_medium=social&utm_campaign=retargeting&fbclid=xyz789",
               cookie=cookie)
    clock.now = DAY1 + timedelta(days=2, hours=1)
    return cookie


async def test_seed_journey_ends_in_a_form_post(site, http, clock, clean):
    cookie = await three_day_journey(http, site, clock)
    form = {"email": "Jan.Novak@Example.cz", "phone": "601 234 567", "message": "Call me", "form_type": "contact",
            "_redirect": "/thanks"}
    headers = {"Host": HOST, "Origin": f"http://{HOST}", "Cookie": f"_halo={cookie}"}
    async with http.post(url(site, "/_halo/webhook/lead"), data=form, headers=headers, allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"] == "/thanks"
    rows = await conversion_store.list_conversions(clean, "shop", DAY1, DAY1 + timedelta(days=5))
    assert len(rows) == 1
    lead = rows[0]
    assert lead.kind == "lead" and lead.source == "form" and lead.match_type == "session"
    a = lead.attribution
    assert (a.first_touch.source, a.first_touch.medium) == ("google", "cpc")
    assert (a.last_touch.source, a.last_touch.medium) == ("facebook", "social")
    assert a.days_to_convert == 2
    assert dict(a.click_ids) == {"gclid": "abc123", "fbclid": "xyz789"}
    assert KEYS.decrypt("shop", "conversions", "email_enc", lead.email_enc) == "jan.novak@example.cz"
    assert KEYS.decrypt("shop", "conversions", "phone_enc", lead.phone_enc) == "+420601234567"
    assert site.metrics.registry.get_sample_value(
        "halo_conversions_total", {"tenant": "shop", "kind": "lead", "match_type": "session"}) == 1


async def test_signed_json_lead_with_the_cookie_value_as_session_id(site, http, clock):
    cookie = await three_day_journey(http, site, clock)
    status, body, _ = await post_json(http, site, "/_halo/webhook/lead",
                                      {"email": "a@example.com", "session_id": cookie, "form_type": "contact",
                                       "value": 50, "event_id": "lead-1"}, clock)
    assert status == 201
    assert body["match_type"] == "session"
    ft, lt = body["attribution"]["first_touch"], body["attribution"]["last_touch"]
    assert (ft["source"], ft["medium"], ft["campaign"], ft["channel"]) == ("google", "cpc", "summer", "Paid Search")
    assert (lt["source"], lt["medium"], lt["campaign"], lt["channel"]) == \
        ("facebook", "social", "retargeting", "Organic Social")
    assert body["attribution"]["days_to_convert"] == 2
    assert body["attribution"]["click_ids"] == {"gclid": "abc123", "fbclid": "xyz789"}
    # The id HaloTrack.getSessionId() returns is accepted too.
    session_id = str(KEYS.open_session("shop", cookie))
    status, body2, _ = await post_json(http, site, "/_halo/webhook/lead",
                                       {"phone": "+420601234567", "session_id": session_id}, clock)
    assert status == 201 and body2["match_type"] == "session"


async def test_cross_device_match_by_email_after_identify(site, http, clock):
    phone_cookie = await page(http, site, "/?utm_source=tiktok&utm_medium=paid_social&ttclid=E.C.P.tt1")
    async with http.post(url(site, "/_halo/identify"), json={"email": " Eva@Example.COM "},
                         headers={"Host": HOST, "Origin": f"http://{HOST}", "Cookie": f"_halo={phone_cookie}"}) as r:
        assert r.status == 200
        assert (await r.json())["linked"] == ["email"]
    clock.now = DAY1 + timedelta(days=3)
    laptop_cookie = await page(http, site, "/")  # another device, direct
    status, body, _ = await post_json(http, site, "/_halo/webhook/lead",
                                      {"email": "eva@example.com", "event_id": "x-device"}, clock)
    assert status == 201
    assert body["match_type"] == "email"
    assert body["attribution"]["first_touch"]["source"] == "tiktok"
    assert body["attribution"]["click_ids"] == {"ttclid": "E.C.P.tt1"}
    assert body["attribution"]["days_to_convert"] == 3
    assert laptop_cookie != phone_cookie


async def test_match_by_phone_written_in_another_format(site, http, clock):
    cookie = await page(http, site, "/?utm_source=seznam&utm_medium=cpc")
    async with http.post(url(site, "/_halo/identify"), json={"phone": "+420 601 234 567"},
                         headers={"Host": HOST, "Cookie": f"_halo={cookie}"}) as r:
        assert r.status == 200
    status, body, _ = await post_json(http, site, "/_halo/webhook/lead", {"phone": "601234567"}, clock)
    assert status == 201 and body["match_type"] == "phone"
    assert body["attribution"]["first_touch"]["source"] == "seznam"


async def test_unmatched_lead_is_kept(site, http, clock, clean):
    status, body, _ = await post_json(http, site, "/_halo/webhook/lead", {"email": "nobody@example.com"}, clock)
    assert status == 201
    assert body["match_type"] == "none"
    assert body["attribution"]["first_touch"] is None and body["attribution"]["last_touch"] is None
    assert await clean.fetchval("SELECT count(*) FROM conversions") == 1


async def test_idempotent_redelivery_and_concurrent_duplicates(site, http, clock, clean):
    payload = {"email": "dup@example.com", "event_id": "evt-42", "value": "10.50"}
    first = await post_json(http, site, "/_halo/webhook/lead", payload, clock)
    again = await post_json(http, site, "/_halo/webhook/lead", payload, clock)
    assert first[0] == 201 and again[0] == 200 and again[1] == first[1]

    order = {"order_id": "A-1001", "value": 1200, "currency": "CZK", "email": "buyer@example.com"}
    results = await asyncio.gather(*(post_json(http, site, "/_halo/webhook/order", order, clock) for _ in range(12)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(201) == 1 and statuses.count(200) == 11
    assert len({body["id"] for _, body, _ in results}) == 1
    assert await clean.fetchval("SELECT count(*) FROM conversions WHERE kind = 'order'") == 1


def shopify_order() -> dict:
    return {
        "id": 820982911946154508, "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
        "email": "jon@example.com", "created_at": "2026-11-04T10:00:00+01:00", "currency": "CZK",
        "total_price": "1499.00", "phone": None,
        "customer": {"first_name": "Jon", "last_name": "Snow", "phone": "+420777123456"},
        "billing_address": {"city": "Brno", "province_code": None, "zip": "602 00", "country_code": "CZ"},
        "note_attributes": [{"name": "halo_session_id", "value": ""}],
        "line_items": [{"id": 1, "title": "Anvil", "quantity": 1, "price": "1499.00", "sku": "ANV-1"}],
    }


async def test_shopify_order_with_a_real_signature_and_redelivery(site, http, clock):
    cookie = await page(http, site, "/?utm_source=google&utm_medium=cpc&gclid=shop1")
    order = shopify_order()
    order["note_attributes"][0]["value"] = cookie
    body = json.dumps(order).encode()
    digest = base64.b64encode(hmac.new(SHOPIFY.encode(), body, hashlib.sha256).digest()).decode()
    headers = {"Host": HOST, "Content-Type": "application/json", "X-Shopify-Hmac-Sha256": digest,
               "X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"}
    async with http.post(url(site, "/_halo/webhook/shopify"), data=body, headers=headers) as r:
        assert r.status == 201
        first = await r.json()
    assert first["match_type"] == "session"
    assert first["attribution"]["click_ids"] == {"gclid": "shop1"}
    async with http.post(url(site, "/_halo/webhook/shopify"), data=body, headers=headers) as r:
        assert r.status == 200 and (await r.json()) == first
    bad = {**headers, "X-Shopify-Hmac-Sha256": base64.b64encode(b"x" * 32).decode()}
    async with http.post(url(site, "/_halo/webhook/shopify"), data=body, headers=bad) as r:
        assert r.status == 401 and (await r.json())["error"] == "bad_signature"


def stripe_event(session_ref: str | None) -> dict:
    return {
        "id": "evt_1QabcDEFghiJKLmno", "object": "event", "type": "checkout.session.completed",
        "created": int(DAY1.timestamp()) + 3600, "api_version": "2024-06-20",
        "data": {"object": {
            "id": "cs_test_a1b2c3", "object": "checkout.session", "amount_total": 250000, "currency": "jpy",
            "client_reference_id": session_ref, "metadata": {}, "mode": "payment", "payment_status": "paid",
            "created": int(DAY1.timestamp()) + 3500,
            "customer_details": {"email": "ken@example.jp", "phone": None, "name": "Ken",
                                 "address": {"country": "JP", "city": "Tokyo", "postal_code": "100-0001"}},
        }},
    }


async def test_stripe_checkout_with_a_real_signature_tolerance_both_ways(site, http, clock):
    cookie = await page(http, site, "/?utm_source=newsletter&utm_medium=email")
    clock.now = DAY1 + timedelta(hours=1)
    body = json.dumps(stripe_event(cookie)).encode()

    async def deliver(t: int, secret: str = STRIPE):
        mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        headers = {"Host": HOST, "Content-Type": "application/json",
                   "Stripe-Signature": f"t={t},v1={'0' * 64},v1={mac}"}
        async with http.post(url(site, "/_halo/webhook/stripe"), data=body, headers=headers) as r:
            return r.status, await r.json()

    now = int(clock.now.timestamp())
    assert (await deliver(now - 301))[1]["error"] == "stale_signature"
    assert (await deliver(now + 600))[1]["error"] == "stale_signature"
    assert (await deliver(now, secret="wrong-secret"))[0] == 401
    status, answer = await deliver(now - 10)
    assert status == 201 and answer["match_type"] == "session"
    assert answer["attribution"]["first_touch"]["channel"] == "Email"

    ignored = json.dumps({**stripe_event(None), "type": "payment_intent.created"}).encode()
    mac = hmac.new(STRIPE.encode(), f"{now}.".encode() + ignored, hashlib.sha256).hexdigest()
    async with http.post(url(site, "/_halo/webhook/stripe"), data=ignored,
                         headers={"Host": HOST, "Content-Type": "application/json",
                                  "Stripe-Signature": f"t={now},v1={mac}"}) as r:
        assert r.status == 200 and (await r.json())["ignored"]


@pytest.mark.parametrize("case", ["malformed_json", "not_an_object", "wrong_type", "unknown_field", "no_identity",
                                  "bad_email", "bad_phone", "too_large", "wrong_content_type", "bad_signature",
                                  "stale", "missing_signature", "order_without_id"])
async def test_bad_input_gets_a_clear_error_and_writes_nothing(site, http, clock, clean, case):
    now = int(clock.now.timestamp())
    path = "/_halo/webhook/order" if case == "order_without_id" else "/_halo/webhook/lead"
    payload: dict | bytes = {"email": "ok@example.com"}
    t, headers, secret = now, None, SECRET
    expected = {
        "malformed_json": (400, "invalid_json", None), "not_an_object": (400, "invalid_json", None),
        "wrong_type": (422, "invalid_field", "value"), "unknown_field": (422, "unknown_field", "sesion_id"),
        "no_identity": (422, "missing_field", None), "bad_email": (422, "invalid_field", "email"),
        "bad_phone": (422, "invalid_field", "phone"), "too_large": (413, "body_too_large", None),
        "wrong_content_type": (415, "unsupported_media_type", None), "bad_signature": (401, "bad_signature", None),
        "stale": (401, "stale_signature", None), "missing_signature": (401, "missing_signature", None),
        "order_without_id": (422, "missing_field", "order_id"),
    }[case]
    if case == "malformed_json":
        payload = b'{"email": "a@b.cz",'
    elif case == "not_an_object":
        payload = b'["a@b.cz"]'
    elif case == "wrong_type":
        payload = {"email": "ok@example.com", "value": "twelve"}
    elif case == "unknown_field":
        payload = {"email": "ok@example.com", "sesion_id": "x"}
    elif case == "no_identity":
        payload = {"name": "Anon", "message": "hi"}
    elif case == "bad_email":
        payload = {"email": "not-an-email"}
    elif case == "bad_phone":
        payload = {"phone": "12"}
    elif case == "too_large":
        payload = {"email": "ok@example.com", "message": "x" * 9000}
    elif case == "wrong_content_type":
        headers = {"Content-Type": "text/xml"}
    elif case == "bad_signature":
        secret = "not-the-secret-at-all"
    elif case == "stale":
        t = now - 301
    elif case == "missing_signature":
        headers = {"X-Halo-Signature": ""}
    elif case == "order_without_id":
        payload = {"value": 10}
    status, body, _ = await post_json(http, site, path, payload, clock, t=t, headers=headers, secret=secret)
    assert status == expected[0], body
    assert body["error"] == expected[1]
    assert body["detail"]
    if expected[2]:
        assert body["field"] == expected[2]
    assert await clean.fetchval("SELECT count(*) FROM conversions") == 0


async def test_form_post_from_a_foreign_origin_is_refused(site, http, clean):
    async with http.post(url(site, "/_halo/webhook/lead"), data={"email": "a@example.com"},
                         headers={"Host": HOST, "Origin": "https://evil.example"}, allow_redirects=False) as r:
        assert r.status == 403
        assert (await r.json())["error"] == "forbidden_origin"
    async with http.post(url(site, "/_halo/webhook/lead"), data={"email": "a@example.com"},
                         headers={"Host": HOST}, allow_redirects=False) as r:
        assert r.status == 403
    assert await clean.fetchval("SELECT count(*) FROM conversions") == 0


async def test_a_key_of_one_tenant_never_writes_to_another(site, http, clock, clean):
    status, _, _ = await post_json(http, site, "/_halo/webhook/lead", {"email": "a@example.com"}, clock,
                                   host="other.localhost")
    assert status == 401  # shop's secret is not other's
    status, _, _ = await post_json(http, site, "/_halo/webhook/lead", {"email": "a@example.com"}, clock,
                                   host="other.localhost", secret="other-secret-0123456789")
    assert status == 201
    assert await clean.fetchval("SELECT count(*) FROM conversions WHERE tenant_id = 'shop'") == 0


async def test_browser_routes_are_rate_limited_per_ip(aiohttp_server, upstream, clean, clock, http):
    server = await aiohttp_server(create_app(settings(upstream.port, burst=3), Metrics(), keys=KEYS, pool=clean,
                                             migrate=False, clock=clock))
    statuses = []
    for _ in range(5):
        async with http.post(url(server, "/_halo/identify"), json={"email": "a@example.com", "session_id": "x"},
                             headers={"Host": HOST}) as r:
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert (await r.json())["error"] == "rate_limited"
    assert statuses[:3] == [422, 422, 422] and statuses[3:] == [429, 429]


async def test_database_down_answers_503_with_retry_after(upstream, clock):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    app = create_app(settings(upstream.port), Metrics(), keys=KEYS, dsn=f"postgresql://x@127.0.0.1:{port}/x",
                     clock=clock)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    server = type("S", (), {"port": tcp._server.sockets[0].getsockname()[1]})()  # noqa: SLF001
    try:
        async with aiohttp.ClientSession() as http:
            status, body, headers = await post_json(http, server, "/_halo/webhook/lead",
                                                    {"email": "a@example.com"}, clock)
    finally:
        await runner.cleanup()
    assert status == 503 and body["error"] == "database_unavailable" and headers["Retry-After"]


async def test_raw_tables_hold_no_plain_email_phone_or_ip(site, http, clock, clean):
    cookie = await three_day_journey(http, site, clock)
    async with http.post(url(site, "/_halo/identify"), json={"email": "secret.person@example.com"},
                         headers={"Host": HOST, "Cookie": f"_halo={cookie}"}) as r:
        assert r.status == 200
    await post_json(http, site, "/_halo/webhook/order",
                    {"order_id": "o-1", "value": 99, "email": "secret.person@example.com",
                     "phone": "+420 777 888 999", "name": "Secret Person", "session_id": cookie}, clock)
    dump = []
    for table in ("sessions", "touches", "identities", "conversions", "forwards", "anon_events"):
        for row in await clean.fetch(f"SELECT * FROM {table}"):  # noqa: S608 - fixed table names
            dump.append(repr(dict(row)))
    text = "\n".join(dump)
    for plain in ("secret.person", "777888999", "777 888 999", "127.0.0.1", "Secret Person"):
        assert plain not in text, plain


# ---------------------------------------------------------------------------------------------------------
# The routes' trust boundary: compressed bodies, open redirects, hostile multipart, broken-off bodies.


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
async def test_a_compressed_signed_lead_is_decoded_and_stored(site, http, clock, clean, coding):
    import gzip as gzip_mod
    import zlib

    import brotli

    body = json.dumps({"email": "z@example.cz", "event_id": f"zip-{coding}"}).encode()
    packed = {"gzip": gzip_mod.compress, "deflate": zlib.compress, "br": brotli.compress}[coding](body)
    stamp = int(clock.now.timestamp())
    headers = {"Host": HOST, "Content-Type": "application/json", "Content-Encoding": coding,
               "X-Halo-Signature": sign(body, stamp)}  # signed over the JSON, as the sender wrote it
    async with http.post(url(site, "/_halo/webhook/lead"), data=packed, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
    assert await clean.fetchval("SELECT count(*) FROM conversions") == 1


@pytest.mark.parametrize(("coding", "payload", "status", "code"), [
    ("gzip", "bomb", 413, "body_too_large"),  # 2 MB of zeros in a few KB: the 8 KB cap holds after decoding
    ("br", "bomb", 413, "body_too_large"),
    ("gzip", "garbage", 400, "invalid_encoding"),
    ("gzip", "truncated", 400, "invalid_encoding"),
    ("compress", "garbage", 415, "unsupported_content_encoding"),
])
async def test_a_bad_compressed_body_is_a_clear_error(site, http, clock, clean, coding, payload, status, code):
    import gzip as gzip_mod

    import brotli

    plain = json.dumps({"email": "z@example.cz", "pad": "0" * 2_000_000}).encode()
    data = {"bomb": (brotli.compress if coding == "br" else gzip_mod.compress)(plain),
            "garbage": b"\x1f\x8bnot really gzip", "truncated": gzip_mod.compress(b'{"email": "z@example.cz"}')[:20]}[
        payload]
    headers = {"Host": HOST, "Content-Type": "application/json", "Content-Encoding": coding,
               "X-Halo-Signature": sign(plain, int(clock.now.timestamp()))}
    async with http.post(url(site, "/_halo/webhook/lead"), data=data, headers=headers) as resp:
        assert resp.status == status
        assert (await resp.json())["error"] == code
    assert await clean.fetchval("SELECT count(*) FROM conversions") == 0


@pytest.mark.parametrize("target", [
    f"http://{HOST}:1@evil.com/", f"http://{HOST}@evil.com/", "//evil.com/", "/\\evil.com", "http://evil.com/",
    f"http://evil.com\\@{HOST}/", "javascript:alert(1)", "/\tevil",
])
async def test_a_form_redirect_never_leaves_the_tenant(site, http, clean, target):
    headers = {"Host": HOST, "Origin": f"http://{HOST}"}
    async with http.post(url(site, "/_halo/webhook/lead"), data={"email": "r@example.cz", "_redirect": target},
                         headers=headers, allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"] == "/"


async def test_a_form_from_an_origin_with_userinfo_is_foreign(site, http, clean):
    headers = {"Host": HOST, "Origin": f"http://{HOST}:1@evil.com"}
    async with http.post(url(site, "/_halo/webhook/lead"), data={"email": "r@example.cz"}, headers=headers,
                         allow_redirects=False) as r:
        assert r.status == 403


@pytest.mark.parametrize("part_type", [
    'text/plain; charset="utf-8\x00"', "text/plain; charset=no-such-codec", "text/plain; charset=utf-16",
])
async def test_a_hostile_multipart_part_is_400_not_500(site, http, clean, part_type):
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"email\"\r\nContent-Type: {part_type}\r\n\r\n"
            f"m@example.cz\r\n--{boundary}--\r\n").encode()
    headers = {"Host": HOST, "Origin": f"http://{HOST}", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with http.post(url(site, "/_halo/webhook/lead"), data=body, headers=headers, allow_redirects=False) as r:
        assert r.status in (303, 400, 422), await r.text()  # never a 500
        if r.status == 400:
            assert (await r.json())["error"] == "invalid_form"


async def test_a_webhook_body_broken_off_is_not_database_unavailable(upstream, clean, clock):
    # On the production listener, whose handlers run to the end when the visitor goes away (aiohttp's test
    # server cancels them instead, which would hide the defect).
    from halo_proxy.edge.connections import ListenerRunner

    metrics = Metrics()
    the_settings = settings(upstream.port)
    runner = ListenerRunner(create_app(the_settings, metrics, keys=KEYS, pool=clean, migrate=False, clock=clock),
                            client=the_settings.server.client, metrics=metrics)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(f"POST /_halo/webhook/lead HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 500\r\n\r\n{\"email\":".encode())
        await writer.drain()
        writer.close()  # the visitor goes away mid-body
        await writer.wait_closed()
    finally:
        await runner.cleanup()  # waits for the handler to finish its answer
    rejected = metrics.registry.get_sample_value
    labels = {"tenant": "shop", "reason": "body_incomplete"}
    assert rejected("halo_rejected_requests_total", labels) == 1
    assert rejected("halo_rejected_requests_total", {"tenant": "shop", "reason": "database_unavailable"}) is None


async def test_a_stalled_webhook_body_is_408(aiohttp_server, upstream, clean, clock):
    text = settings(upstream.port)
    from dataclasses import replace

    client = replace(text.server.client, body_timeout_s=0.3)
    stalled = replace(text, server=replace(text.server, client=client))
    server = await aiohttp_server(create_app(stalled, Metrics(), keys=KEYS, pool=clean, migrate=False, clock=clock))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"POST /_halo/webhook/lead HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                 "Content-Length: 500\r\n\r\n{\"email\":".encode())
    answer = await asyncio.wait_for(reader.read(-1), 5)  # 408, then the connection is closed
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"body_timeout" in answer


async def test_an_invalid_signed_shopify_or_stripe_payload_is_422_not_500(site, http, clock, clean):
    body = json.dumps({"id": 1, "total_price": "abc"}).encode()
    digest = base64.b64encode(hmac.new(SHOPIFY.encode(), body, hashlib.sha256).digest()).decode()
    async with http.post(url(site, "/_halo/webhook/shopify"), data=body, headers={
            "Host": HOST, "Content-Type": "application/json", "X-Shopify-Hmac-Sha256": digest,
            "X-Shopify-Topic": "orders/create"}) as r:
        assert r.status == 422
        assert (await r.json())["field"] == "total_price"
    event = stripe_event(None)
    event["data"]["object"]["amount_total"] = "lots"
    body = json.dumps(event).encode()
    now = int(clock.now.timestamp())
    mac = hmac.new(STRIPE.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    async with http.post(url(site, "/_halo/webhook/stripe"), data=body, headers={
            "Host": HOST, "Content-Type": "application/json", "Stripe-Signature": f"t={now},v1={mac}"}) as r:
        assert r.status == 422, await r.text()
    assert await clean.fetchval("SELECT count(*) FROM conversions") == 0


async def test_a_lead_for_a_session_still_queued_does_not_hang_a_one_connection_pool(database, clean):
    """Matching flushes the page-view writer, which takes a connection of its own: the lead must not hold one
    while it does (with every connection held, each lead waited for itself)."""
    from uuid import uuid4

    from halo_proxy.services.conversions import Conversions
    from halo_proxy.storage.db import create_pool
    from halo_proxy.storage.sessions import SessionWrite
    from halo_proxy.storage.write_queue import VisitWriter
    from halo_proxy.tracking.conversion import parse_lead
    from halo_proxy.tracking.models import Consent, Device, Geo, Touch

    pool = await create_pool(database.dsn, min_size=1, max_size=1)
    try:
        metrics = Metrics()
        writer = VisitWriter(pool, metrics)  # not started: the visit stays queued until someone flushes
        session_id = uuid4()
        writer.submit(SessionWrite(tenant_id="shop", session_id=session_id, is_new=True,
                                   touch=Touch(at=DAY1, source="google", medium="cpc"),
                                   device=Device("desktop", None, None), geo=Geo(),
                                   consent=Consent(True, True, source="x"), at=DAY1))
        tenant = settings(1).tenant("shop")
        conversions = Conversions(pool, KEYS, writer, metrics)
        lead = parse_lead({"email": "q@example.cz", "event_id": "queued-1"}, source="api",
                          default_region="CZ", default_currency="CZK")
        recorded = await asyncio.wait_for(
            conversions.record(tenant, lead, session_id, DAY1 + timedelta(minutes=1)), 10)
    finally:
        await pool.close()
    assert recorded.created and recorded.body["match_type"] == "session"


async def test_a_conversion_right_after_a_campaign_click_counts_that_click(database, clean):
    """The visitor's latest page view (a new touch) still sits in the page-view queue when their lead arrives: the
    queue is flushed first, so the lead is credited to that click, not only to the touches stored before."""
    from uuid import uuid4

    from halo_proxy.services.conversions import Conversions
    from halo_proxy.storage.db import create_pool
    from halo_proxy.storage.sessions import SessionWrite
    from halo_proxy.storage.write_queue import VisitWriter
    from halo_proxy.tracking.conversion import parse_lead
    from halo_proxy.tracking.models import Consent, Device, Geo, Touch

    pool = await create_pool(database.dsn, min_size=1, max_size=2)
    try:
        metrics = Metrics()
        writer = VisitWriter(pool, metrics)  # not started: only a flush writes
        session_id = uuid4()

        def visit(at, source, medium, is_new):
            return SessionWrite(tenant_id="shop", session_id=session_id, is_new=is_new,
                                touch=Touch(at=at, source=source, medium=medium), device=Device("desktop", None, None),
                                geo=Geo(), consent=Consent(True, True, source="x"), at=at)

        writer.submit(visit(DAY1, "google", "cpc", True))
        await writer.flush()
        clicked = DAY1 + timedelta(days=1)
        writer.submit(visit(clicked, "facebook", "social", False))  # queued, not yet written
        assert writer.holds("shop", session_id) and not writer.holds("other", session_id)
        conversions = Conversions(pool, KEYS, writer, metrics)
        lead = parse_lead({"email": "q@example.cz", "event_id": "right-after"}, source="api",
                          default_region="CZ", default_currency="CZK")
        recorded = await conversions.record(settings(1).tenant("shop"), lead, session_id,
                                            clicked + timedelta(seconds=1))
        assert not writer.holds("shop", session_id)
    finally:
        await pool.close()
    attribution = recorded.body["attribution"]
    assert recorded.created and recorded.body["match_type"] == "session"
    assert (attribution["first_touch"]["source"], attribution["last_touch"]["source"]) == ("google", "facebook")


async def test_a_conversion_waits_a_bounded_time_for_its_queued_page_view(database, clean, monkeypatch):
    """The write queue cannot store the visitor's latest page view (here its flush is held): the lead does not wait
    for ever; after the bound it is matched on what is stored, and the page view is stored later all the same."""
    from uuid import uuid4

    from halo_proxy.services import conversions as conversion_service
    from halo_proxy.services.conversions import Conversions
    from halo_proxy.storage.db import create_pool
    from halo_proxy.storage.sessions import SessionWrite
    from halo_proxy.storage.write_queue import VisitWriter
    from halo_proxy.tracking.conversion import parse_lead
    from halo_proxy.tracking.models import Consent, Device, Geo, Touch

    monkeypatch.setattr(conversion_service, "QUEUED_VISIT_WAIT_S", 0.05)
    pool = await create_pool(database.dsn, min_size=1, max_size=2)
    try:
        metrics = Metrics()
        writer = VisitWriter(pool, metrics)  # not started: only a flush writes
        session_id = uuid4()

        def visit(at, source, is_new):
            return SessionWrite(tenant_id="shop", session_id=session_id, is_new=is_new,
                                touch=Touch(at=at, source=source, medium="cpc"), device=Device("desktop", None, None),
                                geo=Geo(), consent=Consent(True, True, source="x"), at=at)

        writer.submit(visit(DAY1, "google", True))
        await writer.flush()
        writer.submit(visit(DAY1 + timedelta(days=1), "bing", False))
        async with writer._lock:  # a flush in progress that does not end (the database far behind)
            lead = parse_lead({"email": "w@example.cz", "event_id": "bounded"}, source="api",
                              default_region="CZ", default_currency="CZK")
            recorded = await asyncio.wait_for(Conversions(pool, KEYS, writer, metrics).record(
                settings(1).tenant("shop"), lead, session_id, DAY1 + timedelta(days=1, seconds=1)), 20)
        assert await writer.flush() is True
        stored = await conversion_store.list_conversions(pool, "shop", DAY1, DAY1 + timedelta(days=5))
        touches = await clean.fetchval("SELECT count(*) FROM touches WHERE session_id = $1", session_id)
    finally:
        await pool.close()
    assert recorded.created and recorded.body["attribution"]["last_touch"]["source"] == "google"
    assert len(stored) == 1 and touches == 2


@pytest.mark.parametrize("route", ["/_halo/webhook/order", "/_halo/webhook/lead", "/_halo/identify",
                                   "/_halo/webhook/shopify", "/_halo/webhook/stripe"])
async def test_a_content_type_that_made_the_header_parser_recurse_is_not_a_500(site, http, route):
    headers = {"Host": HOST, "Origin": f"http://{HOST}", "Content-Type": "application/json; " + "(" * 1000}
    async with http.post(url(site, route), data=b"{}", headers=headers, allow_redirects=False) as r:
        assert r.status < 500 and r.status != 200, r.status
        assert (await r.json())["error"]
