"""Operator keys and `DELETE /_halo/delete-user` through the app, with PostgreSQL: `halo-proxy hash-key`, the
401/403 matrix whatever Host a key is sent to, failed attempts limited per IP, and an erasure that leaves the
revenue as it was while no plain or decryptable identifier of the person remains."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time

import aiohttp
import pytest

from halo_proxy.app import WORKER, WRITER, create_app
from halo_proxy.cli import main
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.metrics import Metrics
from halo_proxy.operators import key_digest
from halo_proxy.storage import audit
from tests.conftest import days_around_today
from tests.procs import TEST_SECRET
from tests.upstream import create_upstream

KEYS = KeyRing(TEST_SECRET)
HOST, OTHER = "shop.localhost", "other.localhost"
SECRET = "whsec-operators-0123456789"
OPS, REPORT_ONLY, OTHER_OPS = "halo_ops-key-of-shop", "halo_report-key-of-shop", "halo_ops-key-of-other"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"
PAGE = {"Accept": "text/html", "Sec-Fetch-Dest": "document", "User-Agent": UA}


def settings(upstream_port: int, platform_port: int):  # type: ignore[no-untyped-def]
    return parse(f"""
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    currency: CZK
    default_phone_region: CZ
    webhook_secret: {SECRET}
    api_keys:
      - {{name: ops, sha256: "{key_digest(OPS)}", scopes: [report, privacy]}}
      - {{name: marketing, sha256: "{key_digest(REPORT_ONLY)}", scopes: [report]}}
    forwarders:
      meta: {{pixel_id: "1", access_token: t, base_url: "http://127.0.0.1:{platform_port}"}}
  - id: other
    hosts: [{OTHER}]
    upstream: http://127.0.0.1:{upstream_port}
    webhook_secret: {SECRET}
    api_keys:
      - {{name: ops, sha256: "{key_digest(OTHER_OPS)}", scopes: [report, privacy]}}
