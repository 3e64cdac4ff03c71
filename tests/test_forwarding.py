"""Conversions forwarded to fake Meta, GA4, Data Manager and TikTok servers that check every request.

In-process: the consent gate, answers before any platform call, retries with Retry-After, transient and permanent
errors, age limits, hangs, graceful stop. As processes: a worker killed by SIGKILL between the send and the
database update (the event is sent again with the same event id, nothing lost), and two processes draining one
outbox without sending anything twice.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from halo_proxy.app import CLIENT, CONFIG, METRICS, WORKER, create_app
from halo_proxy.config import parse
from halo_proxy.crypto import KeyRing
from halo_proxy.forwarders.worker import DeliveryMetrics, DeliveryWorker
from halo_proxy.metrics import Metrics
from halo_proxy.storage import outbox
from tests.fakes.platforms import (
    HANG,
    OK,
    PERMANENT,
    RATE_LIMITED,
    TRANSIENT,
    FakeDataManager,
    FakeGa4,
    FakeMeta,
    FakeTikTok,
    serve,
)
from tests.procs import TEST_SECRET, ProxyProcess
from tests.upstream import create_upstream

HOST = "shop.localhost"
SECRET = "whsec-test-0123456789abcdef"
KEYS = KeyRing(TEST_SECRET)
BROWSER = {"Host": HOST, "Accept": "text/html", "Sec-Fetch-Dest": "document",
           "User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                         "Version/17.5 Safari/605.1.15"}


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def tenant_yaml(upstream_port: int, fakes: dict, *, outbox_extra: str = "", send_timeout: float = 1,
                lease: float = 3, stop: str = "{drain_s: 0}") -> str:
    meta, ga4, gads, tiktok = fakes["meta"], fakes["ga4"], fakes["google_ads"], fakes["tiktok"]
    return f"""
server:
  outbox: {{poll_s: 0.05, send_timeout_s: {send_timeout}, lease_s: {lease}, backoff_base_s: 1, backoff_cap_s: 10{outbox_extra}}}
  stop: {stop}
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    currency: CZK
    default_phone_region: CZ
    webhook_secret: {SECRET}
    forwarders:
      meta: {{pixel_id: "{meta.pixel_id}", access_token: {meta.access_token}, base_url: "{meta.base}"}}
      ga4: {{measurement_id: {ga4.measurement_id}, api_secret: {ga4.api_secret}, base_url: "{ga4.base}"}}
      google_ads: {{account_id: "{gads.account_id}", conversion_action_id: "{gads.conversion_action_id}",
                    access_token: {gads.access_token}, base_url: "{gads.base}"}}
      tiktok: {{pixel_code: {tiktok.pixel_code}, access_token: {tiktok.access_token}, base_url: "{tiktok.base}"}}
"""


def sign(body: bytes, t: int) -> str:
    return f"t={t},v1={hmac.new(SECRET.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


@pytest.fixture
async def fakes(aiohttp_server):
    made = {"meta": FakeMeta(), "ga4": FakeGa4(), "google_ads": FakeDataManager(), "tiktok": FakeTikTok()}
    for fake in made.values():
        fake.base = await serve(aiohttp_server, fake)
    return made




@pytest.fixture
def clock(fakes):
    c = Clock()
    for fake in fakes.values():
        fake.now = c
    return c


@pytest.fixture
async def upstream(aiohttp_server):
    return await aiohttp_server(create_upstream())


@pytest.fixture
async def site(aiohttp_server, upstream, fakes, clean, clock):
    settings = parse(tenant_yaml(upstream.port, fakes), "t.yaml", {})
    server = await aiohttp_server(create_app(settings, Metrics(), keys=KEYS, pool=clean, migrate=False,
                                             clock=clock))
    yield server
    await server.close()  # before the pool it uses is closed


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def land(http, base: str, query: str, **headers: str) -> str:
    async with http.get(f"{base}/?{query}", headers={**BROWSER, **headers}) as resp:
        assert resp.status == 200
        return resp.cookies["_halo"].value


async def lead(http, base: str, payload: dict, now: datetime, host: str = HOST) -> tuple[int, dict]:
    body = json.dumps(payload).encode()
    headers = {"Host": host, "Content-Type": "application/json", "X-Halo-Signature": sign(body, int(now.timestamp()))}
    async with http.post(f"{base}/_halo/webhook/lead", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


def base_of(server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def wait_drained(pool, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        counts = await outbox.count_by_status(pool)
        if counts.get("pending", 0) == 0 and counts.get("sent", 0) > 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the outbox was not drained: {await outbox.count_by_status(pool)}")


async def drain_as_time_passes(pool, clock, wake, within: float) -> None:
    """`wait_drained` on the test's frozen clock: a send that timed out on a loaded machine is retried at a later
    time, which this clock reaches only when moved there (as the time passing would), and the worker woken."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        counts = await outbox.count_by_status(pool)
        if counts.get("pending", 0) == 0 and counts.get("sent", 0) > 0:
            return
        due = max((r.next_attempt_at for r in await outbox.list_forwards(pool, "pending", "shop", 1000)),
                  default=None)
        if due is not None and due > clock.now:
            clock.now = due + timedelta(seconds=1)
            wake()
        await asyncio.sleep(0.1)
    raise AssertionError(f"the outbox was not drained: {await outbox.count_by_status(pool)}")


