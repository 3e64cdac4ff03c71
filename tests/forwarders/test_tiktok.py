"""TikTok Events API: payload, screening, batching, classification of response codes."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import orjson
import pytest

from halo_proxy.config import TikTokSettings
from halo_proxy.forwarders import tiktok
from tests.fakes.platforms import FakeTikTok, serve

SETTINGS = TikTokSettings(pixel_code="CTESTPIXEL123", access_token="tiktok-token", base_url="http://127.0.0.1:1")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_limits():
    assert tiktok.MAX_BATCH == 1000
    assert tiktok.MAX_AGE == timedelta(days=7)


def test_request(make_event, now):
    settings = TikTokSettings(pixel_code="C123", access_token="tok", test_event_code="TEST9")
    method, url, headers, body = tiktok.build_request(settings, [make_event()])
    assert (method, url) == ("POST", "https://business-api.tiktok.com/open_api/v1.3/event/track/")
    assert headers == {"Content-Type": "application/json", "Access-Token": "tok"}
    assert body == {
        "event_source": "web",
        "event_source_id": "C123",
        "test_event_code": "TEST9",
        "data": [{
            "event": "CompletePayment",
            "event_time": int((now - timedelta(hours=1)).timestamp()),
            "event_id": "evt-0001",
            "user": {"email": sha("john_smith@gmail.com"), "phone": sha("+16505551212"),
                     "external_id": sha("customer-42"), "ttclid": "E.C.P.test-ttclid",
                     "ttp": "2F7h37YkS1j57AYSKTI7IHhJPYH", "ip": "2001:db8::1",
                     "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"},
            "page": {"url": "https://shop.example/checkout/thanks"},
            "properties": {"value": 1499.5, "currency": "CZK", "order_id": "ORD-1001"},
        }],
    }
    assert "tok" not in orjson.dumps(body).decode()


def test_lead_is_submit_form(make_event):
    payload = tiktok.event_payload(make_event(kind="lead", value=None, order_id=None, event_source_url=None))
    assert payload["event"] == "SubmitForm"
    assert "properties" not in payload and "page" not in payload


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({}, None),
        ({"age": timedelta(days=7, seconds=1)}, "too_old"),
        ({"email": None, "phone": None, "external_id": None, "ttclid": None, "ttp": None, "client_ip": None,
          "user_agent": None}, "no_identifiers"),
    ],
)
def test_check(make_event, now, overrides, reason):
    age = overrides.pop("age", None)
    if age is not None:
        overrides["event_time"] = now - age
    result = tiktok.check(make_event(**overrides), now)
    assert (result.reason if result else None) == reason


def test_batches(make_event):
    events = [make_event(event_id=f"e{i}") for i in range(1001)]
    assert [len(g) for g in tiktok.batches(events)] == [1000, 1]
    with pytest.raises(ValueError):
        tiktok.build_request(SETTINGS, events)


def _coded(code):
    return orjson.dumps({"code": code, "message": "m", "request_id": "r", "data": {}})


@pytest.mark.parametrize(
    "status, headers, body, outcome, reason, after",
    [
        (200, {}, _coded(0), "ok", "ok", None),
        (200, {}, _coded(20001), "ok", "partial", None),
        (200, {"Retry-After": "3"}, _coded(40100), "retry", "tiktok_rate_limited", 3.0),
        (200, {}, _coded(40100), "retry", "tiktok_rate_limited", None),
        (200, {}, _coded(40001), "permanent", "auth", None),
        (200, {}, _coded(40002), "permanent", "auth", None),
        (200, {}, _coded(40000), "permanent", "tiktok_error", None),
        (200, {}, _coded(51234), "retry", "tiktok_server_error", None),
        (200, {}, b"<html>", "retry", "bad_response", None),
        (200, {}, b'{"code": "0"}', "retry", "bad_response", None),
        (429, {"Retry-After": "7"}, b"", "retry", "http_429", 7.0),
        (502, {}, b"", "retry", "http_5xx", None),
        (401, {}, b"", "permanent", "auth", None),
        (400, {}, _coded(40000), "permanent", "http_4xx", None),
    ],
)
def test_classify(status, headers, body, outcome, reason, after):
    result = tiktok.classify(status, headers, body)
    assert (result.outcome, result.reason, result.retry_after) == (outcome, reason, after)


def test_classify_keeps_the_code():
    result = tiktok.classify(200, {}, orjson.dumps({"code": 40000, "message": "bad email a@b.cz"}))
    assert result.platform_code == "40000"
    assert "a@b.cz" not in result.detail


async def test_payloads_are_accepted_by_the_fake(aiohttp_server, session, make_event):
    fake = FakeTikTok()
    base = await serve(aiohttp_server, fake)
    settings = TikTokSettings(pixel_code=fake.pixel_code, access_token=fake.access_token, base_url=base,
                              test_event_code="TEST9")
    events = [make_event(), make_event(event_id="e2", kind="lead", value=None, order_id=None, ttclid=None,
                                       event_source_url=None, client_ip="203.0.113.7")]
    result = await tiktok.send(session, settings, events, timeout=5)
    assert result.outcome == "ok", result
    assert fake.rejected == []
    assert [e["event"] for e in fake.events] == ["CompletePayment", "SubmitForm"]
