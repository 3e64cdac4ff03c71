"""No personal data in logs or error answers: a full journey (visits, identify, events, leads, orders, Shopify,
Stripe, consent, delete, export, bad inputs of every kind) with every HaloTrack log record captured at DEBUG and
every non-2xx body kept; none of them holds an email, phone, name, visitor IP, cookie value, key or secret used."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time

import aiohttp
import pytest

from halo_proxy.app import WRITER, create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.metrics import Metrics
from halo_proxy.operators import key_digest
from tests.conftest import days_around_today
from tests.procs import TEST_SECRET
from tests.upstream import create_upstream

KEYS = KeyRing(TEST_SECRET)
HOST = "shop.localhost"
SECRET, SHOPIFY, STRIPE = "whsec-logscan-0123456789", "shpss-logscan-0123456789", "whsec_stripe-logscan-0123"
KEY = "halo_logscan-operator-key-0123456789"
IP = "203.0.113.77"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"
EMAIL, PHONE, NAME = "eliska.dvorakova@example.cz", "+420 602 111 222", "Eliška Dvořáková"
SECRETS = [EMAIL, "eliska", "dvorakova", "Dvořáková", "602111222", "602 111 222", IP, SECRET, SHOPIFY, STRIPE, KEY,
           "ken.tanaka@example.jp", "Tanaka", "9001002003"]




@pytest.fixture
async def site(aiohttp_server, clean, unused_tcp_port_factory):
    upstream = await aiohttp_server(create_upstream())
    settings = parse(f"""
server:
  trusted_proxies: [127.0.0.1/32]
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream.port}
    default_phone_region: CZ
    webhook_secret: {SECRET}
    shopify_secret: {SHOPIFY}
    stripe_secret: {STRIPE}
    max_body_kb: 8
    api_keys: [{{name: ops, sha256: "{key_digest(KEY)}", scopes: [privacy, report]}}]
    forwarders:
      meta: {{pixel_id: "1", access_token: token-logscan-secret, base_url: "http://127.0.0.1:{unused_tcp_port_factory()}"}}