async def wait_rows(pool, status: str, count: int, within: float = 10.0) -> list:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rows = await outbox.list_forwards(pool, status, "shop", 1000)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} {status} forwards, have {await outbox.count_by_status(pool)}")


async def test_a_consented_lead_reaches_every_platform_with_one_event_id(site, http, fakes, clean, clock):
    cookie = await land(http, base_of(site), "utm_source=google&utm_medium=cpc&gclid=Cj0-gclid&fbclid=IwAR-fb"
                        "&ttclid=E.C.P.tt")
    status, body = await lead(http, base_of(site), {"email": "John_Smith@gmail.com", "phone": "+1 (650) 555-1212",
                                                    "session_id": cookie, "value": 120, "event_id": "lead-7"},
                              clock.now)
    assert status == 201
    await wait_rows(clean, "sent", 4)
    ids = set()
    for name, fake in fakes.items():
        assert fake.rejected == [], (name, [x.problems for x in fake.rejected])
        events = fake.events
        assert len(events) == 1, name
        ids.add(json.dumps(events[0].get("event_id") or events[0].get("transactionId")
                           or events[0].get("params", {}).get("transaction_id")))
    meta_event = fakes["meta"].events[0]
    assert meta_event["event_name"] == "Lead" and meta_event["action_source"] == "website"
    user = meta_event["user_data"]
    assert user["em"] == [hashlib.sha256(b"john_smith@gmail.com").hexdigest()] or \
        user["em"] == hashlib.sha256(b"john_smith@gmail.com").hexdigest()
    assert user["client_ip_address"] == "127.0.0.1"
    assert user["fbc"].endswith(".IwAR-fb")
    assert fakes["google_ads"].events[0]["adIdentifiers"] == {"gclid": "Cj0-gclid"}
    assert fakes["tiktok"].events[0]["user"]["ttclid"] == "E.C.P.tt"
    stored = {r.event_id for r in await outbox.list_forwards(clean, "sent", "shop", 10)}
    assert len(stored) == 1  # one stable event id for the conversion, on every platform
    assert meta_event["event_id"] in stored


async def test_the_answer_comes_before_any_platform_call(site, http, fakes, clean, clock):
    for fake in fakes.values():
        fake.set_mode(HANG)
    cookie = await land(http, base_of(site), "utm_source=google&utm_medium=cpc&gclid=g1")
    started = time.monotonic()
    status, _ = await lead(http, base_of(site), {"email": "a@example.com", "session_id": cookie}, clock.now)
    assert status == 201
    assert time.monotonic() - started < 0.9  # less than the 1 s send timeout: nothing waited for a platform
    await fakes["meta"].wait_for_exchanges(1)
    assert await clean.fetchval("SELECT count(*) FROM conversions") == 1


@pytest.mark.parametrize("consent,expected", [
    ({"cookieyes-consent": "consentid:a,consent:yes,action:yes,analytics:yes,advertisement:no"}, "no_consent"),
    ({"Sec-GPC": "1"}, "gpc"),
])
async def test_consent_gate_skips_with_a_reason(site, http, fakes, clean, clock, consent, expected):
    headers = {}
    if "cookieyes-consent" in consent:
        headers["Cookie"] = f"cookieyes-consent={consent['cookieyes-consent']}"
    else:
        headers.update(consent)
    cookie = await land(http, base_of(site), "utm_source=google&utm_medium=cpc&gclid=g2", **headers)
    status, _ = await lead(http, base_of(site), {"email": "a@example.com", "session_id": cookie}, clock.now)
    assert status == 201
    rows = await outbox.list_forwards(clean, "skipped", "shop", 10)
    assert len(rows) == 4 and {r.reason for r in rows} == {expected}
    assert all(r.payload_enc is None for r in rows)
    assert sum(len(f.exchanges) for f in fakes.values()) == 0


