"""HaloTrack's script in a real browser, through the proxy in front of the demo shop: the injected tag loads
`t.js`, `getSessionId()` answers the public id, `identify` and `track` are stored, the contact form posts the
filled `halo_session_id`, the CookieYes-style banner's choices reach `/consent` with the contract's effect, and a
page on an outside origin records its visit through `/touch` with CORS.

Every wait is on an event: a promise of the script's (`HaloTrack.ready()`, the calls' own promises) or a
response Playwright saw; never a sleep."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from halo_proxy.app import WRITER, create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.demo import create_demo_site, demo_config
from halo_proxy.metrics import Metrics
from halo_proxy.storage import events as event_store
from halo_proxy.storage import sessions
from tests.procs import TEST_SECRET

KEYS = KeyRing(TEST_SECRET)




@pytest.fixture
async def outside(aiohttp_server):
    """A page on another origin (127.0.0.1 and its own port) that loads t.js from the proxy's host."""
    pages: dict[str, str] = {}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=pages["html"], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    server = await aiohttp_server(app)
    server.pages = pages  # type: ignore[attr-defined]
    return server


@pytest.fixture
async def shop(aiohttp_server, clean, outside):
    site = await aiohttp_server(create_demo_site())
    text = demo_config(site.port, "whsec-browser-test-0123456789")
    text += f'    external_origins: ["http://127.0.0.1:{outside.port}"]\n'
    proxy = await aiohttp_server(create_app(parse(text, "demo.yaml", {}), Metrics(), keys=KEYS, pool=clean,
                                            migrate=False))
    yield proxy
    await proxy.close()


def session_of(cookies: list[dict]) -> str | None:  # type: ignore[type-arg]
    found = [c["value"] for c in cookies if c["name"] == "_halo"]
    return found[0] if found else None


async def test_the_injected_script_answers_the_public_session_id_and_sends_track_and_identify(shop, context, clean):
    page = await context.new_page()
    base = f"http://localhost:{shop.port}"
    await page.goto(f"{base}/products?utm_source=google&utm_medium=cpc&utm_campaign=winter")
    assert await page.locator('head > script[src="/_halo/t.js"]').count() == 1
    public = await page.evaluate("HaloTrack.ready()")
    cookie = session_of(await context.cookies())
    session_id = KEYS.open_session("demo", cookie)
    assert public == str(session_id) and public != cookie
    assert await page.evaluate("HaloTrack.getSessionId()") == public
    async with page.expect_response(lambda r: r.url.endswith("/_halo/event")) as sent:
        await page.click("button.add-to-cart[data-sku=anvil]")
    assert await (await sent.value).json() == {"accepted": True}
    [event] = await event_store.events_for_sessions(clean, "demo", [session_id])
    assert event.name == "add_to_cart"
    assert json.loads(KEYS.decrypt("demo", "events", "props_enc", event.props_enc))["sku"] == "anvil"
    answer = await page.evaluate("HaloTrack.identify({email: 'Ann.Browser@Example.com'})")
    assert answer["linked"] == ["email"]
    assert await clean.fetchval("SELECT count(*) FROM identities WHERE session_id = $1", session_id) == 1


async def test_calls_queued_before_the_script_loaded_are_sent(shop, context, clean):
    page = await context.new_page()
    base = f"http://localhost:{shop.port}"
    # The demo's queue stub is in <head>: a call made by inline code runs before the async script arrives.
    await page.add_init_script("window.HaloTrack={q:[['track',['queued_early',{n:1}]]]}")
    async with page.expect_response(lambda r: r.url.endswith("/_halo/event")) as sent:
        await page.goto(f"{base}/?utm_source=news")
    assert await (await sent.value).json() == {"accepted": True}  # replayed once the session was known
    session_id = await page.evaluate("HaloTrack.ready()")
    names = [e.name for e in await event_store.events_for_sessions(clean, "demo", [session_id])]
    assert names == ["queued_early"]


