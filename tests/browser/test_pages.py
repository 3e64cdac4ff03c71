"""HaloTrack in a real browser, through the proxy in front of the demo shop: a UTM landing page gets the HttpOnly
`_halo` cookie that the page's scripts cannot read, the visit is stored with its campaign, and the shop's contact
form, submitted by the browser, ends as a lead matched by the session."""

from __future__ import annotations

import pytest

from halo_proxy.app import WRITER, create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.demo import create_demo_site, demo_config
from halo_proxy.metrics import Metrics
from halo_proxy.storage import sessions
from tests.procs import TEST_SECRET

KEYS = KeyRing(TEST_SECRET)




@pytest.fixture
async def shop(aiohttp_server, clean):
    site = await aiohttp_server(create_demo_site())
    settings = parse(demo_config(site.port, "whsec-browser-test-0123456789"), "demo.yaml", {})
    proxy = await aiohttp_server(create_app(settings, Metrics(), keys=KEYS, pool=clean, migrate=False))
    yield proxy
    await proxy.close()


async def test_a_campaign_landing_gets_an_httponly_cookie_and_is_stored(shop, context, clean):
    page = await context.new_page()
    base = f"http://localhost:{shop.port}"
    answer = await page.goto(f"{base}/?utm_source=google&utm_medium=cpc&utm_campaign=winter&gclid=pw-1")
    assert answer is not None and answer.status == 200
    assert (await page.title()).startswith("Home")
    [cookie] = [c for c in await context.cookies() if c["name"] == "_halo"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["domain"] == "localhost"
    assert "_halo" not in await page.evaluate("document.cookie")  # the page's own scripts cannot read it
    assert await shop.app[WRITER].flush()
    session_id = KEYS.open_session("demo", cookie["value"])
    stored = await sessions.get_session(clean, "demo", session_id)
    assert stored is not None and stored.first_touch.campaign == "winter"
    assert stored.click_id_values == {"gclid": "pw-1"}
    assert stored.device.browser == "Chrome"  # the desktop user agent, not a bot


async def test_the_shop_s_contact_form_ends_as_a_lead_matched_by_session(shop, context, clean):
    page = await context.new_page()
    base = f"http://localhost:{shop.port}"
    await page.goto(f"{base}/?utm_source=newsletter&utm_medium=email")
    await page.goto(f"{base}/contact")
    await page.fill("input[name=email]", "Browser.User@Example.com")
    await page.fill("textarea[name=message]", "Hello from a real browser")
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == f"{base}/thanks" and (await page.title()).startswith("Thank you")
    # The lead is committed before the 303 the browser followed.
    row = await clean.fetchrow("SELECT match_type, source FROM conversions WHERE tenant_id = 'demo'")
    assert row is not None and (row["match_type"], row["source"]) == ("session", "form")