async def test_explicit_form_consent_forwards_an_unmatched_lead(site, http, fakes, clean, clock):
    status, body = await lead(http, base_of(site), {"email": "solo@example.com", "consent_marketing": True},
                              clock.now)
    assert status == 201 and body["match_type"] == "none"
    # Meta and TikTok match on the hashed email; GA4 and Google Ads need a click or client id too.
    await fakes["meta"].wait_for_events(1)
    await fakes["tiktok"].wait_for_events(1)
    status, _ = await lead(http, base_of(site), {"email": "nope@example.com"}, clock.now)
    assert {r.reason for r in await outbox.list_forwards(clean, "skipped", "shop", 10)} == {"no_session_consent"}


async def test_a_platform_with_no_one_to_match_is_skipped_when_stored_not_dead_lettered(site, http, fakes, clean,
                                                                                        clock):
    # A visit with marketing consent and no ad click, then a lead with neither email nor phone: Meta and TikTok
    # match on the session's IP and user agent, GA4 on its client id; Google Ads has no click, email or phone.
    cookie = await land(http, base_of(site), "utm_source=newsletter&utm_medium=email")
    payload = {"session_id": cookie, "name": "Jana", "event_id": "nobody-1"}
    status, body = await lead(http, base_of(site), payload, clock.now)
    assert status == 201 and body["match_type"] == "session"
    assert (await lead(http, base_of(site), payload, clock.now))[0] == 200  # a repeat stores and counts nothing
    rows = {r.platform: r for r in await outbox.list_forwards(clean, None, "shop", 10)}
    assert (rows["google_ads"].status, rows["google_ads"].reason, rows["google_ads"].payload_enc) == \
        ("skipped", "no_identifiers", None)
    assert {p: r.status in ("pending", "sent") for p, r in rows.items() if p != "google_ads"} == \
        {"meta": True, "ga4": True, "tiktok": True}
    await wait_rows(clean, "sent", 3)
    assert fakes["google_ads"].exchanges == []
    assert await outbox.count_by_status(clean) == {"sent": 3, "skipped": 1}  # no dead letter asks for attention
    skips = site.app[METRICS].forward_skips.labels(tenant="shop", platform="google_ads", reason="no_identifiers")
    assert skips._value.get() == 1  # noqa: SLF001


async def test_meta_matches_on_a_name_and_a_city_where_the_others_have_no_one(site, http, fakes, clean, clock):
    # A session id that names no stored visit, no email or phone, the form's own consent box: Meta matches on
    # the hashed name and city; TikTok and Google Ads have nothing to match on; GA4 needs nothing.
    status, body = await lead(http, base_of(site), {"session_id": str(uuid.uuid4()), "first_name": "Jana",
                                                    "last_name": "Nováková", "city": "Brno",
                                                    "consent_marketing": True}, clock.now)
    assert status == 201 and body["match_type"] == "none"
    rows = {r.platform: "to send" if r.status in ("pending", "sent") else r.status
            for r in await outbox.list_forwards(clean, None, "shop", 10)}
    assert rows == {"meta": "to send", "ga4": "to send", "google_ads": "skipped", "tiktok": "skipped"}
    assert {r.reason for r in await outbox.list_forwards(clean, "skipped", "shop", 10)} == {"no_identifiers"}
    [event] = (await fakes["meta"].wait_for_events(1))
    assert set(event["user_data"]) >= {"fn", "ln", "ct"} and not {"em", "ph"} & set(event["user_data"])


async def test_429_waits_at_least_retry_after_then_sends(site, http, fakes, clean, clock):
    fakes["meta"].retry_after_s = 30
    fakes["meta"].answer(RATE_LIMITED, then=OK)
    cookie = await land(http, base_of(site), "utm_source=facebook&utm_medium=cpc&fbclid=f1")
    await lead(http, base_of(site), {"email": "a@example.com", "session_id": cookie}, clock.now)
    await fakes["meta"].wait_for_exchanges(1)
    row = await wait_meta(clean, lambda r: r.reason in ("http_429", "meta_throttled"))
    assert row.next_attempt_at >= clock.now + timedelta(seconds=30)
    await site.app[WORKER].run_once()
    assert len(fakes["meta"].exchanges) == 1  # not due yet
    clock.now += timedelta(seconds=31)
    site.app[WORKER].wake()
    await fakes["meta"].wait_for_events(1)
    row = await wait_meta(clean, lambda r: r.status == "sent")
    assert row.attempts == 2


