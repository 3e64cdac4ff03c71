"""The browser routes through the app, with PostgreSQL: `t.js`, `/session`, `/consent` and `/touch` (with CORS),
every bad input a named 4xx with nothing stored."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from halo_proxy.app import METRICS, WRITER, create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.metrics import Metrics
from halo_proxy.routes.browser import Script
from halo_proxy.storage import consent as consent_store
from halo_proxy.storage import events as event_store
from halo_proxy.storage import sessions
from tests.procs import TEST_SECRET
from tests.upstream import create_upstream

HOST = "shop.localhost"
OUTSIDE = "https://landing.example"
KEYS = KeyRing(TEST_SECRET)
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"
PAGE = {"Host": HOST, "Accept": "text/html", "Sec-Fetch-Dest": "document", "User-Agent": UA}
SCRIPT = Path(__file__).parent.parent / "halo_proxy" / "static" / "t.js"


def settings(upstream_port: int, unknown: str = "granted"):  # type: ignore[no-untyped-def]
    return parse(f"""
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    external_origins: ["{OUTSIDE}"]
    consent: {{unknown: {unknown}}}
    rate_limit: {{per_second: 1, burst: 200}}
""", "t.yaml", {})




@pytest.fixture
async def site(aiohttp_server, clean):
    upstream = await aiohttp_server(create_upstream())
    return await aiohttp_server(create_app(settings(upstream.port), Metrics(), keys=KEYS, pool=clean,
                                           migrate=False))


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False) as session:
        yield session


def url(site, path: str) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{site.port}{path}"


async def land(http, site, path: str = "/?utm_source=news&utm_medium=email") -> str:  # type: ignore[no-untyped-def]
    async with http.get(url(site, path), headers=PAGE) as resp:
        assert resp.status == 200
        return resp.cookies["_halo"].value


async def post(http, site, path: str, body: object, cookies: str = "", **headers: str):  # type: ignore[no-untyped-def]
    hdrs = {"Host": HOST, "Content-Type": "application/json", "User-Agent": UA, **headers}
    if cookies:
        hdrs["Cookie"] = cookies
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(url(site, "/_halo" + path), data=data, headers=hdrs) as resp:
        return resp.status, resp.headers, await resp.json()


def set_cookies(headers) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {v.split("=", 1)[0]: v for v in headers.getall("Set-Cookie", ())}


# -- t.js -------------------------------------------------------------------------------------------------


async def test_the_script_is_small_cached_and_revalidated(site, http):
    async with http.get(url(site, "/_halo/t.js"), headers={"Host": HOST, "Accept-Encoding": "gzip"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/javascript"
        assert resp.headers["Content-Encoding"] == "gzip"
        assert re.fullmatch(r"public, max-age=\d+", resp.headers["Cache-Control"])
        body = await resp.read()
        etag = resp.headers["ETag"]
    assert len(body) <= 3 * 1024, f"t.js is {len(body)} bytes gzipped"
    assert gzip.decompress(body) == Script().body
    for condition in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        async with http.get(url(site, "/_halo/t.js"), headers={"Host": HOST, "If-None-Match": condition}) as resp:
            assert resp.status == 304, condition
            assert await resp.read() == b""
    async with http.get(url(site, "/_halo/t.js"), headers={"Host": HOST, "Accept-Encoding": "br, gzip;q=0"}) as resp:
        assert "Content-Encoding" not in resp.headers
    async with http.get(url(site, "/_halo/t.js"), headers={"Host": HOST, "Accept-Encoding": "identity"}) as resp:
        assert "Content-Encoding" not in resp.headers
        assert await resp.read() == Script().body


def test_the_script_uses_no_syntax_newer_than_es2019_and_no_other_host(tmp_path):
    text = SCRIPT.read_text()
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)
    for newer in (r"\?\.", r"\?\?", r"\|\|=", r"&&=", r"\b\d+_\d", r"\bstatic\s*\{", r"#[a-z]\w*\s*[=;(]",
                  r"\bimport\s*\(", r"\bawait\b", r"\basync\b", r"\bclass\b"):
        assert not re.search(newer, code), f"t.js uses {newer}"
    assert not re.search(r"https?://", code), "t.js names a host: it may talk to its own only"
    node = shutil.which("node")
    assert node, "node is part of this machine's toolset"
    served = tmp_path / "t.js"
    served.write_bytes(Script().body)  # compacted as served: still valid
    for path in (SCRIPT, served):
        subprocess.run([node, "--check", str(path)], check=True)
    assert len(Script().body) < len(SCRIPT.read_bytes())


# -- /session ---------------------------------------------------------------------------------------------


async def test_session_gives_the_public_id_never_the_cookie(site, http):
    cookie = await land(http, site)
    async with http.get(url(site, "/_halo/session"), headers={"Host": HOST, "Cookie": f"_halo={cookie}"}) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        answer = await resp.json()
    assert answer["session_id"] == str(KEYS.open_session("shop", cookie))
    assert cookie not in json.dumps(answer)
    assert answer["analytics"] is True and answer["onetrust"] == {"analytics": ["C0002"], "marketing": ["C0004"]}
    async with http.get(url(site, "/_halo/session"), headers={"Host": HOST}) as resp:
        assert (await resp.json())["session_id"] is None


# -- /consent ---------------------------------------------------------------------------------------------


ORIGIN = {"Origin": f"http://{HOST}", "Referer": f"http://{HOST}/products"}


@pytest.mark.parametrize("body, status, code, field", [
    (b"{not json", 400, "invalid_json", None),
    ([True], 400, "invalid_json", None),
    ({"analytics": True}, 422, "missing_field", "marketing"),
    ({"analytics": "yes", "marketing": True}, 422, "invalid_field", "analytics"),
    ({"analytics": True, "marketing": True, "extra": 1}, 422, "unknown_field", "extra"),
    ({"analytics": True, "marketing": True, "url": "javascript:alert(1)"}, 422, "invalid_field", "url"),
    ({"analytics": True, "marketing": True, "url": "https://evil.example/"}, 422, "invalid_field", "url"),
    (b'{"analytics": true, "marketing": true, "pad": "' + b"x" * 9000 + b'"}', 413, "body_too_large", None),
    (b'{"analytics": false, "marketing": false, "analytics": true}', 400, "invalid_json", None),
])
async def test_bad_consent_bodies_are_named_and_change_nothing(site, http, clean, body, status, code, field):
    got, headers, answer = await post(http, site, "/consent", body, **ORIGIN)
    assert (got, answer["error"], answer.get("field")) == (status, code, field)
    assert "Set-Cookie" not in headers
    assert await clean.fetchval("SELECT count(*) FROM sessions") == 0


async def test_consent_from_another_origin_is_refused(site, http, clean):
    for origin in ({"Origin": "https://evil.example"}, {}, {"Origin": OUTSIDE}, {"Origin": f"http://{HOST}:8081"},
                   {"Origin": "null"}, {"Origin": "null", "Referer": f"http://{HOST}:1/"}):
        status, headers, answer = await post(http, site, "/consent", {"analytics": True, "marketing": True},
                                             **origin)
        assert (status, answer["error"]) == (403, "forbidden_origin")
        assert "Set-Cookie" not in headers
    assert await clean.fetchval("SELECT count(*) FROM sessions") == 0


async def test_granting_consent_without_a_session_starts_one_from_the_page(site, http, clean):
    body = {"analytics": True, "marketing": True,
            "url": f"http://{HOST}/?utm_source=google&utm_medium=cpc&gclid=abc", "referrer": "https://www.google.com/"}
    status, headers, answer = await post(http, site, "/consent", body, "_halo_consent=v1.00", **ORIGIN)
    assert status == 200 and answer["analytics"] is True and answer["marketing"] is True
    cookies = set_cookies(headers)
    assert cookies["_halo_consent"].startswith("_halo_consent=v1.11;") and "HttpOnly" in cookies["_halo_consent"]
    session_id = KEYS.open_session("shop", cookies["_halo"].split("=", 1)[1].split(";")[0])
    assert answer["session_id"] == str(session_id)
    assert await site.app[WRITER].flush()
    record = await sessions.get_session(clean, "shop", session_id)
    assert (record.first_touch.source, record.first_touch.medium) == ("google", "cpc")
    [change] = await consent_store.changes_for_sessions(clean, "shop", [session_id])
    assert change.change == "granted"
    metrics = site.app[METRICS]
    assert metrics.registry.get_sample_value("halo_consent_changes_total", {"tenant": "shop",
                                                                            "change": "granted"}) == 1


async def test_withdrawing_consent_expires_the_cookies_and_deletes_the_identifiers(site, http, clean):
    cookie = await land(http, site, "/?utm_source=facebook&fbclid=xyz")
    session_id = KEYS.open_session("shop", cookie)
    jar = f"_halo={cookie}; _fbp=fb.1.1.2; _fbc=fb.1.1.xyz"
    status, _, _ = await post(http, site, "/identify", {"email": "ann@example.com"}, jar, Origin=f"http://{HOST}")
    assert status == 200
    assert await site.app[WRITER].flush()
    assert (await clean.fetchrow("SELECT ip_hash, user_agent_enc FROM sessions"))["ip_hash"] is not None
    status, headers, answer = await post(http, site, "/consent", {"analytics": False, "marketing": True}, jar,
                                         **ORIGIN)
    assert (status, answer) == (200, {"analytics": False, "marketing": False, "session_id": None})
    cookies = set_cookies(headers)
    for name in ("_halo", "_fbp", "_fbc"):
        assert "Max-Age=0" in cookies[name]
    assert cookies["_halo_consent"].startswith("_halo_consent=v1.00;")
    row = await clean.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)
    assert (row["ip_hash"], row["ip_enc"], row["user_agent_enc"], row["fbp"], row["fbc"]) == (None,) * 5
    assert row["consent_analytics"] is False
    assert await clean.fetchval("SELECT count(*) FROM identities") == 0
    assert await clean.fetchval("SELECT count(*) FROM touches") == 1  # the anonymous attribution stays
    # Later page views with the consent cookie (and the stale _halo cookie, should the browser keep it) are
    # anonymous: no new session, the cookie expired again.
    async with http.get(url(site, "/?utm_source=news"), headers={**PAGE, "Cookie": f"_halo={cookie}; "
                                                                 "_halo_consent=v1.00"}) as resp:
        assert "Max-Age=0" in set_cookies(resp.headers)["_halo"]
    assert await site.app[WRITER].flush()
    assert await clean.fetchval("SELECT count(*) FROM sessions") == 1
    assert await clean.fetchval("SELECT count(*) FROM touches") == 1


async def test_a_changed_consent_reseals_the_cookie_and_is_kept_in_the_history(site, http, clean):
    cookie = await land(http, site)
    session_id = KEYS.open_session("shop", cookie)
    status, headers, answer = await post(http, site, "/consent", {"analytics": True, "marketing": False},
                                         f"_halo={cookie}", **ORIGIN)
    assert answer == {"analytics": True, "marketing": False, "session_id": str(session_id)}
    resealed = set_cookies(headers)["_halo"].split("=", 1)[1].split(";")[0]
    assert KEYS.open_session_state("shop", resealed) == (session_id, 1)
    again = await post(http, site, "/consent", {"analytics": True, "marketing": False}, f"_halo={resealed}",
                       **ORIGIN)
    assert "_halo" not in set_cookies(again[1])
    assert [c.change for c in await consent_store.changes_for_sessions(clean, "shop", [session_id])] == ["updated"]
    record = await sessions.get_session(clean, "shop", session_id)
    assert (record.consent.analytics, record.consent.marketing) == (True, False)


async def test_gpc_keeps_marketing_off(site, http):
    status, _, answer = await post(http, site, "/consent", {"analytics": True, "marketing": True},
                                   **ORIGIN, **{"Sec-GPC": "1"})
    assert answer["marketing"] is False


# -- /touch -----------------------------------------------------------------------------------------------


async def test_touch_preflight_allows_only_listed_origins(site, http):
    request = {"Host": HOST, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    async with http.options(url(site, "/_halo/touch"), headers={**request, "Origin": OUTSIDE}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == OUTSIDE
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    async with http.options(url(site, "/_halo/touch"), headers={**request, "Origin": "https://evil.example"}) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_touch_records_a_visit_and_continues_the_session(site, http, clean):
    page = f"{OUTSIDE}/offer?utm_source=google&utm_medium=cpc&utm_campaign=winter&gclid=g1"
    status, headers, answer = await post(http, site, "/touch", {"url": page, "referrer": "https://www.google.com/"},
                                         Origin=OUTSIDE, **{"Content-Type": "text/plain"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == OUTSIDE
    assert "Set-Cookie" not in headers
    first = answer["session_id"]
    again = f"{OUTSIDE}/offer?utm_source=facebook&utm_medium=social&fbclid=f1"
    status, _, answer = await post(http, site, "/touch", {"url": again, "session_id": first}, Origin=OUTSIDE)
    assert answer["session_id"] == first
    assert await site.app[WRITER].flush()
    record = await sessions.get_session(clean, "shop", KEYS.session_from_ref("shop", first))
    assert (record.first_touch.campaign, record.last_touch.source) == ("winter", "facebook")
    # An id this tenant never issued starts a fresh session: the caller never chooses one.
    made_up = "00000000-0000-4000-8000-000000000001"
    _, _, answer = await post(http, site, "/touch", {"url": page, "session_id": made_up}, Origin=OUTSIDE)
    assert answer["session_id"] not in (made_up, first)
    # Events from the outside site go with the id /touch gave.
    status, headers, answer2 = await post(http, site, "/event", {"name": "signup", "session_id": first},
                                          Origin=OUTSIDE, **{"Content-Type": "text/plain"})
    assert (status, answer2, headers["Access-Control-Allow-Origin"]) == (202, {"accepted": True}, OUTSIDE)
    assert len(await event_store.events_for_sessions(clean, "shop", [record.id])) == 1


async def test_touch_with_consent_denied_keeps_only_the_aggregate(site, http, clean):
    body = {"url": f"{OUTSIDE}/?utm_source=news", "consent": {"analytics": False, "marketing": False}}
    status, _, answer = await post(http, site, "/touch", body, Origin=OUTSIDE)
    assert (status, answer) == (200, {"session_id": None})
    assert await site.app[WRITER].flush()
    assert await clean.fetchval("SELECT count(*) FROM sessions") == 0
    assert await clean.fetchval("SELECT sum(count) FROM anon_events") == 1


@pytest.mark.parametrize("body, origin, status, code, field", [
    ({"url": f"{OUTSIDE}/"}, "https://evil.example", 403, "forbidden_origin", None),
    ({"url": f"{OUTSIDE}/"}, None, 403, "forbidden_origin", None),
    ({"url": f"{OUTSIDE}/"}, "null", 403, "forbidden_origin", None),
    ({"url": f"http://{HOST}/"}, f"http://{HOST}", 403, "forbidden_origin", None),  # the site's own: /session
    (b'{"url": "https://landing.example/", "url": "https://landing.example/x"}', OUTSIDE, 400, "invalid_json",
     None),
    ({}, OUTSIDE, 422, "invalid_field", "url"),
    ({"url": 5}, OUTSIDE, 422, "invalid_field", "url"),
    ({"url": "https://other.example/"}, OUTSIDE, 422, "invalid_field", "url"),
    ({"url": f"{OUTSIDE}/", "session_id": 7}, OUTSIDE, 422, "invalid_field", "session_id"),
    ({"url": f"{OUTSIDE}/", "consent": True}, OUTSIDE, 422, "invalid_field", "consent"),
    ({"url": f"{OUTSIDE}/", "consent": {"analytics": 1, "marketing": True}}, OUTSIDE, 422, "invalid_field",
     "consent.analytics"),
    ({"url": f"{OUTSIDE}/", "x": 1}, OUTSIDE, 422, "unknown_field", "x"),
    (b"[", OUTSIDE, 400, "invalid_json", None),
])
async def test_bad_touches_are_named_and_store_nothing(site, http, clean, body, origin, status, code, field):
    headers = {"Origin": origin} if origin else {}
    got, out_headers, answer = await post(http, site, "/touch", body, **headers)
    assert (got, answer["error"], answer.get("field")) == (status, code, field)
    if origin == OUTSIDE:
        assert out_headers["Access-Control-Allow-Origin"] == OUTSIDE  # the page can read why
    else:
        assert "Access-Control-Allow-Origin" not in out_headers
    assert await site.app[WRITER].flush()
    assert await clean.fetchval("SELECT count(*) FROM sessions") == 0
    assert await clean.fetchval("SELECT count(*) FROM anon_events") == 0


async def test_a_known_route_asked_with_another_method_is_405_with_allow(site, http):
    for path, allow in (("/_halo/event", "OPTIONS, POST"), ("/_halo/consent", "POST"), ("/_halo/t.js", "GET, HEAD")):
        async with http.put(url(site, path), headers={"Host": HOST}) as resp:
            assert resp.status == 405, path
            assert resp.headers["Allow"] == allow
            assert (await resp.json())["error"] == "method_not_allowed"
    async with http.get(url(site, "/_halo/nothing-here"), headers={"Host": HOST}) as resp:
        assert resp.status == 404


async def test_an_old_public_id_cannot_bring_a_withdrawn_session_back(site, http, clean):
    page = f"{OUTSIDE}/?utm_source=google"
    _, _, first = await post(http, site, "/touch", {"url": page}, Origin=OUTSIDE)
    withdraw = {"url": page, "session_id": first["session_id"], "consent": {"analytics": False, "marketing": False}}
    assert (await post(http, site, "/touch", withdraw, Origin=OUTSIDE))[2] == {"session_id": None}
    revive = {"url": f"{OUTSIDE}/?utm_source=attacker&gclid=x", "session_id": first["session_id"],
              "consent": {"analytics": True, "marketing": True}}
    _, _, again = await post(http, site, "/touch", revive, Origin=OUTSIDE)
    assert again["session_id"] not in (None, first["session_id"])
    assert await site.app[WRITER].flush()
    old = await clean.fetchrow("SELECT * FROM sessions WHERE id = $1::uuid", first["session_id"])
    assert (old["consent_analytics"], old["lt_source"], old["ip_hash"]) == (False, "google", None)
    assert [c.change for c in await consent_store.changes_for_sessions(
        clean, "shop", [old["id"]])] == ["withdrawn"]


async def test_identify_never_links_a_session_without_consent(site, http, clean):
    cookie = await land(http, site)
    public = str(KEYS.open_session("shop", cookie))
    denied_banner = "cookieyes-consent=consentid:x,consent:no,action:yes,necessary:yes,analytics:no,advertisement:no"
    for jar in (f"_halo={cookie}; {denied_banner}", f"_halo={cookie}; _halo_consent=v1.00"):
        status, _, answer = await post(http, site, "/identify", {"email": "no@example.com"}, jar,
                                       Origin=f"http://{HOST}")
        assert (status, answer) == (200, {"session_id": None, "linked": []})
    await post(http, site, "/consent", {"analytics": False, "marketing": False}, f"_halo={cookie}", **ORIGIN)
    status, _, answer = await post(http, site, "/identify", {"email": "after@example.com", "session_id": public})
    assert (status, answer) == (200, {"session_id": None, "linked": []})
    assert await clean.fetchval("SELECT count(*) FROM identities") == 0


async def test_a_withdrawal_seen_on_a_page_view_takes_the_identifiers_too(site, http, clean):
    cookie = await land(http, site, "/?utm_source=facebook&fbclid=f")
    session_id = KEYS.open_session("shop", cookie)
    await post(http, site, "/identify", {"email": "ann@example.com"}, f"_halo={cookie}", Origin=f"http://{HOST}")
    denied = "cookieyes-consent=consentid:x,consent:no,action:yes,necessary:yes,analytics:no,advertisement:no"
    async with http.get(url(site, "/products"), headers={**PAGE, "Cookie": f"_halo={cookie}; {denied}"}) as resp:
        assert "Max-Age=0" in set_cookies(resp.headers)["_halo"]
    assert await site.app[WRITER].flush()
    row = await clean.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)
    assert (row["consent_analytics"], row["consent_marketing"], row["ip_hash"], row["ip_enc"],
            row["user_agent_enc"], row["fbc"]) == (False, False, None, None, None, None)
    assert await clean.fetchval("SELECT count(*) FROM identities") == 0
    assert [c.change for c in await consent_store.changes_for_sessions(clean, "shop", [session_id])] == [
        "withdrawn"]
    status, _, answer = await post(http, site, "/event", {"name": "late", "session_id": str(session_id)})
    assert answer == {"accepted": False}
