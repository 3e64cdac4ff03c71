"""`GET /_halo/report` through the real app and PostgreSQL: visits and conversions made through HaloTrack's own
routes at chosen times, then every model's rows and totals against hand-computed figures, the tenant's time zone,
the CSV (and its guard against formula injection), the keys, every bad parameter as a 422 naming it, and a report
that stays the same after a person's erasure."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from halo_proxy.app import WRITER, create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.metrics import Metrics
from halo_proxy.operators import key_digest
from tests.procs import TEST_SECRET
from tests.upstream import create_upstream

KEYS = KeyRing(TEST_SECRET)
HOST, OTHER = "shop.localhost", "other.localhost"
SECRET = "whsec-reports-0123456789"
OPS, REPORT_ONLY, PRIVACY_ONLY = "halo_ops-key-of-shop", "halo_report-key-of-shop", "halo_privacy-key-of-shop"
OTHER_OPS = "halo_ops-key-of-other"
BROWSER = {"Accept": "text/html", "Sec-Fetch-Dest": "document",
           "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"}
T = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)  # 10:00 in Prague


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settings(upstream_port: int):  # type: ignore[no-untyped-def]
    return parse(settings_text(upstream_port), "t.yaml", {})


def settings_text(upstream_port: int) -> str:
    return f"""
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    currency: CZK
    timezone: Europe/Prague
    default_phone_region: CZ
    webhook_secret: {SECRET}
    api_keys:
      - {{name: ops, sha256: "{key_digest(OPS)}", scopes: [report, privacy]}}
      - {{name: marketing, sha256: "{key_digest(REPORT_ONLY)}", scopes: [report]}}
      - {{name: dpo, sha256: "{key_digest(PRIVACY_ONLY)}", scopes: [privacy]}}
  - id: other
    hosts: [{OTHER}]
    upstream: http://127.0.0.1:{upstream_port}
    currency: EUR
    webhook_secret: {SECRET}
    api_keys:
      - {{name: ops, sha256: "{key_digest(OTHER_OPS)}", scopes: [report, privacy]}}