async def wait_meta(pool, predicate, within: float = 10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rows = [r for r in await outbox.list_forwards(pool, None, "shop", 50) if r.platform == "meta"]
        if rows and predicate(rows[0]):
            return rows[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"meta forward never matched: {rows}")


async def test_transient_is_retried_and_permanent_is_dead_lettered(site, http, fakes, clean, clock):
    fakes["meta"].answer(TRANSIENT, then=OK)
    fakes["tiktok"].set_mode(PERMANENT)
    cookie = await land(http, base_of(site), "utm_source=tiktok&utm_medium=cpc&ttclid=E.C.P.x&fbclid=f2")
    await lead(http, base_of(site), {"email": "a@example.com", "session_id": cookie}, clock.now)
    row = await wait_meta(clean, lambda r: r.reason == "meta_transient")
    clock.now = row.next_attempt_at + timedelta(seconds=1)
    site.app[WORKER].wake()
    await wait_meta(clean, lambda r: r.status == "sent")
    dead = await wait_rows(clean, "dead", 1)
    assert dead[0].platform == "tiktok" and dead[0].reason == "auth"  # TikTok 40001: a permission error
    assert "40001" in (dead[0].last_error or "")


async def test_a_hanging_platform_times_out_and_is_retried(site, http, fakes, clean, clock):
    fakes["meta"].answer(HANG, then=OK)
    cookie = await land(http, base_of(site), "utm_source=facebook&utm_medium=cpc&fbclid=f3")
    await lead(http, base_of(site), {"email": "a@example.com", "session_id": cookie}, clock.now)
    row = await wait_meta(clean, lambda r: r.reason == "timeout")
    assert row.status == "pending"


async def test_events_older_than_a_platform_accepts_are_dead_lettered_not_sent(site, http, fakes, clean, clock):
    cookie = await land(http, base_of(site), "utm_source=google&utm_medium=cpc&gclid=old&fbclid=old")
    body = json.dumps({"order_id": "old-1", "value": 10, "email": "a@example.com", "session_id": cookie,
                       "occurred_at": (clock.now - timedelta(days=8)).isoformat()}).encode()
    headers = {"Host": HOST, "Content-Type": "application/json", "X-Halo-Signature": sign(body, int(clock.now.timestamp()))}
    async with http.post(f"{base_of(site)}/_halo/webhook/order", data=body, headers=headers) as resp:
        assert resp.status == 201
    dead = await wait_rows(clean, "dead", 3)
    assert {(r.platform, r.reason) for r in dead} == {("meta", "too_old"), ("ga4", "too_old"), ("tiktok", "too_old")}
    await wait_rows(clean, "sent", 1)  # Google Ads takes clicks up to 90 days old
    assert fakes["meta"].exchanges == [] and fakes["ga4"].exchanges == [] and fakes["tiktok"].exchanges == []


async def test_stop_finishes_the_send_in_flight(aiohttp_server, upstream, fakes, clean, clock, http):
    settings = parse(tenant_yaml(upstream.port, fakes), "t.yaml", {})
    server = await aiohttp_server(create_app(settings, Metrics(), keys=KEYS, pool=clean, migrate=False,
                                             clock=clock))
    worker = server.app[WORKER]
    fakes["meta"].set_mode(HANG)
    cookie = await land(http, base_of(server), "utm_source=facebook&utm_medium=cpc&fbclid=f4")
    await lead(http, base_of(server), {"email": "a@example.com", "session_id": cookie}, clock.now)
    await fakes["meta"].wait_for_exchanges(1)
    await worker.stop()  # waits for the round: the hung send times out and is recorded for a retry
    row = await wait_meta(clean, lambda r: r.reason == "timeout", within=1)
    assert row.locked_by is None


# --------------------------------------------------------------------------------------------------------------
# Processes.


async def start_proxy(tmp_path, upstream, fakes, database, name: str, *, workers: int = 1,
                      **yaml: object) -> ProxyProcess:
    config = tmp_path / f"{name}.yaml"
    config.write_text(tenant_yaml(upstream.port, fakes, **yaml))  # type: ignore[arg-type]
    return await ProxyProcess(config, workers=workers, env={"HALO_DATABASE_URL": database.dsn}).start(HOST)


async def test_sigkill_between_send_and_update_resends_with_the_same_event_id(tmp_path, upstream, fakes, database,
                                                                            clean, http):
    fakes["meta"].set_mode(HANG)
    fakes["ga4"].set_mode(HANG)
    first = await start_proxy(tmp_path, upstream, fakes, database, "first", send_timeout=30, lease=31)
    try:
        cookie = await land(http, first.base, "utm_source=facebook&utm_medium=cpc&fbclid=kill")
        status, _ = await lead(http, first.base, {"email": "k@example.com", "session_id": cookie},
                               datetime.now(UTC))
        assert status == 201
        await fakes["meta"].wait_for_exchanges(1, within=10)
        await fakes["ga4"].wait_for_exchanges(1, within=10)
        first.signal(signal.SIGKILL)  # the platforms have the event; the database does not know it was sent
        assert await first.stop() == -signal.SIGKILL
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    sent_once = fakes["meta"].exchanges[0].body["data"][0]["event_id"]
    row = await wait_meta(clean, lambda r: r.status == "pending")
    for name in ("meta", "ga4"):
        fakes[name].set_mode(OK)
        fakes[name]._release.set()  # noqa: SLF001 - let the orphaned request finish
    # The killed process's leases (31 s) are not waited for here: the second process is a new one, so its rows
    # come back when the lease runs out; under a supervisor they come back at once (see below).
    await clean.execute("UPDATE forwards SET locked_until = now() WHERE status = 'pending'")
    second = await start_proxy(tmp_path, upstream, fakes, database, "second")
    try:
        await fakes["meta"].wait_for_events(1, within=15)
        row = await wait_meta(clean, lambda r: r.status == "sent", within=15)
        await wait_drained(clean, within=15)
    finally:
        assert await second.stop() == 0
    assert fakes["meta"].events[0]["event_id"] == sent_once
    assert row.attempts == 2
    counts = await outbox.count_by_status(clean)
    assert counts == {"sent": 4}, counts  # none lost
    # GA4 has no dedup key for a lead: the one request that may have arrived is not sent again.
    assert len(fakes["ga4"].exchanges) == 1
    ga4 = [r for r in await outbox.list_forwards(clean, "sent", "shop", 10) if r.platform == "ga4"][0]
    assert ga4.reason == "unconfirmed"
    ledger = await outbox.attempts_for(clean, [ga4.id])
    assert [a.outcome for a in ledger] == ["unconfirmed"]
    for name in ("tiktok",):  # at least once, always under the same event id
        assert {e["event_id"] for e in fakes[name].events} == {sent_once}


async def test_two_processes_drain_one_outbox_without_a_double_send(tmp_path, upstream, fakes, database, clean,
                                                                   http):
    for fake in fakes.values():
        fake.set_mode(HANG)  # hold everything until both processes have rows waiting
    a = await start_proxy(tmp_path, upstream, fakes, database, "a")
    b = await start_proxy(tmp_path, upstream, fakes, database, "b")
    try:
        now = datetime.now(UTC)
        results = await asyncio.gather(*(
            lead(http, (a if i % 2 else b).base, {"email": f"p{i}@example.com", "consent_marketing": True,
                                                  "event_id": f"bulk-{i}"}, now) for i in range(60)))
        assert all(status == 201 for status, _ in results)
        for fake in fakes.values():
            fake.set_mode(OK)
            fake._release.set()  # noqa: SLF001
        await wait_drained(clean, within=40)
    finally:
        assert await a.stop() == 0
        assert await b.stop() == 0
    for name in ("meta", "tiktok"):
        ids = [e["event_id"] for e in fakes[name].events]
        assert len(ids) == 60 and len(set(ids)) == 60, name


async def test_outbox_commands_list_show_and_requeue_dead_letters(site, http, fakes, clean, clock, database):
    fakes["tiktok"].set_mode(PERMANENT)
    cookie = await land(http, base_of(site), "utm_source=tiktok&utm_medium=cpc&ttclid=E.C.P.cli")
    await lead(http, base_of(site), {"email": "cli@example.com", "session_id": cookie}, clock.now)
    dead = await wait_rows(clean, "dead", 1)
    env = {**os.environ, "HALO_DATABASE_URL": database.dsn, "HALO_SECRET_KEY": TEST_SECRET}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "halo_proxy", "--log-level", "WARNING", "outbox", *args],
                              capture_output=True, text=True, env=env, timeout=60)

    listed = cli("list", "--status", "dead", "--tenant", "shop")
    assert listed.returncode == 0 and "tiktok" in listed.stdout and "1 row(s)" in listed.stdout
    shown = cli("show", str(dead[0].id))
    assert shown.returncode == 0 and "40001" in shown.stdout and "encrypted" in shown.stdout
    assert "ledger (1 attempt(s))" in shown.stdout and " dead " in shown.stdout and "granted" in shown.stdout
    assert "cli@example.com" not in shown.stdout
    fakes["tiktok"].set_mode(OK)
    retried = cli("retry", str(dead[0].id))
    assert retried.returncode == 0 and "requeued 1" in retried.stdout
    clock.now = datetime.now(UTC) + timedelta(seconds=1)  # requeued rows are due at the database's now
    site.app[WORKER].wake()
    await fakes["tiktok"].wait_for_events(1)
    await drain_as_time_passes(clean, clock, site.app[WORKER].wake, within=20)
    await site.app[WORKER].update_gauges()
    registry = site.app[WORKER].metrics.depth._metrics  # noqa: SLF001 - read the gauge children directly
    assert all(child._value.get() == 0 for child in registry.values())  # noqa: SLF001
    assert cli("show", "999999").returncode == 1