async def test_the_contact_form_posts_the_filled_session_id_and_ends_as_a_lead_matched_by_session(
        shop, context, clean):
    page = await context.new_page()
    base = f"http://localhost:{shop.port}"
    await page.goto(f"{base}/?utm_source=newsletter&utm_medium=email")
    await page.goto(f"{base}/contact")
    public = await page.evaluate("HaloTrack.ready()")
    assert await page.input_value("input[name=halo_session_id]") == public
    await page.fill("input[name=email]", "form.user@example.com")
    async with page.expect_request(lambda r: r.url.endswith("/_halo/webhook/lead")) as posted:
        async with page.expect_navigation():
            await page.click("button[type=submit]")
    assert f"halo_session_id={public}" in ((await posted.value).post_data or "")
    assert page.url == f"{base}/thanks"
    row = await clean.fetchrow("SELECT match_type, session_id FROM conversions WHERE tenant_id = 'demo'")
    assert (row["match_type"], str(row["session_id"])) == ("session", public)


async def test_a_form_added_later_gets_the_field_too(shop, context):
    page = await context.new_page()
    await page.goto(f"http://localhost:{shop.port}/")
    public = await page.evaluate("HaloTrack.ready()")
    value = await page.evaluate("""() => new Promise((resolve) => {
        const form = document.createElement('form');
        form.method = 'post'; form.action = '/_halo/webhook/lead';
        document.body.appendChild(form);
        new MutationObserver(() => {
            const input = form.querySelector('input[name=halo_session_id]');
            if (input) resolve(input.value);
        }).observe(form, {childList: true});
    })""")
    assert value == public
    outside = await page.evaluate("""() => {
        const form = document.createElement('form');
        form.method = 'post'; form.action = 'https://elsewhere.example/subscribe';
        document.body.appendChild(form);
        form.dispatchEvent(new Event('submit', {cancelable: true, bubbles: true}));
        return form.querySelectorAll('input[name=halo_session_id]').length;
    }""")
    assert outside == 0  # another site's form never receives the visitor's id


async def test_the_banner_s_withdrawal_and_consent_have_the_contract_s_effect(shop, context, clean):
    page = await context.new_page()
    base = f"http://localhost:{shop.port}"
    await page.goto(f"{base}/?utm_source=facebook&utm_medium=social&fbclid=pw-fb")
    first = await page.evaluate("HaloTrack.ready()")
    assert first is not None
    await page.evaluate("HaloTrack.identify({email: 'withdraw.me@example.com'})")
    # Reject all: t.js reports CookieYes's cookieyes_consent_update to /consent.
    await page.click("#cky-settings")
    async with page.expect_response(lambda r: r.url.endswith("/_halo/consent")) as answered:
        await page.click("#cky-reject")
    assert await (await answered.value).json() == {"analytics": False, "marketing": False, "session_id": None}
    names = {c["name"] for c in await context.cookies()}
    assert "_halo" not in names and "_fbc" not in names and "_fbp" not in names
    assert "cookieyes-consent" in names and "_halo_consent" in names
    assert await page.evaluate("HaloTrack.getSessionId()") is None
    assert await clean.fetchval("SELECT count(*) FROM identities") == 0
    row = await clean.fetchrow("SELECT consent_analytics, ip_hash, user_agent_enc FROM sessions WHERE id = $1::uuid",
                               first)
    assert (row["consent_analytics"], row["ip_hash"], row["user_agent_enc"]) == (False, None, None)
    # Later pages are not tracked: no cookie, no new session, and nothing reported again.
    await page.goto(f"{base}/products?utm_source=google")
    assert await page.evaluate("HaloTrack.ready()") is None
    assert session_of(await context.cookies()) is None
    assert await shop.app[WRITER].flush()
    assert await clean.fetchval("SELECT count(*) FROM sessions") == 1
    # Accept all: a visitor without a session gets one, from the page they are on.
    await page.click("#cky-settings")
    async with page.expect_response(lambda r: r.url.endswith("/_halo/consent")) as answered:
        await page.click("#cky-accept")
    granted = await (await answered.value).json()
    assert granted["analytics"] is True and granted["session_id"] not in (None, first)
    assert await page.evaluate("HaloTrack.getSessionId()") == granted["session_id"]
    assert KEYS.open_session("demo", session_of(await context.cookies())) is not None
    assert await shop.app[WRITER].flush()
    record = await sessions.get_session(clean, "demo", KEYS.session_from_ref("demo", granted["session_id"]))
    assert record.first_touch.source == "google"


