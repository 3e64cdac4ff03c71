"""The dashboard in a real browser, as a newcomer meets it after the demo journey: a Google ad, a Facebook ad, a
direct visit and the contact form in chromium; the thank-you page's link to the dashboard; sign-in with the
demo's operator key; their own lead with its channel and path; the model switched, and the numbers changing
as the report says; readable on a phone without sideways scrolling. The screenshot of `docs/dashboard.png` is
taken here (HALO_DASHBOARD_SCREENSHOT names where to write it; a temporary file otherwise).

Every wait is on an event (a navigation, a response); never a sleep."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest

from halo_proxy.app import WRITER, create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.demo import create_demo_site, demo_config
from halo_proxy.metrics import Metrics
from halo_proxy.operators import new_key
from tests.procs import TEST_SECRET

KEYS = KeyRing(TEST_SECRET)
SECRET = "whsec-browser-test-0123456789"
OPERATOR_KEY = new_key()
PAGE = {"Accept": "text/html", "Sec-Fetch-Dest": "document",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"}




@pytest.fixture
async def shop(aiohttp_server, clean):
    site = await aiohttp_server(create_demo_site())
    settings = parse(demo_config(site.port, SECRET, OPERATOR_KEY), "demo.yaml", {})
    proxy = await aiohttp_server(create_app(settings, Metrics(), keys=KEYS, pool=clean, migrate=False))
    yield proxy
    await proxy.close()


async def more_customers(shop) -> None:  # type: ignore[no-untyped-def]
    """Orders of other visitors (a newsletter, a Google ad twice, a Facebook ad), sent by the shop's server."""
    base = f"http://localhost:{shop.port}"
    journeys = [("newsletter", ["?utm_source=newsletter&utm_medium=email&utm_campaign=december"], 1890),
                ("google", ["?utm_source=google&utm_medium=cpc&utm_campaign=winter&gclid=g1",
                            "?utm_source=google&utm_medium=cpc&utm_campaign=brand&gclid=g2"], 5400),
                ("facebook", ["?utm_source=facebook&utm_medium=paid_social&utm_campaign=retargeting&fbclid=f1"],
                 1200)]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for name, landings, value in journeys:
            cookie = None
            for landing in landings:
                headers = {**PAGE, "Host": f"localhost:{shop.port}"}
                if cookie:
                    headers["Cookie"] = f"_halo={cookie}"
                async with http.get(f"{base}/{landing}", headers=headers) as resp:
                    assert resp.status == 200
                    cookie = resp.cookies["_halo"].value if "_halo" in resp.cookies else cookie
            await shop.app[WRITER].flush()
            body = json.dumps({"order_id": f"demo-{name}", "value": value, "session_id": cookie}).encode()
            t = int(time.time())
            mac = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
            async with http.post(f"{base}/_halo/webhook/order", data=body, headers={
                    "Host": f"localhost:{shop.port}", "Content-Type": "application/json",
                    "X-Halo-Signature": f"t={t},v1={mac}"}) as resp:
                assert resp.status == 201, await resp.text()


async def report(shop, model: str, start: str, end: str) -> dict:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as http, http.get(
            f"http://localhost:{shop.port}/_halo/report?from={start}&to={end}&model={model}",
            headers={"Authorization": f"Bearer {OPERATOR_KEY}"}) as resp:
        assert resp.status == 200
        return await resp.json()


async def table(page) -> list[list[str]]:  # type: ignore[no-untyped-def]
    return await page.eval_on_selector_all(
        "#rows tbody tr", "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.textContent.trim()))")


def number(text: str) -> float:
    return float(text.rsplit(" ", 1)[0].replace("\u202f", "") if " " in text else text.replace("\u202f", ""))


async def test_a_newcomer_sees_their_own_lead_its_channel_and_path(shop, context, clean):
    page = await context.new_page()
    base = f"http://localhost:{shop.port}"
    # The demo journey: a Google ad, a Facebook ad, a direct visit, the contact form.
    await page.goto(f"{base}/?utm_source=google&utm_medium=cpc&utm_campaign=summer&gclid=demo-gclid")
    await page.click("#cky-accept")
    await page.goto(f"{base}/?utm_source=facebook&utm_medium=social&fbclid=demo-fbclid")
    await page.goto(f"{base}/products")
    await page.goto(f"{base}/contact")
    await page.evaluate("HaloTrack.ready()")
    await page.fill("input[name=email]", "newcomer@example.com")
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == f"{base}/thanks"
    await more_customers(shop)

    # The thank-you page leads to the dashboard, which asks for the key first.
    async with page.expect_navigation():
        await page.click("#dashboard-link")
    assert page.url == f"{base}/_halo/dashboard"
    await page.fill("input[name=key]", OPERATOR_KEY)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == f"{base}/_halo/dashboard", await page.inner_text("main")
    [cookie] = [c for c in await context.cookies() if c["name"] == "halo_dashboard"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != OPERATOR_KEY
    assert "halo_dashboard" not in await page.evaluate("document.cookie")  # HttpOnly: no script reads it

    # Their lead: the latest conversions show it with its match and the path that earned it.
    lead = page.locator("#latest .conversion", has_text="Lead").first
    assert "matched by their own visit" in await lead.inner_text()
    path = await lead.locator("ol.path li").all_inner_texts()
    assert [p.split(" / ")[0] for p in path] == ["google", "facebook"]
    assert "Paid Search" in path[0] and "100 %" in path[1]  # last touch: all to the Facebook visit

    start, end = await page.input_value("input[name=from]"), await page.input_value("input[name=to]")
    for model, label in (("last_touch", "Last touch"), ("first_touch", "First touch"), ("linear", "Linear")):
        if model != "last_touch":
            async with page.expect_navigation():
                await page.click(f".models a:has-text('{label}')")
            assert f"model={model}" in page.url
        assert await page.inner_text("#model-name") == label
        expected = await report(shop, model, start, end)  # the page's own range
        rows = await table(page)
        assert [r[:4] for r in rows] == [[r["source"], r["medium"], r["campaign"], r["channel"]]
                                         for r in expected["rows"]]
        assert [number(r[4]) for r in rows] == pytest.approx([r["conversions"] for r in expected["rows"]], abs=0.01)
        assert [number(r[5]) for r in rows] == pytest.approx([r["revenue"] for r in expected["rows"]], abs=0.01)
        if model == "first_touch":
            first_rows = rows
    assert first_rows != rows  # the model changes what each source earned

    # Readable on a phone: nothing wider than the screen but the table's own scroller.
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await page.set_viewport_size({"width": 1280, "height": 900})
    async with page.expect_navigation():
        await page.click(".models a:has-text('Last touch')")
    target = Path(os.environ.get("HALO_DASHBOARD_SCREENSHOT") or Path(os.environ.get("TMPDIR", "/tmp"))
                  / f"halotrack-dashboard-{os.getpid()}.png")
    await page.screenshot(path=str(target), full_page=True)
    assert len(await page.screenshot()) > 10_000

    # Sign out: the next visit asks for the key again.
    async with page.expect_navigation():
        await page.click("text=Sign out")
    assert await page.locator("input[name=key]").count() == 1
    assert await clean.fetchval("SELECT count(*) FROM dashboard_sessions") == 0