# --------------------------------------------------------------------------------------------------------------
# Lanes, leases, stops and the ledger.


async def app_with(aiohttp_server, upstream, fakes, pool, clock, **yaml: object):  # type: ignore[no-untyped-def]
    settings = parse(tenant_yaml(upstream.port, fakes, **yaml), "t.yaml", {})  # type: ignore[arg-type]
    return await aiohttp_server(create_app(settings, Metrics(), keys=KEYS, pool=pool, migrate=False, clock=clock))


def bulk(i: int, tag: str) -> dict:
    return {"email": f"{tag}{i}@example.com", "consent_marketing": True}


async def test_a_hanging_platform_delays_only_its_own_lane(aiohttp_server, upstream, fakes, clean, clock, http):
    server = await app_with(aiohttp_server, upstream, fakes, clean, clock, send_timeout=30, lease=31)
    fakes["tiktok"].set_mode(HANG)
    await lead(http, base_of(server), bulk(0, "hang"), clock.now)
    await fakes["tiktok"].wait_for_exchanges(1)  # TikTok's lane now waits on a request that does not answer
    for i in range(1, 6):
        assert (await lead(http, base_of(server), bulk(i, "hang"), clock.now))[0] == 201
    for name in ("meta", "ga4"):
        events = await fakes[name].wait_for_events(6)  # while TikTok's first request still hangs
        assert len(events) == 6
    assert len(fakes["tiktok"].exchanges) == 1
    released = await server.app[WORKER].stop(timeout_s=0.2)  # a stop that cannot wait for TikTok
    assert released == 1
    pending = [r for r in await outbox.list_forwards(clean, "pending", "shop", 50) if r.platform == "tiktok"]
    assert len(pending) == 6 and all(r.locked_by is None for r in pending)
    in_flight = [r for r in pending if r.in_doubt]
    assert len(in_flight) == 1  # the one whose request left: a platform that deduplicates gets it again
    assert [a.outcome for a in await outbox.attempts_for(clean, [in_flight[0].id])] == ["released"]


