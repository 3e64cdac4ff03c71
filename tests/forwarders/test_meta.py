"""Meta Conversions API: payload, screening, batching, classification, and the fake's verdict."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from halo_proxy.config import MetaSettings
from halo_proxy.forwarders import meta
from tests.fakes.platforms import FakeMeta, serve

SETTINGS = MetaSettings(pixel_id="1234567890", access_token="meta-token", base_url="http://127.0.0.1:1")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_limits():
    assert meta.MAX_BATCH == 1000
    assert meta.MAX_AGE == timedelta(days=7)


def test_request_line_and_token_placement(make_event):
    method, url, headers, body = meta.build_request(
        MetaSettings(pixel_id="42", access_token="t o/k", base_url="https://graph.facebook.com/", api_version="v26.0"),
        [make_event()])
    parts = urlsplit(url)
    assert method == "POST"
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "graph.facebook.com", "/v26.0/42/events")
    assert parse_qs(parts.query) == {"access_token": ["t o/k"]}
    assert headers == {"Content-Type": "application/json"}
    assert "test_event_code" not in body
    assert "t o/k" not in orjson.dumps(body).decode()


def test_test_event_code_goes_in_the_body(make_event):
    settings = MetaSettings(pixel_id="1", access_token="t", test_event_code="TEST123")
    assert meta.build_request(settings, [make_event()])[3]["test_event_code"] == "TEST123"


def test_event_payload(make_event, now):
    event = make_event(kind="order", fbc=None)
    payload = meta.event_payload(event)
    assert payload["event_name"] == "Purchase"
    assert payload["event_time"] == int((now - timedelta(hours=1)).timestamp())
    assert payload["event_id"] == "evt-0001"
    assert payload["action_source"] == "website"
    assert payload["event_source_url"] == "https://shop.example/checkout/thanks"
    assert payload["custom_data"] == {"value": 1499.5, "currency": "CZK", "order_id": "ORD-1001"}
    user = payload["user_data"]
    assert user["em"] == [sha("john_smith@gmail.com")]
    assert user["ph"] == [sha("16505551212")]
    assert user["fn"] == sha("john") and user["ln"] == sha("smith")
    assert user["ct"] == sha("newyork") and user["st"] == sha("ca")
    assert user["zp"] == sha("94035") and user["country"] == sha("us")
    assert user["external_id"] == sha("customer-42")
    # Never hashed:
    assert user["client_ip_address"] == "2001:db8::1"
    assert user["client_user_agent"] == event.user_agent
    assert user["fbp"] == event.fbp
    seen_ms = int(event.fbclid_seen_at.timestamp() * 1000)
    assert user["fbc"] == f"fb.1.{seen_ms}.{event.fbclid}"


def test_lead_is_named_lead_and_omits_value_without_currency(make_event):
    payload = meta.event_payload(make_event(kind="lead", value=10, currency=None, order_id=None))
    assert payload["event_name"] == "Lead"
    assert "custom_data" not in payload


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"fbc": "fb.1.1554763741205.AbCdEf"}, "fb.1.1554763741205.AbCdEf"),  # the cookie wins
        ({"fbc": None, "fbclid": None}, None),
    ],
)
def test_fbc(make_event, overrides, expected):
    assert meta.fbc_for(make_event(**overrides)) == expected


def test_fbc_built_from_event_time_when_first_sight_unknown(make_event):
    event = make_event(fbc=None, fbclid="IwAR-Case_Sensitive", fbclid_seen_at=None)
    assert meta.fbc_for(event) == f"fb.1.{int(event.event_time.timestamp() * 1000)}.IwAR-Case_Sensitive"


def test_server_only_conversion_is_sent_as_other(make_event):
    payload = meta.event_payload(make_event(user_agent=None, event_source_url=None))
    assert payload["action_source"] == "other"
    assert "event_source_url" not in payload


def test_pre_hashed_values_pass_through(make_event):
    digest = sha("someone@example.com").upper()
    assert meta.user_data(make_event(email=digest))["em"] == [digest.lower()]


NOTHING_TO_MATCH = {"email": None, "phone": None, "external_id": None, "fbc": None, "fbclid": None, "fbp": None,
                    "client_ip": None, "user_agent": None, "first_name": None, "last_name": None, "city": None,
                    "region": None, "postal_code": None, "country": None}


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({}, None),
        ({"event_time_age": timedelta(days=7, seconds=1)}, "too_old"),
        ({"event_time_age": timedelta(days=6, hours=23)}, None),
        ({"kind": "order", "value": None}, "invalid"),
        ({"kind": "order", "currency": None}, "invalid"),
        ({"kind": "lead", "value": None, "currency": None}, None),
        ({**NOTHING_TO_MATCH}, "no_identifiers"),
        # Meta's baseline: a place and a user agent alone, or a first or a last name alone, match no one ...
        ({**NOTHING_TO_MATCH, "first_name": "Jana"}, "no_identifiers"),
        ({**NOTHING_TO_MATCH, "last_name": "Nováková"}, "no_identifiers"),
        ({**NOTHING_TO_MATCH, "city": "Brno"}, "no_identifiers"),
        ({**NOTHING_TO_MATCH, "city": "Brno", "region": "JM", "postal_code": "602 00", "country": "CZ",
          "user_agent": "Mozilla/5.0"}, "no_identifiers"),
        ({**NOTHING_TO_MATCH, "user_agent": "Mozilla/5.0"}, "no_identifiers"),
        # ... any other parameter beside them does: both names, an IP, the session, an email, fbp
        ({**NOTHING_TO_MATCH, "first_name": "Jana", "last_name": "Nováková"}, None),
        ({**NOTHING_TO_MATCH, "first_name": "Jana", "city": "Brno"}, None),
        ({**NOTHING_TO_MATCH, "client_ip": "203.0.113.9"}, None),
        ({**NOTHING_TO_MATCH, "city": "Brno", "country": "CZ", "external_id": "s-1"}, None),
        ({**NOTHING_TO_MATCH, "user_agent": "Mozilla/5.0", "fbp": "fb.1.1596403881668.1116446470"}, None),
        ({**NOTHING_TO_MATCH, "country": "CZ", "email": "jana@example.cz"}, None),
    ],
)
def test_check(make_event, now, overrides, reason):
    age = overrides.pop("event_time_age", None)
    if age is not None:
        overrides["event_time"] = now - age
    result = meta.check(make_event(**overrides), now)
    assert (result.reason if result else None) == reason
    if result:
        assert result.outcome == "permanent"


def test_batches_respect_the_limit(make_event):
    events = [make_event(event_id=f"e{i}") for i in range(2345)]
    groups = meta.batches(events)
    assert [len(g) for g in groups] == [1000, 1000, 345]
    assert [e.event_id for g in groups for e in g] == [e.event_id for e in events]
    with pytest.raises(ValueError):
        meta.build_request(SETTINGS, events[:1001])
    with pytest.raises(ValueError):
        meta.build_request(SETTINGS, [])


def _error(code, *, transient=None, subcode=None):
    error = {"message": "msg", "type": "OAuthException", "code": code, "fbtrace_id": "x"}
    if transient is not None:
        error["is_transient"] = transient
    if subcode is not None:
        error["error_subcode"] = subcode
    return orjson.dumps({"error": error})


@pytest.mark.parametrize(
    "status, headers, body, outcome, reason, after",
    [
        (200, {}, b'{"events_received": 2, "messages": [], "fbtrace_id": "x"}', "ok", "ok", None),
        (200, {}, b"", "ok", "ok", None),
        (500, {}, _error(2, transient=True), "retry", "meta_transient", None),
        (400, {}, _error(2), "retry", "meta_transient", None),
        (500, {}, _error(1), "retry", "meta_transient", None),
        (400, {}, _error(999, transient=True), "retry", "meta_transient", None),
        (400, {"Retry-After": "30"}, _error(4), "retry", "meta_throttled", 30.0),
        (400, {}, _error(17), "retry", "meta_throttled", None),
        (400, {}, _error(341), "retry", "meta_throttled", None),
        (429, {"Retry-After": "12"}, _error(613), "retry", "http_429", 12.0),
        (503, {}, _error(999, transient=False), "retry", "http_5xx", None),
        (408, {}, b"", "retry", "http_408", None),
        (502, {}, b"<html>bad gateway</html>", "retry", "http_5xx", None),
        (400, {}, _error(100, transient=False, subcode=2804003), "permanent", "meta_code_100", None),
        (400, {"Retry-After": "30"}, _error(100), "permanent", "meta_code_100", None),
        (401, {}, _error(190), "permanent", "meta_code_190", None),
        (403, {}, _error(10), "permanent", "meta_permission", None),
        (403, {}, _error(200), "permanent", "meta_permission", None),
        (400, {}, _error(2200), "permanent", "meta_error", None),
        (401, {}, b"", "permanent", "auth", None),
        (404, {}, b"not found", "permanent", "http_4xx", None),
    ],
)
def test_classify(status, headers, body, outcome, reason, after):
    result = meta.classify(status, headers, body)
    assert (result.outcome, result.reason, result.retry_after) == (outcome, reason, after)


def test_classify_keeps_the_code_and_no_personal_data():
    body = orjson.dumps({"error": {"code": 100, "error_subcode": 2804003,
                                   "message": "Invalid parameter em=john@example.com from 203.0.113.7"}})
    result = meta.classify(400, {}, body)
    assert result.platform_code == "100"
    assert "2804003" in result.detail
    assert "john@example.com" not in result.detail and "203.0.113.7" not in result.detail


async def test_payloads_are_accepted_by_the_fake(aiohttp_server, session, make_event):
    fake = FakeMeta()
    base = await serve(aiohttp_server, fake)
    settings = MetaSettings(pixel_id=fake.pixel_id, access_token=fake.access_token, base_url=base,
                            test_event_code="TEST1")
    events = [
        make_event(),
        make_event(event_id="e2", kind="lead", value=None, currency=None, order_id=None),
        make_event(event_id="e3", user_agent=None, event_source_url=None, fbc="fb.1.1554763741205.AbC"),
        make_event(event_id="e4", email=None, phone=None, first_name=None, last_name=None, city=None,
                   region=None, postal_code=None, country=None, external_id=None, client_ip="203.0.113.7"),
    ]
    result = await meta.send(session, settings, events, timeout=5)
    assert result.outcome == "ok", result
    assert fake.rejected == []
    assert [e["event_id"] for e in fake.events] == ["evt-0001", "e2", "e3", "e4"]
    assert fake.accepted[0].body["test_event_code"] == "TEST1"
