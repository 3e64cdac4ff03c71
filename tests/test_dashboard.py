"""`GET /_halo/dashboard` through the real app and PostgreSQL: the sign-in (a `report` key for an HttpOnly,
SameSite=Strict session cookie; never the key), the page's figures against the report for every model, its
table sorted by any column, the latest conversions with their match and path, bad parameters, CSRF, sessions
that end (sign-out, expiry, a key removed from the tenant file), the CSV for the session, the per-IP limit of
failed keys, and a page with no script and no external asset."""

# ruff: noqa: F811  (the fixtures of tests/test_reports.py are imported, then named as parameters)

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest

from halo_proxy.app import CONFIG, create_app
from halo_proxy.config import parse
from halo_proxy.metrics import Metrics
from halo_proxy.operators import key_digest
from halo_proxy.views.dashboard import money
from tests.test_reports import (  # noqa: F401  (fixtures)
    HOST,
    KEYS,
    OPS,
    OTHER,
    OTHER_OPS,
    PRIVACY_ONLY,
    REPORT_ONLY,
    T,
    clock,
    get_report,
    http,
    journeys,
    settings,
    settings_text,
    site,
    url,
)
from tests.upstream import create_upstream

DAY = "from=2026-11-10&to=2026-11-10"


ORIGIN = {"Host": HOST, "Origin": f"http://{HOST}"}
FORM = {**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}


async def login(http, site, key: str, headers: dict | None = None):  # type: ignore[no-untyped-def]
    async with http.post(url(site, "/_halo/dashboard/login"), data=f"key={key}", headers=headers or FORM,
                         allow_redirects=False) as resp:
        return resp.status, resp.headers, await resp.text()


async def signed_in(http, site, key: str = REPORT_ONLY) -> str:  # type: ignore[no-untyped-def]
    status, headers, body = await login(http, site, key)
    assert status == 303, body
    cookie = headers["Set-Cookie"]
    return re.match(r"halo_dashboard=([^;]+);", cookie).group(1)  # type: ignore[union-attr]


async def dashboard(http, site, token: str | None, query: str = DAY, host: str = HOST):  # type: ignore[no-untyped-def]
    headers = {"Host": host}
    if token:
        headers["Cookie"] = f"halo_dashboard={token}"
    async with http.get(url(site, f"/_halo/dashboard?{query}"), headers=headers, allow_redirects=False) as resp:
        return resp.status, resp.headers, await resp.text()


def cards(page: str) -> dict[str, str]:
    found = re.findall(r'data-stat="([^"]+)">\s*<div class="label">[^<]*</div>\s*<div class="value">([^<]*)</div>',
                       page)
    return {label: unescape(value) for label, value in found}