async def test_429_pauses_only_that_platform_for_that_tenant(site, http, fakes, clean, clock):
    fakes["meta"].retry_after_s = 30
    fakes["meta"].answer(RATE_LIMITED, then=OK)
    await lead(http, base_of(site), bulk(1, "rl"), clock.now)
    await wait_meta(clean, lambda r: r.reason in ("http_429", "meta_throttled"))
    await lead(http, base_of(site), bulk(2, "rl"), clock.now)
    await fakes["ga4"].wait_for_events(2)  # the other platforms go on
    await fakes["tiktok"].wait_for_events(2)
    await site.app[WORKER].run_once()
    assert len(fakes["meta"].exchanges) == 1  # the second lead waits with the first: Meta asked for 30 s
    second = [r for r in await outbox.list_forwards(clean, "pending", "shop", 50) if r.platform == "meta"]
    assert len(second) == 2 and {r.attempts for r in second} == {0, 1}  # the second was never even claimed
    clock.now += timedelta(seconds=31)
    site.app[WORKER].wake()
    await fakes["meta"].wait_for_events(2)
    assert {e["event_id"] for e in fakes["meta"].events} == {r.event_id for r in second}


def second_worker(site, pool, clock, worker_id: str) -> DeliveryWorker:  # type: ignore[no-untyped-def]
    holder = site.app[CONFIG]
    return DeliveryWorker(pool, site.app[CLIENT], lambda: holder.current,
                          lambda tenant_id, blob: KEYS.decrypt(tenant_id, "forwards", "payload_enc", blob),
                          DeliveryMetrics(CollectorRegistry()), clock=clock, worker_id=worker_id)