"""




@pytest.fixture
def clock():
    return Clock(T)


@pytest.fixture
async def site(aiohttp_server, clean, clock):
    upstream = await aiohttp_server(create_upstream())
    return await aiohttp_server(create_app(settings(upstream.port), Metrics(), keys=KEYS, pool=clean, migrate=False,
                                           clock=clock))


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def url(site, path: str) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{site.port}{path}"


async def visit(http, site, clock, at: datetime, query: str, cookie: str | None = None,  # type: ignore[no-untyped-def]
                host: str = HOST) -> str:
    clock.now = at
    headers = {**BROWSER, "Host": host}
    if cookie:
        headers["Cookie"] = f"_halo={cookie}"
    async with http.get(url(site, f"/{query}"), headers=headers) as resp:
        assert resp.status == 200
        morsel = resp.cookies.get("_halo")
    await site.app[WRITER].flush()
    return morsel.value if morsel is not None else cookie  # type: ignore[return-value]


async def convert(http, site, clock, at: datetime, kind: str, payload: dict,  # type: ignore[no-untyped-def]
                  host: str = HOST) -> dict:
    clock.now = at
    body = json.dumps(payload).encode()
    t = int(at.timestamp())
    mac = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    async with http.post(url(site, f"/_halo/webhook/{kind}"), data=body, headers={
            "Host": host, "Content-Type": "application/json", "X-Halo-Signature": f"t={t},v1={mac}"}) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def get_report(http, site, query: str, key: str | None = OPS,  # type: ignore[no-untyped-def]
                     host: str = HOST) -> tuple[int, aiohttp.typedefs.LooseHeaders, object]:
    headers = {"Host": host}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with http.get(url(site, f"/_halo/report?{query}"), headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, resp.headers, body


async def journeys(http, site, clock) -> None:  # type: ignore[no-untyped-def]
    """A: google 8 days before, facebook 1 day before (7 days apart: time decay 1/3 : 2/3), an order of 2500 CZK at
    T and a lead of 100 an hour later. B: a newsletter 2 days before, a lead without value. C: an order of 50 EUR
    that matches nobody."""
    a = await visit(http, site, clock, T - timedelta(days=8), "?utm_source=google&utm_medium=cpc&utm_campaign=summer")
    await visit(http, site, clock, T - timedelta(days=1),
                "?utm_source=facebook&utm_medium=social&utm_campaign=retargeting", cookie=a)
    b = await visit(http, site, clock, T - timedelta(days=2),
                    "?utm_source=newsletter&utm_medium=email&utm_campaign=november")
    await convert(http, site, clock, T, "order", {"order_id": "A-1", "value": 2500, "session_id": a})
    await convert(http, site, clock, T + timedelta(hours=1), "lead", {"session_id": a, "value": 100,
                                                                      "event_id": "A-lead"})
    await convert(http, site, clock, T + timedelta(hours=2), "lead", {"session_id": b, "event_id": "B-lead"})
    await convert(http, site, clock, T + timedelta(hours=3), "order", {"order_id": "C-1", "value": 50,
                                                                       "currency": "EUR"})


FB = {"source": "facebook", "medium": "social", "campaign": "retargeting", "channel": "Organic Social"}
GOOGLE = {"source": "google", "medium": "cpc", "campaign": "summer", "channel": "Paid Search"}
NEWS = {"source": "newsletter", "medium": "email", "campaign": "november", "channel": "Email"}
NONE = {"source": "(none)", "medium": "(none)", "campaign": "(none)", "channel": "Unattributed"}
# B's lead and C's order (in EUR) add no revenue: equal conversions, so "(none)" sorts before "newsletter".
TAIL = [{**NONE, "conversions": 1.0, "revenue": 0.0}, {**NEWS, "conversions": 1.0, "revenue": 0.0}]
HALVES = [{**FB, "conversions": 1.0, "revenue": 1300.0}, {**GOOGLE, "conversions": 1.0, "revenue": 1300.0}, *TAIL]
EXPECTED_ROWS = {
    "first_touch": [{**GOOGLE, "conversions": 2.0, "revenue": 2600.0}, *TAIL],
    # facebook's visit is the attribution's last touch of A (and not Direct)
    "last_touch": [{**FB, "conversions": 2.0, "revenue": 2600.0}, *TAIL],
    "last_non_direct": [{**FB, "conversions": 2.0, "revenue": 2600.0}, *TAIL],
    "linear": HALVES,
    "position_based": HALVES,  # two touches: 50/50
    # thirds of 2500: 833.33 / 1666.67; of 100: 33.33 / 66.67; of one conversion 0.333333 / 0.666667
    "time_decay": [{**FB, "conversions": 1.333334, "revenue": 1733.34},
                   {**GOOGLE, "conversions": 0.666666, "revenue": 866.66}, *TAIL],
}
TOTALS = {"conversions": 4, "leads": 2, "orders": 2, "revenue": 2600.0, "attributed": 3, "attribution_rate": 0.75,
          "avg_days_to_convert": 6.0}  # A: 8 and 8 days, B: 2 days


@pytest.mark.parametrize("model", sorted(EXPECTED_ROWS))
async def test_every_model_s_rows_and_totals(site, http, clock, model):
    await journeys(http, site, clock)
    status, headers, body = await get_report(http, site, f"from=2026-11-10&to=2026-11-10&model={model}")
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert body == {"tenant": "shop", "from": "2026-11-10", "to": "2026-11-10", "timezone": "Europe/Prague",
                    "model": model, "currency": "CZK", "totals": TOTALS, "rows": EXPECTED_ROWS[model]}
    assert sum(r["conversions"] for r in body["rows"]) == pytest.approx(TOTALS["conversions"])


async def test_the_default_model_is_last_touch_and_other_days_are_empty(site, http, clock):
    await journeys(http, site, clock)
    _, _, body = await get_report(http, site, "from=2026-11-10&to=2026-11-10")
    assert body["model"] == "last_touch" and body["rows"] == EXPECTED_ROWS["last_touch"]
    _, _, empty = await get_report(http, site, "from=2026-11-11&to=2026-12-31&model=linear")
    assert empty["rows"] == [] and empty["totals"] == {"conversions": 0, "leads": 0, "orders": 0, "revenue": 0.0,
                                                       "attributed": 0, "attribution_rate": 0.0,
                                                       "avg_days_to_convert": None}


async def test_days_are_the_tenant_s_local_days(site, http, clock):
    # 23:30 UTC on the 1st is 00:30 on the 2nd in Prague; the other tenant keeps UTC days.
    late = datetime(2026, 11, 1, 23, 30, tzinfo=UTC)
    await convert(http, site, clock, late, "order", {"order_id": "late", "value": 10})
    await convert(http, site, clock, late, "order", {"order_id": "late", "value": 10, "currency": "CZK"}, host=OTHER)
    for day, count in (("2026-11-01", 0), ("2026-11-02", 1)):
        _, _, body = await get_report(http, site, f"from={day}&to={day}")
        assert body["totals"]["conversions"] == count, day
    _, _, other = await get_report(http, site, "from=2026-11-01&to=2026-11-01", OTHER_OPS, OTHER)
    assert (other["timezone"], other["currency"], other["totals"]["conversions"]) == ("UTC", "EUR", 1)
    assert other["totals"]["revenue"] == 0.0  # 10 CZK is not the other tenant's currency


async def test_csv_has_the_header_the_rows_and_no_formulas(site, http, clock):
    await journeys(http, site, clock)
    d = await visit(http, site, clock, T - timedelta(days=1),
                    "?utm_source=%3DHYPERLINK(%22http://x%22)&utm_medium=%2Bcpc&utm_campaign=-2%2B3")
    await convert(http, site, clock, T, "order", {"order_id": "D-1", "value": "19.99", "session_id": d})
    status, headers, text = await get_report(http, site, "from=2026-11-10&to=2026-11-10&model=linear&format=csv")
    assert status == 200
    assert headers["Content-Type"] == "text/csv; charset=utf-8" and headers["Cache-Control"] == "no-store"
    assert headers["Content-Disposition"] == 'attachment; filename="halotrack-shop-2026-11-10-2026-11-10-linear.csv"'
    assert text.startswith("source,medium,campaign,channel,conversions,revenue\r\n")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[1:3] == [["facebook", "social", "retargeting", "Organic Social", "1", "1300.00"],
                          ["google", "cpc", "summer", "Paid Search", "1", "1300.00"]]
    injected = next(line for line in lines if "19.99" in line)
    assert injected[:3] == ["'=HYPERLINK(\"http://x\")", "'+cpc", "'-2+3"]
    assert all(not cell.startswith(("=", "+", "-", "@")) for line in lines for cell in line)
    assert len(lines) == 1 + 5


@pytest.mark.parametrize("key, host, status, code", [
    (None, HOST, 401, "missing_key"),
    ("halo_not-a-key-anyone-has", HOST, 401, "invalid_key"),
    (PRIVACY_ONLY, HOST, 403, "missing_scope"),
    (OTHER_OPS, HOST, 403, "wrong_tenant"),
    (OPS, OTHER, 403, "wrong_tenant"),
])
async def test_keys(site, http, key, host, status, code):
    got, _, body = await get_report(http, site, "from=2026-11-10&to=2026-11-10", key, host)
    assert (got, body["error"]) == (status, code)


async def test_a_report_only_key_reads_the_report(site, http):
    assert (await get_report(http, site, "from=2026-11-10&to=2026-11-10", REPORT_ONLY))[0] == 200


@pytest.mark.parametrize("query, code, field", [
    ("to=2026-11-10", "missing_field", "from"),
    ("from=2026-11-10", "missing_field", "to"),
    ("from=2026-11-1&to=2026-11-10", "invalid_field", "from"),
    ("from=&to=2026-11-10", "invalid_field", "from"),
    ("from=2026-11-01&to=2026-13-01", "invalid_field", "to"),
    ("from=2026-11-10&to=2026-11-01", "invalid_field", "from"),
    ("from=2025-01-01&to=2026-02-05", "invalid_field", "to"),  # 401 days
    ("from=2026-11-01&to=2026-11-10&model=u_shaped", "invalid_field", "model"),
    ("from=2026-11-01&to=2026-11-10&model=", "invalid_field", "model"),
    ("from=2026-11-01&to=2026-11-10&format=xlsx", "invalid_field", "format"),
    ("from=2026-11-01&from=2026-11-02&to=2026-11-10", "invalid_field", "from"),
    ("from=2026-11-01&to=2026-11-10&model=linear&model=linear", "invalid_field", "model"),
    ("from=2026-11-01&to=2026-11-10&tenant=other", "unknown_field", "tenant"),
    ("from=%00&to=2026-11-10", "invalid_field", "from"),
    ("from=2026-11-01&to=9999-12-31", "invalid_field", "to"),
    ("from=%ff%fe&to=2026-11-10", "invalid_field", "from"),
    ("from=2026-11-01&to=2026-11-10&model=" + "x" * 5000, "invalid_field", "model"),
])
async def test_bad_parameters_are_422_naming_them(site, http, query, code, field):
    status, _, body = await get_report(http, site, query)
    assert (status, body["error"], body.get("field")) == (422, code, field), body
    assert body["detail"]


async def test_400_days_is_the_longest_range(site, http):
    status, _, body = await get_report(http, site, "from=2025-01-01&to=2026-02-04&model=time_decay")
    assert status == 200 and body["totals"]["conversions"] == 0


async def test_an_erasure_leaves_the_report_as_it_was(site, http, clock):
    await journeys(http, site, clock)
    e = await visit(http, site, clock, T - timedelta(days=3), "?utm_source=bing&utm_medium=cpc&utm_campaign=winter")
    await convert(http, site, clock, T, "lead", {"session_id": e, "email": "jana.novak@example.cz", "value": 70,
                                                 "event_id": "E-lead"})
    before = {m: (await get_report(http, site, f"from=2026-11-10&to=2026-11-10&model={m}"))[2] for m in EXPECTED_ROWS}
    headers = {"Host": HOST, "Authorization": f"Bearer {OPS}"}
    async with http.delete(url(site, "/_halo/delete-user?email=jana.novak@example.cz"), headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["leads_anonymized"] == 1
    after = {m: (await get_report(http, site, f"from=2026-11-10&to=2026-11-10&model={m}"))[2] for m in EXPECTED_ROWS}
    assert after == before
    assert any(r["source"] == "bing" for r in after["linear"]["rows"])