""", "t.yaml", {})




@pytest.fixture
async def site(aiohttp_server, clean, unused_tcp_port_factory):
    upstream = await aiohttp_server(create_upstream())
    # Meta's base URL is a closed loopback port: forwards stay pending (the erasure must cancel them).
    return await aiohttp_server(create_app(settings(upstream.port, unused_tcp_port_factory()), Metrics(), keys=KEYS,
                                           pool=clean, migrate=False))


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def url(site, path: str) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{site.port}{path}"


async def delete(http, site, query: str, key: str | None = OPS, host: str = HOST,  # type: ignore[no-untyped-def]
                 ip: str | None = None):
    headers = {"Host": host}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with http.delete(url(site, f"/_halo/delete-user?{query}"), headers=headers) as resp:
        return resp.status, resp.headers, await resp.json()


async def signed(http, site, path: str, payload: dict, host: str = HOST):  # type: ignore[no-untyped-def]
    body = json.dumps(payload).encode()
    t = int(time.time())
    mac = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    async with http.post(url(site, path), data=body, headers={
            "Host": host, "Content-Type": "application/json", "X-Halo-Signature": f"t={t},v1={mac}"}) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def person_journey(http, site, host: str = HOST) -> str:  # type: ignore[no-untyped-def]
    """A visit from an ad, identify, a custom event, a lead and an order: everything a person leaves."""
    async with http.get(url(site, "/?utm_source=google&utm_medium=cpc&gclid=g-1"),
                        headers={**PAGE, "Host": host}) as resp:
        cookie = resp.cookies["_halo"].value
    jar = {"Host": host, "Cookie": f"_halo={cookie}", "Content-Type": "application/json", "Origin": f"http://{host}"}
    async with http.post(url(site, "/_halo/identify"), data=json.dumps({"email": "Jana.Novak@Example.cz"}),
                         headers=jar) as resp:
        assert resp.status == 200
    async with http.post(url(site, "/_halo/event"), data=json.dumps({"name": "add_to_cart"}), headers=jar) as resp:
        assert (await resp.json()) == {"accepted": True}
    await signed(http, site, "/_halo/webhook/lead", {"email": "jana.novak@example.cz", "name": "Jana Novák",
                                                     "message": "call me", "value": 100, "event_id": "l-1"}, host)
    await signed(http, site, "/_halo/webhook/order", {"order_id": "o-1", "value": 2500, "currency": "CZK",
                                                      "phone": "+420 601 234 567"}, host)
    return cookie


def test_hash_key_prints_a_key_once_and_the_line_that_accepts_it(capsys):
    assert main(["hash-key", "--name", "agency", "--scopes", "report"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"(halo_[A-Za-z0-9_-]{43})", out).group(1)
    line = re.search(r"(- \{name: agency.*\})", out).group(1)
    assert line == f'- {{name: agency, sha256: "{hashlib.sha256(key.encode()).hexdigest()}", scopes: [report]}}'
    loaded = parse(f"tenants:\n  - id: a\n    hosts: [a.test]\n    upstream: http://127.0.0.1:1\n    api_keys:\n"
                   f"      {line}\n", "t.yaml", {})
    assert loaded.tenants[0].api_keys[0].scopes == frozenset({"report"})
    assert main(["hash-key", "--scopes", "report,everything"]) == 2


@pytest.mark.parametrize("key, host, status, code", [
    (None, HOST, 401, "missing_key"),
    ("halo_not-a-key-anyone-has", HOST, 401, "invalid_key"),
    (REPORT_ONLY, HOST, 403, "missing_scope"),
    (OTHER_OPS, HOST, 403, "wrong_tenant"),  # another tenant's key at this tenant's host
    (OPS, OTHER, 403, "wrong_tenant"),  # this tenant's key at another tenant's host
])
async def test_keys_are_checked_whatever_host_they_are_sent_to(site, http, clean, key, host, status, code):
    await person_journey(http, site)
    got, headers, answer = await delete(http, site, "email=jana.novak@example.cz", key, host)
    assert (got, answer["error"]) == (status, code)
    assert ("WWW-Authenticate" in headers) == (status == 401)
    assert await clean.fetchval("SELECT count(*) FROM sessions") == 1
    assert await clean.fetchval("SELECT count(*) FROM conversions WHERE email_bidx IS NOT NULL") == 1


async def test_failed_attempts_are_limited_per_address_and_counted(site, http):
    for _ in range(10):
        assert (await delete(http, site, "email=a@b.cz", "halo_guess"))[0] == 401
    status, headers, answer = await delete(http, site, "email=a@b.cz", "halo_guess")
    assert (status, answer["error"]) == (429, "rate_limited") and int(headers["Retry-After"]) >= 1
    status, _, _ = await delete(http, site, "email=a@b.cz", OPS)  # even the right key waits: no oracle
    assert status == 429
    from halo_proxy.app import METRICS
    registry = site.app[METRICS].registry
    assert registry.get_sample_value("halo_operator_auth_failures_total", {"reason": "invalid_key"}) == 10
    assert registry.get_sample_value("halo_operator_auth_failures_total", {"reason": "rate_limited"}) == 2


async def test_delete_user_erases_the_person_and_keeps_the_revenue(site, http, clean):
    await person_journey(http, site)
    await person_journey(http, site, OTHER)  # the same person at another tenant: untouched
    assert await site.app[WRITER].flush()
    revenue = await clean.fetchval("SELECT sum(value) FROM conversions WHERE tenant_id = 'shop'")
    pending = await clean.fetchval("SELECT count(*) FROM forwards WHERE tenant_id = 'shop' AND status = 'pending'")
    assert pending >= 1
    status, _, answer = await delete(http, site, "email=JANA.NOVAK@example.cz&phone=601234567")
    assert status == 200
    assert answer == {"sessions_deleted": 1, "touches_deleted": 1, "events_deleted": 1, "leads_anonymized": 1,
                      "orders_anonymized": 1, "forwards_cancelled": pending}
    assert await clean.fetchval("SELECT sum(value) FROM conversions WHERE tenant_id = 'shop'") == revenue
    for table in ("sessions", "touches", "events", "identities"):
        assert await clean.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = 'shop'") == 0, table
        assert await clean.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = 'other'") >= 1, table
    row = await clean.fetchrow("SELECT * FROM conversions WHERE tenant_id = 'shop' AND kind = 'lead'")
    assert (row["email_enc"], row["email_bidx"], row["name_enc"], row["message_enc"]) == (None,) * 4
    assert row["attribution"] is not None and row["anonymized_at"] is not None
    statuses = {r["status"] for r in await clean.fetch(
        "SELECT status, payload_enc FROM forwards WHERE tenant_id = 'shop'")}
    assert "pending" not in statuses and "cancelled" in statuses
    assert await clean.fetchval("SELECT count(*) FROM forwards WHERE tenant_id = 'shop' AND payload_enc IS NOT NULL") \
        == 0
    # A raw dump of every table: no plain identifier, and nothing that decrypts to one.
    plain = ("jana", "novak", "novák", "601234567", "601 234 567", "example.cz")
    tables = [r["tablename"] for r in await clean.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    for table in tables:
        for record in await clean.fetch(f"SELECT * FROM {table}"):
            row_ = dict(record)
            if row_.get("tenant_id") != "shop":
                continue
            assert not any(p in repr(row_).lower() for p in plain), (table, row_)
            for column, value in row_.items():
                if isinstance(value, bytes) and value:
                    try:
                        text = KEYS.decrypt("shop", table, column, value)
                    except Exception:  # not a ciphertext of that column: nothing to read
                        continue
                    assert not any(p in text.lower() for p in plain), (table, column)
    # The audit entry: the key's name, the counts, and a keyed hash; nothing that reads as the person.
    [entry] = await audit.entries(clean, "shop")
    assert (entry["action"], entry["key_name"], entry["subject_kind"]) == ("delete", "ops", "email+phone")
    assert entry["counts"] == answer  # a JSON object
    dump = repr([dict(r) for r in await clean.fetch("SELECT * FROM privacy_audit")]).lower()
    for plain in ("jana", "novak", "601234567", "601 234 567", "example.cz"):
        assert plain not in dump
    # Repeating it is safe, and the person may come back as anyone does.
    again = await delete(http, site, "email=jana.novak@example.cz&phone=+420601234567")
    assert again[0] == 200 and set(again[2].values()) == {0}
    await person_journey(http, site)
    assert await clean.fetchval("SELECT count(*) FROM sessions WHERE tenant_id = 'shop'") >= 1


@pytest.mark.parametrize("query, status, field", [
    ("", 422, "email"),
    ("email=", 422, "email"),
    ("email=not-an-email", 422, "email"),
    ("phone=12", 422, "phone"),
    ("name=Jana", 422, "name"),
])
async def test_delete_user_names_what_is_wrong(site, http, query, status, field):
    got, _, answer = await delete(http, site, query)
    assert (got, answer.get("field")) == (status, field), answer



async def export(http, site, query: str, key: str | None = OPS, host: str = HOST):  # type: ignore[no-untyped-def]
    headers = {"Host": host}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with http.get(url(site, f"/_halo/export-user?{query}"), headers=headers) as resp:
        return resp.status, resp.headers, await resp.json()


SHAPE = {"subject", "sessions", "touches", "consent", "events", "identities", "leads", "orders", "forwards"}


async def test_export_user_gives_everything_decrypted_and_is_audited(site, http, clean):
    cookie = await person_journey(http, site)
    await person_journey(http, site, OTHER)
    status, headers, data = await export(http, site, "email=Jana.Novak@example.cz&phone=00420601234567")
    assert status == 200 and headers["Cache-Control"] == "no-store" and set(data) == SHAPE
    assert data["subject"] == {"email": "jana.novak@example.cz", "phone": "+420601234567"}
    [session] = data["sessions"]
    assert session["id"] == str(KEYS.open_session("shop", cookie))
    assert session["first_touch"]["source"] == "google" and session["click_ids"]["gclid"]["value"] == "g-1"
    assert session["user_agent"] == UA and session["ip"] == "127.0.0.1"  # kept under marketing consent
    assert [t["source"] for t in data["touches"]] == ["google"]
    assert data["consent"][0]["change"] == "current" and data["consent"][0]["analytics"] is True
    assert [e["name"] for e in data["events"]] == ["add_to_cart"]
    assert [i["value"] for i in data["identities"]] == ["jana.novak@example.cz"]
    [lead], [order] = data["leads"], data["orders"]
    assert (lead["email"], lead["name"], lead["message"], lead["value"]) == (
        "jana.novak@example.cz", "Jana Novák", "call me", 100.0)
    assert lead["match_type"] == "email" and lead["attribution"]["first_touch"]["source"] == "google"
    assert (order["phone"], order["value"], order["external_id"]) == ("+420601234567", 2500.0, "o-1")
    assert {f["platform"] for f in data["forwards"]} == {"meta"}
    assert all({"platform", "status", "event_id", "at", "consent"} <= set(f) for f in data["forwards"])
    # Only this tenant's rows, whatever the other tenant holds about the same person.
    assert all(s["id"] != str(KEYS.open_session("other", cookie)) for s in data["sessions"])
    [entry] = await audit.entries(clean, "shop")
    assert entry["action"] == "export" and entry["counts"]["leads"] == 1
    assert "jana" not in repr(dict(entry)).lower()


async def test_export_of_an_unknown_person_has_the_same_shape_with_empty_lists(site, http):
    status, _, data = await export(http, site, "email=nobody@example.cz")
    assert status == 200 and set(data) == SHAPE and data["subject"] == {"email": "nobody@example.cz"}
    assert all(data[name] == [] for name in SHAPE - {"subject"})


@pytest.mark.parametrize("key, host, status", [
    (None, HOST, 401), ("halo_nope", HOST, 401), (REPORT_ONLY, HOST, 403), (OTHER_OPS, HOST, 403), (OPS, OTHER, 403),
])
async def test_export_takes_the_same_keys(site, http, key, host, status):
    assert (await export(http, site, "email=jana.novak@example.cz", key, host))[0] == status


async def snapshot(pool) -> dict[tuple[str, str], object]:  # type: ignore[no-untyped-def]
    """Every row of every tenant table, by (table, tenant): what a route may have read or changed."""
    tables = [r["tablename"] for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    out: dict[tuple[str, str], object] = {}
    for table in tables:
        columns = {r["column_name"] for r in await pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table)}
        if "tenant_id" not in columns:
            continue
        for tenant in ("shop", "other"):
            rows = await pool.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1", tenant)
            out[(table, tenant)] = sorted(repr(sorted(dict(r).items())) for r in rows)
    return out


ROUTES = [("DELETE", "/_halo/delete-user?email=jana.novak@example.cz"),
          ("GET", "/_halo/export-user?email=jana.novak@example.cz"),
          ("GET", f"/_halo/report?{days_around_today()}"),
          ("GET", f"/_halo/report?{days_around_today()}&format=csv")]


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("key, key_tenant", [(OPS, "shop"), (OTHER_OPS, "other")])
@pytest.mark.parametrize("host, host_tenant", [(HOST, "shop"), (OTHER, "other")])
async def test_isolation_matrix_every_operator_route_every_key_every_host(site, http, clean, method, path, key,
                                                                        key_tenant, host, host_tenant):
    await person_journey(http, site)
    await person_journey(http, site, OTHER)
    await signed(http, site, "/_halo/webhook/lead", {"email": "only.other@example.cz", "event_id": "x"}, OTHER)
    assert await site.app[WRITER].flush()
    # The delivery worker keeps retrying the pending forward in the background (its platform is a closed port),
    # updating the row and adding to the ledger: stopped, so the snapshots compare what the route did alone.
    await site.app[WORKER].stop(5)
    before = await snapshot(clean)
    async with http.request(method, url(site, path), headers={"Host": host, "Authorization": f"Bearer {key}"}) as resp:
        status = resp.status
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
    after = await snapshot(clean)
    other_tenant = "other" if key_tenant == "shop" else "shop"
    # Whatever happened, the other tenant's rows are exactly as they were.
    assert {k: v for k, v in after.items() if k[1] == other_tenant} == \
        {k: v for k, v in before.items() if k[1] == other_tenant}
    if key_tenant != host_tenant:
        assert (status, body["error"]) == (403, "wrong_tenant")
        assert after == before
        return
    assert status == 200
    if "report" in path:  # a report reads its own tenant's conversions only (crediting any not yet credited)
        assert {k: v for k, v in after.items() if k[0] not in ("conversions", "conversion_credits")} == \
            {k: v for k, v in before.items() if k[0] not in ("conversions", "conversion_credits")}
        if "csv" in path:
            rows = [line.split(",") for line in body.strip().splitlines()[1:]]
            assert sum(float(r[4]) for r in rows) == {"shop": 2, "other": 3}[key_tenant]
        else:
            assert body["tenant"] == key_tenant
            assert body["totals"]["conversions"] == {"shop": 2, "other": 3}[key_tenant]
    elif method == "GET":  # an export reads; only the audit trail grows
        assert {k: v for k, v in after.items() if k[0] != "privacy_audit"} == \
            {k: v for k, v in before.items() if k[0] != "privacy_audit"}
        assert len(body["leads"]) == 1 and len(body["sessions"]) == 1
        assert all(lead["email"] == "jana.novak@example.cz" for lead in body["leads"])
    else:
        assert body["sessions_deleted"] == 1 and after[("sessions", key_tenant)] == []


def test_a_key_listed_under_two_tenants_or_two_names_alike_are_config_errors():
    from halo_proxy.config import ConfigError

    line = f'{{name: ops, sha256: "{key_digest(OPS)}", scopes: [privacy]}}'
    for text in (f"tenants:\n  - {{id: a, hosts: [a.test], upstream: 'http://127.0.0.1:1', api_keys: [{line}]}}\n"
                 f"  - {{id: b, hosts: [b.test], upstream: 'http://127.0.0.1:1', api_keys: [{line}]}}\n",
                 f"tenants:\n  - {{id: a, hosts: [a.test], upstream: 'http://127.0.0.1:1', api_keys: [{line}, "
                 f"{{name: ops, sha256: '{key_digest(OTHER_OPS)}', scopes: [report]}}]}}\n"):
        with pytest.raises(ConfigError) as caught:
            parse(text, "t.yaml", {})
        assert any("api_keys" in e for e in caught.value.errors)


async def test_a_shared_session_and_someone_else_s_lead_are_never_exported_nor_erased(site, http, clean):
    # Two people identify on one device; a lead of Petr's is matched to that session; an attacker identifies as
    # a victim on their own session, and the victim's lead is matched to it by email.
    async with http.get(url(site, "/?utm_source=news"), headers={**PAGE, "Host": HOST}) as resp:
        cookie = resp.cookies["_halo"].value
    jar = {"Host": HOST, "Cookie": f"_halo={cookie}", "Content-Type": "application/json", "Origin": f"http://{HOST}"}
    for email in ("jana@example.cz", "petr@example.cz"):
        async with http.post(url(site, "/_halo/identify"), data=json.dumps({"email": email}), headers=jar) as resp:
            assert resp.status == 200
    await signed(http, site, "/_halo/webhook/lead", {"email": "petr@example.cz", "name": "Petr", "event_id": "p",
                                                     "session_id": cookie})
    await signed(http, site, "/_halo/webhook/lead", {"email": "jana@example.cz", "name": "Jana", "event_id": "j"})
    _, _, data = await export(http, site, "email=jana@example.cz")
    assert data["sessions"] == [] and [lead["name"] for lead in data["leads"]] == ["Jana"]
    assert all("petr" not in json.dumps(value) for value in data.values())
    status, _, answer = await delete(http, site, "email=jana@example.cz")
    assert (answer["sessions_deleted"], answer["leads_anonymized"]) == (0, 1)  # the shared session stays
    petr = await clean.fetchrow("SELECT email_enc, name_enc FROM conversions WHERE external_id = 'p'")
    assert petr["email_enc"] is not None and petr["name_enc"] is not None
    kinds = await clean.fetch("SELECT kind FROM identities")
    assert len(kinds) == 1  # only Jana's link went; Petr's stays on the session


async def test_an_erased_person_coming_back_with_the_same_cookie_is_not_linked_to_the_old_conversions(
        site, http, clean):
    cookie = await person_journey(http, site)
    await delete(http, site, "email=jana.novak@example.cz&phone=601234567")
    assert await clean.fetchval("SELECT count(*) FROM conversions WHERE session_id IS NOT NULL") == 0
    assert await clean.fetchval("SELECT count(*) FROM conversions WHERE attribution ? 'session_id'") == 0
    # the old cookie again: the session is recreated under the same id, and the export finds nothing old
    async with http.get(url(site, "/?utm_source=again"), headers={**PAGE, "Host": HOST,
                                                                  "Cookie": f"_halo={cookie}"}) as resp:
        assert resp.status == 200
    jar = {"Host": HOST, "Cookie": f"_halo={cookie}", "Content-Type": "application/json", "Origin": f"http://{HOST}"}
    async with http.post(url(site, "/_halo/identify"), data=json.dumps({"email": "jana.novak@example.cz"}),
                         headers=jar) as resp:
        assert resp.status == 200
    _, _, data = await export(http, site, "email=jana.novak@example.cz")
    assert data["leads"] == [] and data["orders"] == []


@pytest.mark.parametrize("query, field", [("email=a@example.cz&email=b@example.cz", "email"),
                                          ("phone=1&phone=2", "phone")])
async def test_a_parameter_sent_twice_is_refused(site, http, query, field):
    status, _, answer = await delete(http, site, query)
    assert (status, answer["field"]) == (422, field)


async def test_two_authorization_headers_are_no_key(site, http):
    async with http.delete(url(site, "/_halo/delete-user?email=a@example.cz"),
                           headers=[("Host", HOST), ("Authorization", f"Bearer {OPS}"),
                                    ("Authorization", f"Bearer {OTHER_OPS}")]) as resp:
        assert resp.status == 401


async def test_an_unencoded_plus_of_an_international_phone_is_read_as_plus(site, http, clean):
    await signed(http, site, "/_halo/webhook/lead", {"phone": "+352 261 234", "event_id": "lu"})
    _, _, data = await export(http, site, "phone=+352261234")  # the "+" left unencoded, as a shell user types it
    assert data["subject"] == {"phone": "+352261234"}  # Luxembourg, not +420 352261234
    assert len(data["leads"]) == 1