async def test_rows_waiting_behind_a_slow_send_are_never_sent_twice(aiohttp_server, upstream, fakes, clean, clock,
                                                                   http):
    server = await app_with(aiohttp_server, upstream, fakes, clean, clock, outbox_extra=", concurrency: 1")
    await server.app[WORKER].stop()  # the two workers below are driven by hand
    for i in range(3):
        await lead(http, base_of(server), bulk(i, "slow"), clock.now)
    fakes["ga4"].answer(HANG, then=OK)
    a = second_worker(server, clean, clock, "host:1:a")
    b = second_worker(server, clean, clock, "host:2:b")
    round_a = asyncio.create_task(a.run_lane_once("ga4"))  # claims all three, sends one at a time
    await fakes["ga4"].wait_for_exchanges(1)
    # A stalls past every lease it holds (as if its heartbeat had stopped): B takes the three rows over.
    clock.now += timedelta(seconds=a.lease_s + 1)
    assert await b.run_lane_once("ga4") == 3
    fakes["ga4"]._release.set()  # noqa: SLF001 - A's first request ends at last (504)
    assert await round_a == 3
    # The row A was sending may have arrived: GA4 has no dedup key for a lead, so B did not send it again; and A
    # sent none of the rows it no longer held.
    assert len(fakes["ga4"].exchanges) == 3 and len(fakes["ga4"].accepted) == 2
    rows = sorted((r for r in await outbox.list_forwards(clean, None, "shop", 50) if r.platform == "ga4"),
                  key=lambda r: r.id)
    assert [(r.status, r.reason, r.locked_by) for r in rows] == [("sent", "unconfirmed", None), ("sent", None, None),
                                                                 ("sent", None, None)]


async def test_a_supervisor_gives_a_killed_worker_s_rows_back_at_once(tmp_path, upstream, fakes, database, clean,
                                                                      http):
    fakes["meta"].set_mode(HANG)
    proxy = await start_proxy(tmp_path, upstream, fakes, database, "sup", workers=2, send_timeout=20, lease=60)
    try:
        assert (await lead(http, proxy.base, bulk(1, "sup"), datetime.now(UTC)))[0] == 201
        await fakes["meta"].wait_for_exchanges(1, within=10)
        row = await wait_meta(clean, lambda r: r.locked_by is not None)
        fakes["meta"].set_mode(OK)
        holder = row.locked_by
        os.kill(int(holder.split(":")[1]), signal.SIGKILL)  # the worker holding the row, mid-send
        # Its lease runs for 60 s more; the supervisor releases the row as soon as it sees the worker die.
        await fakes["meta"].wait_for_events(1, within=20)
        row = await wait_meta(clean, lambda r: r.status == "sent", within=10)
        assert row.attempts == 2 and fakes["meta"].events[0]["event_id"] == row.event_id
        # The ledger says what happened to the first attempt: its worker died during the send.
        ledger = await outbox.attempts_for(clean, [row.id])
        assert [(a.outcome, a.reason, a.detail) for a in ledger] == [
            ("released", "worker_died", "the worker died during its send"), ("sent", "ok", "1 events received")]
        assert ledger[0].attempt == 1 and ledger[0].worker == ":".join(holder.split(":")[:2])
        # Ops see it: the supervisor counts the restart and the row it gave back, beside the workers' samples.
        async with http.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics") as resp:
            scraped = await resp.text()
        assert "halo_worker_restarts_total 1.0" in scraped.splitlines()
        died = collections.Counter(r["platform"] for r in await clean.fetch(
            "SELECT platform FROM forward_attempts WHERE reason = 'worker_died'"))
        assert died["meta"] == 1
        for platform in ("meta", "ga4", "google_ads", "tiktok"):  # what the ledger says, each platform present
            assert f'halo_forwards_released_total{{platform="{platform}"}} {float(died[platform])}' in \
                scraped.splitlines()
    finally:
        fakes["meta"]._release.set()  # noqa: SLF001
        await proxy.stop()