async def test_a_page_on_an_outside_origin_records_its_visit_through_touch(shop, outside, context, clean):
    outside.pages["html"] = (
        f'<!doctype html><html><head><script src="http://localhost:{shop.port}/_halo/t.js" async></script>'
        "</head><body>Landing page elsewhere</body></html>")
    page = await context.new_page()
    await page.goto(f"http://127.0.0.1:{outside.port}/offer?utm_source=google&utm_medium=cpc&utm_campaign=far")
    await page.wait_for_function("window.HaloTrack && window.HaloTrack.loaded")
    public = await page.evaluate("HaloTrack.ready()")
    assert public is not None
    assert await page.evaluate("localStorage.getItem('halo_sid')") == public
    assert await shop.app[WRITER].flush()
    record = await sessions.get_session(clean, "demo", KEYS.session_from_ref("demo", public))
    assert record.first_touch.campaign == "far"
    # The next page of that site continues the same session.
    await page.goto(f"http://127.0.0.1:{outside.port}/next")
    await page.wait_for_function("window.HaloTrack && window.HaloTrack.loaded")
    again = await page.evaluate("HaloTrack.ready()")
    assert again == public


async def test_a_form_s_own_fields_cannot_switch_the_script_off_nor_send_the_id_elsewhere(shop, outside, context):
    page = await context.new_page()
    base = f"http://localhost:{shop.port}"
    await page.goto(f"{base}/?utm_source=news")  # a session first
    elsewhere = f"http://127.0.0.1:{outside.port}/collect"
    html = ('<!doctype html><html><head><script src="/_halo/t.js" async></script></head><body>'
            '<form id=odd method=post action="/_halo/webhook/lead"><input name=querySelector>'
            '<input name=getAttribute><input name=appendChild></form>'
            f'<form id=out method=post action="/contact"><input name=email value="a@example.com">'
            f'<button id=away formaction="{elsewhere}">Send</button></form></body></html>')
    await page.route(f"{base}/crafted", lambda route: route.fulfill(body=html, content_type="text/html"))
    posted: list[str] = []

    async def collect(route):  # type: ignore[no-untyped-def]
        posted.append(route.request.post_data or "")
        await route.fulfill(body="ok")

    await page.route(elsewhere, collect)
    await page.goto(f"{base}/crafted")
    public = await page.evaluate("HaloTrack.ready()")
    assert public is not None  # the shadowing fields did not stop it
    assert await page.evaluate("document.querySelector('#odd input[data-halo]').value") == public
    async with page.expect_navigation():
        await page.click("#away")
    assert posted and "email=a%40example.com" in posted[0] and "halo_session_id" not in posted[0]


@pytest.mark.parametrize("cmp, script, expected", [
    ("Cookiebot",
     "window.Cookiebot = {hasResponse: true, consent: {necessary: true, statistics: false, marketing: false}};"
     "window.dispatchEvent(new Event('CookiebotOnDecline'));",
     {"analytics": False, "marketing": False}),
    ("OneTrust",
     "window.OneTrust = {IsAlertBoxClosed: () => true}; window.OnetrustActiveGroups = ',C0001,C0002,';"
     "window.dispatchEvent(new CustomEvent('OneTrustGroupsUpdated', {detail: ['C0001', 'C0002']}));",
     {"analytics": True, "marketing": False}),
])
async def test_cookiebot_and_onetrust_choices_reach_consent(shop, context, clean, cmp, script, expected):
    page = await context.new_page()
    base = f"http://localhost:{shop.port}"
    await page.goto(f"{base}/?utm_source=news")  # tracked with the tenant's default: granted
    html = '<!doctype html><html><head><script src="/_halo/t.js" async></script></head><body>a CMP page</body></html>'
    await page.route(f"{base}/cmp", lambda route: route.fulfill(body=html, content_type="text/html"))
    await page.goto(f"{base}/cmp")
    first = await page.evaluate("HaloTrack.ready()")
    async with page.expect_response(lambda r: r.url.endswith("/_halo/consent")) as answered:
        await page.evaluate(script)  # the banner's own event, as its vendor documents it
    answer = await (await answered.value).json()
    assert {k: answer[k] for k in expected} == expected, cmp
    row = await clean.fetchrow("SELECT consent_analytics, consent_marketing FROM sessions WHERE id = $1::uuid",
                               first)
    assert (row["consent_analytics"], row["consent_marketing"]) == (expected["analytics"], expected["marketing"])