def table(page: str) -> list[list[str]]:
    body = page.split('<table id="rows">', 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    return [[unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


async def test_without_a_session_the_sign_in_form(site, http):
    status, headers, page = await dashboard(http, site, None)
    assert status == 200 and 'name="key"' in page and 'type="password"' in page
    assert 'action="/_halo/dashboard/login"' in page
    assert headers["Cache-Control"] == "no-store" and headers["X-Frame-Options"] == "DENY"
    # a made-up or stale cookie: the form, and the cookie expired
    status, headers, page = await dashboard(http, site, "forged-token")
    assert status == 200 and 'name="key"' in page and "Max-Age=0" in headers["Set-Cookie"]


@pytest.mark.parametrize(("key", "status", "message"), [
    ("", 401, "Enter an operator key."),
    ("halo_not-a-key", 401, "This key is not known."),
    (PRIVACY_ONLY, 403, "lacks the report scope"),
    (OTHER_OPS, 403, "belongs to another tenant"),
])
async def test_a_key_that_cannot_read_reports_is_refused_with_a_reason(site, http, key, status, message):
    got, headers, page = await login(http, site, key)
    assert got == status and message in page and "Set-Cookie" not in headers
    assert key == "" or key not in page  # the key is never echoed


async def test_signing_in_sets_a_strict_http_only_session_cookie_and_never_the_key(site, http, db_pool):
    status, headers, _ = await login(http, site, REPORT_ONLY)
    assert status == 303 and headers["Location"] == "/_halo/dashboard"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/_halo/dashboard" in cookie
    assert "Max-Age=43200" in cookie and "Secure" not in cookie  # plain HTTP here; Secure behind HTTPS
    assert REPORT_ONLY not in cookie
    token = re.match(r"halo_dashboard=([^;]+);", cookie).group(1)  # type: ignore[union-attr]
    row = await db_pool.fetchrow("SELECT * FROM dashboard_sessions")
    assert row["tenant_id"] == "shop" and row["key_name"] == "marketing"
    assert token.encode() not in bytes(row["token_hash"]) and REPORT_ONLY not in str(dict(row))
    # the session is this tenant's only
    status, _, page = await dashboard(http, site, token, host=OTHER)
    assert status == 200 and 'name="key"' in page


async def test_a_sign_in_posted_from_another_site_is_refused(site, http):
    for headers in ({**FORM, "Origin": "http://evil.example"}, {"Host": HOST,
                                                                "Content-Type": "application/x-www-form-urlencoded"}):
        status, answer, page = await login(http, site, REPORT_ONLY, headers)
        assert status == 403 and "Set-Cookie" not in answer and "dashboard's own page" in unescape(page)


@pytest.mark.parametrize("model", ["first_touch", "last_touch", "last_non_direct", "linear", "time_decay",
                                   "position_based"])
async def test_the_page_shows_what_the_report_says(site, http, clock, model):
    await journeys(http, site, clock)
    token = await signed_in(http, site)
    status, headers, page = await dashboard(http, site, token, f"{DAY}&model={model}")
    assert status == 200, page
    _, _, report = await get_report(http, site, f"{DAY}&model={model}")
    totals = report["totals"]
    assert cards(page) == {"Revenue": money(Decimal(str(totals["revenue"])), "CZK"),
                           "Conversions": "4", "Attribution rate": "75 %", "Days to convert": "6.0"}
    rows = table(page)
    assert [r[:4] for r in rows] == [[r["source"], r["medium"], r["campaign"], r["channel"]]
                                     for r in report["rows"]]
    for shown, row in zip(rows, report["rows"], strict=True):
        assert float(shown[4].replace("\u202f", "")) == pytest.approx(row["conversions"], abs=0.005)
        assert float(shown[5].rsplit(" ", 1)[0].replace("\u202f", "")) == pytest.approx(row["revenue"], abs=0.005)
    # no script, no external asset, only the nonce'd style
    assert "<script" not in page and "src=" not in page and not re.search(r"""(href|action)=["']?(https?:)?//""",
                                                                          page)
    nonce = re.search(r"style-src 'nonce-([^']+)'", headers["Content-Security-Policy"]).group(1)  # type: ignore[union-attr]
    assert f'<style nonce="{nonce}">' in page and "default-src 'none'" in headers["Content-Security-Policy"]
    assert "style=" not in page


async def test_the_latest_conversions_name_their_match_and_the_touches_that_earned_them(site, http, clock):
    await journeys(http, site, clock)
    token = await signed_in(http, site)
    _, _, page = await dashboard(http, site, token, f"{DAY}&model=time_decay")
    latest = page.split('id="latest"', 1)[1]
    conversions = latest.split('<div class="conversion">')[1:]
    assert len(conversions) == 4
    newest_first = [re.search(r"<b>(\w+)</b>", c).group(1) for c in conversions]  # type: ignore[union-attr]
    assert newest_first == ["Order", "Lead", "Lead", "Order"]
    assert "matched by not matched to any visit" in conversions[0]  # C's order in EUR
    order_a = conversions[3]
    assert "matched by their own visit" in order_a and "2\u202f500.00 CZK" in order_a
    steps = re.findall(r"<li( class=\"credited\")?><b><bdi>([^<]+)</bdi></b>.*? · (\d+ %)</li>", order_a, re.S)
    assert [(s[1], s[2]) for s in steps] == [("google", "33 %"), ("facebook", "67 %")]
    _, _, page = await dashboard(http, site, token, f"{DAY}&model=first_touch")
    order_a = page.split('id="latest"', 1)[1].split('<div class="conversion">')[4]
    steps = re.findall(r"<li( class=\"credited\")?><b><bdi>([^<]+)</bdi></b>.*? · (\d+ %)</li>", order_a, re.S)
    assert steps == [(' class="credited"', "google", "100 %"), ("", "facebook", "0 %")]


@pytest.mark.parametrize(("sort", "direction", "first"), [
    ("revenue", "desc", "facebook"), ("revenue", "asc", "(none)"), ("source", "asc", "(none)"),
    ("source", "desc", "newsletter"), ("channel", "asc", "Email"), ("conversions", "desc", "facebook"),
])
async def test_the_table_sorts_by_any_column(site, http, clock, sort, direction, first):
    await journeys(http, site, clock)
    token = await signed_in(http, site)
    status, _, page = await dashboard(http, site, token, f"{DAY}&model=last_touch&sort={sort}&dir={direction}")
    assert status == 200
    rows = table(page)
    assert first in rows[0]
    assert f'aria-sort="{"descending" if direction == "desc" else "ascending"}"' in page


@pytest.mark.parametrize(("query", "field"), [
    ("from=2026-13-01&to=2026-11-10", "from"), ("from=2026-11-10&to=2026-11-01", "from"),
    ("from=2025-01-01&to=2026-11-10", "to"), ("model=u_shaped", "model"), ("sort=email", "sort"),
    ("dir=sideways", "dir"), ("from=2026-11-01&from=2026-11-02", "from"), ("key=x", "key"),
])
async def test_bad_parameters_show_the_page_with_what_is_wrong(site, http, query, field):
    token = await signed_in(http, site)
    status, _, page = await dashboard(http, site, token, query)
    assert status == 422 and f'role="alert">{field}: ' in page and "Revenue" in page


async def test_signing_out_needs_the_session_s_csrf_token_and_ends_it(site, http, db_pool):
    token = await signed_in(http, site)
    _, _, page = await dashboard(http, site, token)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    cookie = {"Cookie": f"halo_dashboard={token}"}
    for body, headers in (("csrf=wrong", {**FORM, **cookie}),
                          (f"csrf={csrf}", {**FORM, **cookie, "Origin": "http://evil.example"})):
        async with http.post(url(site, "/_halo/dashboard/logout"), data=body, headers=headers,
                             allow_redirects=False) as resp:
            assert resp.status == 403
    assert await db_pool.fetchval("SELECT count(*) FROM dashboard_sessions") == 1
    async with http.post(url(site, "/_halo/dashboard/logout"), data=f"csrf={csrf}", headers={**FORM, **cookie},
                         allow_redirects=False) as resp:
        assert resp.status == 303 and "Max-Age=0" in resp.headers["Set-Cookie"]
    assert await db_pool.fetchval("SELECT count(*) FROM dashboard_sessions") == 0
    _, _, page = await dashboard(http, site, token)
    assert 'name="key"' in page


async def test_a_session_ends_after_twelve_hours(site, http, clock):
    token = await signed_in(http, site)
    clock.now = T + timedelta(hours=11, minutes=59)
    assert "Sign out" in (await dashboard(http, site, token))[2]
    clock.now = T + timedelta(hours=12)
    assert 'name="key"' in (await dashboard(http, site, token))[2]


async def test_removing_the_key_from_the_tenant_file_ends_its_sessions(site, http, db_pool):
    token = await signed_in(http, site)
    holder = site.app[CONFIG]
    port = int(holder.current.tenants[0].upstream.rsplit(":", 1)[1])
    text = settings_text(port).replace(f'      - {{name: marketing, sha256: "{key_digest(REPORT_ONLY)}", '
                                       'scopes: [report]}\n', "")
    holder.current = parse(text, "t.yaml", {})  # as a SIGHUP reload of the edited file does
    assert 'name="key"' in (await dashboard(http, site, token))[2]
    assert await db_pool.fetchval("SELECT count(*) FROM dashboard_sessions") == 0


async def test_the_csv_is_the_report_s_for_the_session(site, http, clock):
    await journeys(http, site, clock)
    token = await signed_in(http, site)
    cookie = {"Host": HOST, "Cookie": f"halo_dashboard={token}"}
    async with http.get(url(site, f"/_halo/dashboard/report.csv?{DAY}&model=linear"), headers=cookie) as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        assert 'filename="halotrack-shop-2026-11-10-2026-11-10-linear.csv"' in resp.headers["Content-Disposition"]
        csv_text = await resp.text()
    _, _, expected = await get_report(http, site, f"{DAY}&model=linear&format=csv")
    assert csv_text == expected
    async with http.get(url(site, f"/_halo/dashboard/report.csv?{DAY}"), headers={"Host": HOST},
                        allow_redirects=False) as resp:
        assert resp.status == 303  # no session: to the sign-in
    async with http.get(url(site, "/_halo/dashboard/report.csv?model=nope"), headers=cookie) as resp:
        assert resp.status == 422 and (await resp.json())["field"] == "model"


async def test_failed_keys_count_against_the_address_limit(site, http):
    for _ in range(10):
        assert (await login(http, site, "halo_wrong"))[0] == 401
    status, headers, page = await login(http, site, REPORT_ONLY)
    assert status == 429 and "Retry-After" in headers and "Too many failed keys" in page


async def test_a_value_from_the_data_is_escaped(aiohttp_server, clean, clock, http):  # noqa: F811
    upstream = await aiohttp_server(create_upstream())
    site = await aiohttp_server(create_app(settings(upstream.port), Metrics(), keys=KEYS, pool=clean,
                                           migrate=False, clock=clock))
    from tests.test_reports import convert, visit

    cookie = await visit(http, site, clock, T, "?utm_source=%3Cscript%3Ealert(1)%3C/script%3E&utm_medium=cpc")
    await convert(http, site, clock, T, "order", {"order_id": "x", "value": 10, "session_id": cookie})
    token = await signed_in(http, site)
    _, _, page = await dashboard(http, site, token)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert OPS not in page


# -- what a probe found: fixed and kept so ---------------------------------------------------------------------


async def test_a_day_before_any_range_can_start_is_a_422_not_a_500(site, http):
    token = await signed_in(http, site)
    for query in ("to=0001-01-29", "to=0001-01-01", "from=0001-01-01&to=0001-01-02"):
        status, _, page = await dashboard(http, site, token, query)
        assert status == 422 and 'role="alert">' in page, query
    async with http.get(url(site, "/_halo/dashboard/report.csv?to=0001-01-01"),
                        headers={"Host": HOST, "Cookie": f"halo_dashboard={token}"}) as resp:
        assert resp.status == 422


@pytest.mark.parametrize("mode", ["cors", "same-origin", "no-cors"])
async def test_a_script_of_the_site_cannot_fetch_the_dashboard(site, http, mode):
    """The dashboard shares the site's origin: a page's fetch() of it is refused; only navigations are answered."""
    token = await signed_in(http, site)
    cookie = {"Host": HOST, "Cookie": f"halo_dashboard={token}", "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": "empty"}
    for method, path in (("GET", "/_halo/dashboard"), ("GET", f"/_halo/dashboard/report.csv?{DAY}")):
        async with http.request(method, url(site, path), headers=cookie) as resp:
            assert resp.status == 403 and "csrf" not in await resp.text()
    async with http.post(url(site, "/_halo/dashboard/logout"), data="csrf=x", headers={**FORM, **cookie}) as resp:
        assert resp.status == 403
    navigate = {"Host": HOST, "Cookie": f"halo_dashboard={token}", "Sec-Fetch-Mode": "navigate"}
    async with http.get(url(site, "/_halo/dashboard"), headers=navigate) as resp:
        assert resp.status == 200 and "Sign out" in await resp.text()


async def test_a_planted_cookie_of_the_same_name_neither_signs_in_nor_signs_out(site, http):
    token = await signed_in(http, site)
    for cookie in (f"halo_dashboard=planted; halo_dashboard={token}", f"halo_dashboard={token}; halo_dashboard=x"):
        status, headers, page = await dashboard(http, site, None, DAY)
        async with http.get(url(site, f"/_halo/dashboard?{DAY}"), headers={"Host": HOST, "Cookie": cookie}) as resp:
            assert resp.status == 200 and "Sign out" in await resp.text()
    async with http.get(url(site, "/_halo/dashboard"),
                        headers={"Host": HOST, "Cookie": "halo_dashboard=a; halo_dashboard=b"}) as resp:
        assert 'name="key"' in await resp.text() and "Set-Cookie" not in resp.headers  # nothing cleared


async def test_the_table_shows_at_most_200_rows_and_sends_to_the_csv_for_the_rest(site, http, clock):
    from tests.test_reports import convert, visit

    for i in range(203):
        cookie = await visit(http, site, clock, T, f"?utm_source=s{i:03d}&utm_medium=cpc")
        await convert(http, site, clock, T, "order", {"order_id": f"o{i}", "value": i + 1, "session_id": cookie})
    token = await signed_in(http, site)
    _, _, page = await dashboard(http, site, token)
    assert len(table(page)) == 200 and "3 more rows in this order" in page
    assert table(page)[0][0] == "s202"  # the largest revenue first


async def test_a_dashboard_host_of_its_own(aiohttp_server, clean, clock, http):
    upstream = await aiohttp_server(create_upstream())
    text = settings_text(upstream.port).replace("    hosts: [shop.localhost]",
                                                "    hosts: [shop.localhost, stats.shop.localhost]\n"
                                                "    dashboard_hosts: [stats.shop.localhost]")
    site = await aiohttp_server(create_app(parse(text, "t.yaml", {}), Metrics(), keys=KEYS, pool=clean,
                                           migrate=False, clock=clock))
    async with http.get(url(site, "/_halo/dashboard"), headers={"Host": HOST}) as resp:
        assert resp.status == 404
    async with http.get(url(site, "/_halo/dashboard"), headers={"Host": "stats.shop.localhost"}) as resp:
        assert resp.status == 200 and 'name="key"' in await resp.text()
    async with http.post(url(site, "/_halo/dashboard/login"), data=f"key={REPORT_ONLY}", allow_redirects=False,
                         headers={"Host": "stats.shop.localhost", "Origin": "http://stats.shop.localhost",
                                  "Content-Type": "application/x-www-form-urlencoded"}) as resp:
        assert resp.status == 303