async def test_sigterm_with_a_hanging_platform_is_bounded_and_says_what_it_left(tmp_path, upstream, fakes,
                                                                              database, clean, http):
    fakes["tiktok"].set_mode(HANG)
    proxy = await start_proxy(tmp_path, upstream, fakes, database, "stop", send_timeout=30, lease=31,
                              stop="{drain_s: 1, timeout_s: 3}")
    try:
        assert (await lead(http, proxy.base, bulk(1, "term"), datetime.now(UTC)))[0] == 201
        await fakes["tiktok"].wait_for_exchanges(1, within=10)
        proxy.signal(signal.SIGTERM)
        answers = []
        while not answers or answers[-1][0] == 200:  # until the process has seen the signal
            async with http.get(f"{proxy.base}/_halo/readyz", headers={"Host": HOST}) as resp:
                answers.append((resp.status, await resp.json()))
        # The load balancer is told first, while the listener still accepts.
        assert answers[-1] == (503, {"error": "stopping", "detail": "This process is stopping; send requests elsewhere."})
        code = await proxy.stop()
    finally:
        fakes["tiktok"]._release.set()  # noqa: SLF001
    assert code == 3, proxy.log()  # work was abandoned: not a clean exit
    assert "unsent" in proxy.log()
    row = [r for r in await outbox.list_forwards(clean, "pending", "shop", 10) if r.platform == "tiktok"][0]
    assert row.locked_by is None  # released: the next process takes it at once
    assert [a.outcome for a in await outbox.attempts_for(clean, [row.id])] == ["released"]
    assert await outbox.count_by_status(clean) == {"sent": 3, "pending": 1}


async def test_every_attempt_is_in_the_ledger_with_its_consent(site, http, fakes, clean, clock):
    fakes["meta"].answer(TRANSIENT, then=OK)
    await lead(http, base_of(site), bulk(1, "led"), clock.now)
    row = await wait_meta(clean, lambda r: r.reason == "meta_transient")
    clock.now = row.next_attempt_at + timedelta(seconds=1)
    site.app[WORKER].wake()
    row = await wait_meta(clean, lambda r: r.status == "sent")
    ledger = await outbox.attempts_for(clean, [row.id])
    assert [(a.attempt, a.outcome, a.reason) for a in ledger] == [(1, "retry", "meta_transient"), (2, "sent", "ok")]
    assert all(a.consent_marketing is True and a.platform == "meta" and a.worker for a in ledger)


async def test_the_outbox_depth_follows_the_table_without_being_asked(site, http, fakes, clean, clock):
    fakes["meta"].set_mode(HANG)
    await lead(http, base_of(site), bulk(1, "gauge"), clock.now)
    gauge = site.app[WORKER].metrics.depth.labels(platform="meta")
    deadline = time.monotonic() + 10
    while gauge._value.get() != 1:  # noqa: SLF001 - refreshed by the worker every GAUGE_EVERY_S
        assert time.monotonic() < deadline, "the outbox depth was never refreshed"
        await asyncio.sleep(0.1)
    fakes["meta"]._release.set()  # noqa: SLF001


async def test_outbox_gauges_and_counters_are_present_from_the_start(site):
    registry = site.app[WORKER].metrics.depth._metrics  # noqa: SLF001
    assert set(registry) == {(p,) for p in ("meta", "ga4", "google_ads", "tiktok")}
    text = generate_latest(site.app[METRICS].registry).decode()
    for line in ('halo_forwards_sent_total{platform="ga4"} 0.0', 'halo_storage_lost_writes_total{kind="visit"} 0.0',
                 'halo_forwards_released_total{platform="meta"} 0.0'):
        assert line in text, line


async def test_a_forward_this_process_has_no_platform_for_waits_for_one_that_has(site, clean, clock):
    # Another process's tenant file (a rolling deploy adding a tenant): this one retries it later, never kills it.
    cid = uuid.uuid4()
    await clean.execute("INSERT INTO conversions (id, tenant_id, kind, source, created_at, occurred_at) VALUES"
                        " ($1, 'newcomer', 'lead', 'api', $2, $2)", cid, clock.now)
    await clean.execute("INSERT INTO forwards (tenant_id, conversion_id, platform, event_id, status, next_attempt_at,"
                        " payload_enc, created_at, updated_at) VALUES ('newcomer', $1, 'meta', 'e1', 'pending', $2,"
                        " '\\x01', $2, $2)", cid, clock.now)
    await site.app[WORKER].run_once()
    row = await clean.fetchrow("SELECT status, reason, next_attempt_at FROM forwards WHERE tenant_id = 'newcomer'")
    assert (row["status"], row["reason"]) == ("pending", "not_configured")
    assert row["next_attempt_at"] > clock.now