""", "t.yaml", {})
    # As server.py runs HaloTrack: no access log (a request line may carry `?email=` of an operator route).
    return await aiohttp_server(create_app(settings, Metrics(), keys=KEYS, pool=clean, migrate=False),
                                access_log=None)


def stamp(secret: str, body: bytes) -> str:
    t = int(time.time())
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


async def test_a_full_journey_leaves_no_personal_data_in_logs_or_error_answers(site, clean, caplog):
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    base = f"http://127.0.0.1:{site.port}"
    visitor = {"Host": HOST, "X-Forwarded-For": IP, "User-Agent": UA}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async def call(method: str, path: str, body: bytes | None = None, **headers: str) -> aiohttp.ClientResponse:
            async with http.request(method, base + path, data=body, headers={**visitor, **headers},
                                    allow_redirects=False) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    errors.append(text)
                resp.text_body = text  # type: ignore[attr-defined]
                return resp

        page = await call("GET", "/?utm_source=google&utm_medium=cpc&gclid=g-logscan", Accept="text/html",
                          **{"Sec-Fetch-Dest": "document"})
        cookie = page.cookies["_halo"].value
        SECRETS.append(cookie)
        jar = {"Cookie": f"_halo={cookie}", "Origin": f"http://{HOST}", "Content-Type": "application/json"}
        await call("POST", "/_halo/identify", json.dumps({"email": EMAIL, "phone": PHONE}).encode(), **jar)
        await call("POST", "/_halo/event", json.dumps({"name": "signup", "props": {"email": EMAIL}}).encode(), **jar)
        form = f"email={EMAIL}&phone={PHONE}&name={NAME}&message=hello&_redirect=/thanks".encode()
        await call("POST", "/_halo/webhook/lead", form, Cookie=f"_halo={cookie}", Origin=f"http://{HOST}",
                   **{"Content-Type": "application/x-www-form-urlencoded"})
        order = json.dumps({"order_id": "o-1", "value": 10, "email": EMAIL, "phone": PHONE}).encode()
        await call("POST", "/_halo/webhook/order", order, **{"Content-Type": "application/json",
                                                            "X-Halo-Signature": stamp(SECRET, order)})
        shop = json.dumps({"id": 9001002003, "email": "ken.tanaka@example.jp", "total_price": "5.00",
                           "currency": "CZK", "customer": {"first_name": "Ken", "last_name": "Tanaka"},
                           "created_at": "2026-11-04T10:00:00+01:00", "note_attributes": []}).encode()
        digest = base64.b64encode(hmac.new(SHOPIFY.encode(), shop, hashlib.sha256).digest()).decode()
        await call("POST", "/_halo/webhook/shopify", shop, **{"Content-Type": "application/json",
                   "X-Shopify-Hmac-Sha256": digest, "X-Shopify-Topic": "orders/create"})
        stripe = json.dumps({"id": "evt_1", "type": "checkout.session.completed", "created": int(time.time()),
                             "data": {"object": {"id": "cs_1", "amount_total": 500, "currency": "czk",
                                                 "customer_details": {"email": "ken.tanaka@example.jp",
                                                                      "name": "Ken Tanaka"}}}}).encode()
        await call("POST", "/_halo/webhook/stripe", stripe, **{"Content-Type": "application/json",
                   "Stripe-Signature": stamp(STRIPE, stripe)})
        # Bad inputs that carry the same personal data: each must be refused without echoing it.
        for body, headers in [
            (f'{{"email": "{EMAIL}", "phone": "{PHONE}", "value": "x"}}'.encode(),
             {"Content-Type": "application/json", "X-Halo-Signature": "t=1,v1=00"}),
            (f'{{"email": "{EMAIL}" "phone"}}'.encode(), {"Content-Type": "application/json",
                                                        "X-Halo-Signature": stamp(SECRET, b"x")}),
            (json.dumps({"email": f"{EMAIL}@@", "name": NAME}).encode(), {"Content-Type": "application/json"}),
        ]:
            signed = {**headers}
            if headers.get("X-Halo-Signature", "").startswith("t=") and "00" not in headers["X-Halo-Signature"]:
                signed["X-Halo-Signature"] = stamp(SECRET, body)
            await call("POST", "/_halo/webhook/lead", body, **signed)
        await call("POST", "/_halo/identify", json.dumps({"email": "not-an-email", "phone": PHONE + "99999"}).encode(),
                   **jar)
        await call("POST", "/_halo/identify", json.dumps({"email": EMAIL, "x": NAME}).encode(), **jar)
        await call("POST", "/_halo/consent", json.dumps({"analytics": "yes", "marketing": EMAIL}).encode(), **jar,
                   Referer=f"http://{HOST}/")
        await call("DELETE", f"/_halo/delete-user?email={EMAIL}", Authorization=f"Bearer {KEY}x")
        await call("GET", f"/_halo/export-user?phone={PHONE}99", Authorization=f"Bearer {KEY}")
        await call("GET", f"/_halo/export-user?email={EMAIL}", Authorization=f"Bearer {KEY}")
        await call("DELETE", f"/_halo/delete-user?email={EMAIL}&phone={PHONE}", Authorization=f"Bearer {KEY}")
        # The report and the dashboard: a wrong key, then a sign-in whose session token must not leak either.
        await call("GET", f"/_halo/report?{days_around_today()}&model={EMAIL}", Authorization=f"Bearer {KEY}")
        await call("GET", f"/_halo/report?{days_around_today()}&format=csv", Authorization=f"Bearer {KEY}")
        form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{HOST}"}
        await call("POST", "/_halo/dashboard/login", f"key={KEY}x".encode(), **form)
        signed_in = await call("POST", "/_halo/dashboard/login", f"key={KEY}".encode(), **form)
        token = signed_in.cookies["halo_dashboard"].value
        SECRETS.append(token)
        await call("GET", f"/_halo/dashboard?model={EMAIL}", Cookie=f"halo_dashboard={token}")
        await call("GET", "/_halo/dashboard", Cookie=f"halo_dashboard={token}")
        await call("POST", "/_halo/dashboard/logout", b"csrf=wrong", Cookie=f"halo_dashboard={token}", **form)
        await call("POST", "/_halo/consent", json.dumps({"analytics": False, "marketing": False}).encode(), **jar,
                   Referer=f"http://{HOST}/")
        assert await site.app[WRITER].flush()
    assert len(errors) >= 8  # the bad inputs above were refused, each with a body
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    for needle in SECRETS:
        assert needle.lower() not in logged.lower(), f"{needle!r} in the logs"
        for body in errors:
            assert needle.lower() not in body.lower(), f"{needle!r} in an error answer: {body}"


def test_the_server_runs_without_an_access_log():
    import inspect

    from halo_proxy import server

    source = inspect.getsource(server)
    assert source.count("access_log=None") >= 3  # the listener, the metrics app and the single-process runner
