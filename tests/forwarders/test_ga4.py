"""GA4 Measurement Protocol: payload, client ids, batching by client, own validation, classification."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from halo_proxy.config import Ga4Settings
from halo_proxy.forwarders import ga4
from tests.fakes.platforms import FakeGa4, serve

SETTINGS = Ga4Settings(measurement_id="G-TEST123", api_secret="ga4-secret", base_url="http://127.0.0.1:1")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_limits():
    assert ga4.MAX_BATCH == 25
    assert ga4.MAX_AGE == timedelta(hours=72)


def test_request(make_event, now):
    event = make_event(email="John.Smith+ads@Gmail.com", ad_personalization=False)
    method, url, headers, body = ga4.build_request(
        Ga4Settings(measurement_id="G-ABC", api_secret="s&cret", base_url="https://region1.google-analytics.com"),
        [event])
    parts = urlsplit(url)
    assert method == "POST"
    assert (parts.netloc, parts.path) == ("region1.google-analytics.com", "/mp/collect")
    assert parse_qs(parts.query) == {"measurement_id": ["G-ABC"], "api_secret": ["s&cret"]}
    assert headers == {"Content-Type": "application/json"}
    micros = int((now - timedelta(hours=1)).timestamp()) * 1_000_000 + 250_000
    assert body == {
        "client_id": "1234567890.1700000000",
        "timestamp_micros": micros,
        "events": [{"name": "purchase", "timestamp_micros": micros,
                    "params": {"transaction_id": "ORD-1001", "value": 1499.5, "currency": "CZK"}}],
        "user_data": {"sha256_email_address": [sha("johnsmith@gmail.com")],
                      "sha256_phone_number": [sha("+16505551212")]},
        "consent": {"ad_user_data": "GRANTED", "ad_personalization": "DENIED"},
    }


def test_lead_is_generate_lead_without_transaction_id(make_event):
    payload = ga4.event_payload(make_event(kind="lead", value=None, order_id=None))
    assert payload["name"] == "generate_lead"
    assert payload["params"] == {}


def test_purchase_without_order_id_uses_event_id(make_event):
    assert ga4.event_payload(make_event(order_id=None))["params"]["transaction_id"] == "evt-0001"


def test_consent_omitted_when_unknown(make_event):
    body = ga4.build_request(SETTINGS, [make_event(ad_user_data=None, ad_personalization=None)])[3]
    assert "consent" not in body


@pytest.mark.parametrize(
    "cookie, expected",
    [
        ("GA1.1.1234567890.1700000000", "1234567890.1700000000"),
        ("GA1.2.987.654", "987.654"),
        ("1234567890.1700000000", "1234567890.1700000000"),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_client_id_from_cookie(cookie, expected):
    assert ga4.client_id_from_cookie(cookie) == expected


def test_client_id_fallbacks_are_stable_and_do_not_leak_the_session(make_event):
    by_session = ga4.client_id_for(make_event(ga_client_id=None, session_id="sess-abc"))
    assert by_session == ga4.client_id_for(make_event(ga_client_id=None, session_id="sess-abc", event_id="other"))
    assert "sess" not in by_session
    first, second = by_session.split(".")
    assert first.isdigit() and len(second) == 10
    by_event = ga4.client_id_for(make_event(ga_client_id=None, session_id=None))
    assert by_event != by_session
    assert by_event == ga4.client_id_for(make_event(ga_client_id=None, session_id=None))


def test_batches_group_by_client_and_respect_the_limit(make_event):
    events = []
    for i in range(60):
        events.append(make_event(event_id=f"a{i}", ga_client_id="111.222"))
        if i < 3:
            events.append(make_event(event_id=f"b{i}", ga_client_id="333.444"))
    events.append(make_event(event_id="c0", ga_client_id="111.222", email="other@example.com"))
    groups = ga4.batches(events)
    assert [len(g) for g in groups] == [25, 25, 10, 3, 1]
    for group in groups:
        assert len({ga4.batch_key(e) for e in group}) == 1
        ga4.build_request(SETTINGS, group)
    with pytest.raises(ValueError):
        ga4.build_request(SETTINGS, [events[0], events[1]])  # two clients
    with pytest.raises(ValueError):
        ga4.build_request(SETTINGS, events[:0])


def test_request_timestamp_is_the_earliest(make_event, now):
    events = [make_event(event_id="late", event_time=now - timedelta(minutes=5)),
              make_event(event_id="early", event_time=now - timedelta(hours=2))]
    body = ga4.build_request(SETTINGS, events)[3]
    assert body["timestamp_micros"] == min(e["timestamp_micros"] for e in body["events"])
    assert body["events"][0]["timestamp_micros"] > body["events"][1]["timestamp_micros"]


@pytest.mark.parametrize(
    "age, reason",
    [(timedelta(hours=71), None), (timedelta(hours=72, seconds=1), "too_old")],
)
def test_check(make_event, now, age, reason):
    result = ga4.check(make_event(event_time=now - age), now)
    assert (result.reason if result else None) == reason


def _body(**changes):
    body = {"client_id": "1.2", "events": [{"name": "purchase", "params": {"transaction_id": "t", "value": 1,
                                                                         "currency": "EUR"}}]}
    body.update(changes)
    return body


@pytest.mark.parametrize(
    "body, fragment",
    [
        (_body(), None),
        (_body(client_id=""), "client_id"),
        (_body(events=[]), "1 to 25"),
        (_body(events=[{"name": "purchase", "params": {}}] * 26), "1 to 25"),
        (_body(events=[{"name": "1purchase", "params": {}}]), "start with a letter"),
        (_body(events=[{"name": "my-event", "params": {}}]), "start with a letter"),
        (_body(events=[{"name": "e" * 41, "params": {}}]), "longer than 40"),
        (_body(events=[{"name": "google_thing", "params": {}}]), "reserved prefix"),
        (_body(events=[{"name": "session_start", "params": {}}]), "reserved"),
        (_body(events=[{"name": "x", "params": {f"p{i}": 1 for i in range(26)}}]), "at most 25 params"),
        (_body(events=[{"name": "x", "params": {"note": "n" * 101}}]), "longer than 100"),
        (_body(events=[{"name": "x", "params": {"flag": True}}]), "string or a number"),
        (_body(events=[{"name": "x", "params": {"value": 3}}]), "needs a currency"),
        (_body(user_data={"sha256_email_address": ["A" * 64]}), "lowercase SHA-256"),
        (_body(user_data={"sha256_email_address": [sha(str(i)) for i in range(4)]}), "at most 3"),
        (_body(padding="x" * 130_000), "bytes or more"),
    ],
)
def test_validate(body, fragment):
    problems = ga4.validate(body)
    if fragment is None:
        assert problems == []
    else:
        assert any(fragment in problem for problem in problems), problems


async def test_invalid_payload_is_permanent_and_never_sent(aiohttp_server, session, make_event):
    fake = FakeGa4()
    base = await serve(aiohttp_server, fake)
    settings = Ga4Settings(measurement_id=fake.measurement_id, api_secret=fake.api_secret, base_url=base)
    result = await ga4.send(session, settings, [make_event(order_id="x" * 101)], timeout=5)
    assert (result.outcome, result.reason) == ("permanent", "invalid")
    assert "x" * 101 not in result.detail
    assert fake.exchanges == []


@pytest.mark.parametrize(
    "status, headers, outcome, reason, after",
    [
        (204, {}, "ok", "ok", None),
        (200, {}, "ok", "ok", None),
        (429, {"Retry-After": "4"}, "retry", "http_429", 4.0),
        (500, {}, "retry", "http_5xx", None),
        (503, {}, "retry", "http_5xx", None),
        (408, {}, "retry", "http_408", None),
        (400, {}, "permanent", "http_4xx", None),
        (404, {}, "permanent", "http_4xx", None),
        (413, {}, "permanent", "http_4xx", None),
        (403, {}, "permanent", "auth", None),
    ],
)
def test_classify(status, headers, outcome, reason, after):
    result = ga4.classify(status, headers, b"")
    assert (result.outcome, result.reason, result.retry_after) == (outcome, reason, after)


async def test_payloads_are_accepted_by_the_fake(aiohttp_server, session, make_event, now):
    fake = FakeGa4()
    base = await serve(aiohttp_server, fake)
    settings = Ga4Settings(measurement_id=fake.measurement_id, api_secret=fake.api_secret, base_url=base)
    events = [make_event(event_id=f"e{i}", event_time=now - timedelta(hours=i)) for i in range(25)]
    events += [make_event(event_id="lead", kind="lead", value=None, ga_client_id=None, email=None, phone=None,
                          ad_user_data=None, ad_personalization=None)]
    for group in ga4.batches(events):
        result = await ga4.send(session, settings, group, timeout=5)
        assert result.outcome == "ok", result
    assert fake.rejected == []
    assert len(fake.accepted) == 2
    assert len(fake.events) == 26
    assert orjson.dumps(fake.accepted[1].body).count(b"sess") == 0


def test_denied_ad_user_data_sends_no_user_data(make_event):
    body = ga4.build_request(SETTINGS, [make_event(ad_user_data=False)])[3]
    assert "user_data" not in body
    assert body["consent"]["ad_user_data"] == "DENIED"
