"""Google Ads through the Data Manager API: payload, identifiers, screening, classification."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from halo_proxy.config import GoogleAdsSettings
from halo_proxy.forwarders import google_ads
from tests.fakes.platforms import FakeDataManager, serve

SETTINGS = GoogleAdsSettings(account_id="1234567890", conversion_action_id="987654", access_token="gads-token",
                             base_url="http://127.0.0.1:1")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_limits():
    assert google_ads.MAX_BATCH == 2000
    assert google_ads.MAX_AGE == timedelta(days=90)


def test_request(make_event):
    settings = GoogleAdsSettings(account_id="123-456-7890", conversion_action_id="987654", access_token="tok",
                                 login_account_id="555-000-1111")
    event = make_event(email="Jane.Doe@gmail.com", ad_personalization=False,
                       event_time=datetime(2026, 3, 1, 13, 30, 5, tzinfo=timezone(timedelta(hours=1))))
    method, url, headers, body = google_ads.build_request(settings, [event])
    assert (method, url) == ("POST", "https://datamanager.googleapis.com/v1/events:ingest")
    assert headers == {"Content-Type": "application/json", "Authorization": "Bearer tok"}
    assert body == {
        "destinations": [{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                          "loginAccount": {"accountType": "GOOGLE_ADS", "accountId": "5550001111"},
                          "productDestinationId": "987654"}],
        "encoding": "HEX",
        "events": [{
            "eventTimestamp": "2026-03-01T12:30:05Z",
            "transactionId": "ORD-1001",
            "eventSource": "WEB",
            "adIdentifiers": {"gclid": "Cj0KCQiA-test_gclid"},
            "conversionValue": 1499.5,
            "currency": "CZK",
            "userData": {"userIdentifiers": [{"emailAddress": sha("janedoe@gmail.com")},
                                             {"phoneNumber": sha("+16505551212")}]},
            "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_DENIED"},
        }],
    }
    assert "tok" not in orjson.dumps(body).decode()


@pytest.mark.parametrize(
    "when, expected",
    [
        (datetime(2026, 3, 1, 12, 0, tzinfo=UTC), "2026-03-01T12:00:00Z"),
        (datetime(2026, 3, 1, 12, 0, 0, 1500, tzinfo=UTC), "2026-03-01T12:00:00.001500Z"),
        (datetime(2026, 3, 1, 0, 0, tzinfo=timezone(timedelta(hours=-5))), "2026-03-01T05:00:00Z"),
    ],
)
def test_rfc3339(when, expected):
    assert google_ads.rfc3339(when) == expected


@pytest.mark.parametrize(
    "ids, expected",
    [
        ({"gclid": "G", "gbraid": "GB", "wbraid": "WB"}, {"gclid": "G"}),
        ({"gclid": None, "gbraid": "GB", "wbraid": "WB"}, {"wbraid": "WB"}),
        ({"gclid": None, "gbraid": "GB", "wbraid": None}, {"gbraid": "GB"}),
        ({"gclid": None, "gbraid": None, "wbraid": None}, {}),
    ],
)
def test_one_ad_identifier_never_both_braids(make_event, ids, expected):
    assert google_ads.ad_identifiers(make_event(**ids)) == expected


def test_no_user_data_without_email_or_phone(make_event):
    payload = google_ads.event_payload(make_event(email=None, phone=None, ad_user_data=None,
                                                  ad_personalization=None, value=None, currency=None))
    assert "userData" not in payload and "consent" not in payload
    assert "conversionValue" not in payload and "currency" not in payload


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({}, None),
        ({"age": timedelta(days=90, seconds=1)}, "too_old"),
        ({"age": timedelta(days=89)}, None),
        ({"gclid": None, "email": None, "phone": None}, "no_identifiers"),
        ({"gclid": None}, None),
        ({"email": None, "phone": None}, None),
    ],
)
def test_check(make_event, now, overrides, reason):
    age = overrides.pop("age", None)
    if age is not None:
        overrides["event_time"] = now - age
    result = google_ads.check(make_event(**overrides), now)
    assert (result.reason if result else None) == reason


def test_batches(make_event):
    events = [make_event(event_id=f"e{i}") for i in range(4001)]
    assert [len(g) for g in google_ads.batches(events)] == [2000, 2000, 1]
    with pytest.raises(ValueError):
        google_ads.build_request(SETTINGS, events[:2001])


def _error(status_code, status, *details):
    return orjson.dumps({"error": {"code": status_code, "message": "m", "status": status,
                                   "details": list(details)}})


RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "42s"}


@pytest.mark.parametrize(
    "status, headers, body, outcome, reason, after",
    [
        (200, {}, b'{"requestId": "abc"}', "ok", "ok", None),
        (429, {"Retry-After": "7"}, _error(429, "RESOURCE_EXHAUSTED"), "retry", "google_resource_exhausted", 7.0),
        (429, {}, _error(429, "RESOURCE_EXHAUSTED", RETRY_INFO), "retry", "google_resource_exhausted", 42.0),
        (503, {}, _error(503, "UNAVAILABLE"), "retry", "google_unavailable", None),
        (504, {}, _error(504, "DEADLINE_EXCEEDED"), "retry", "google_deadline_exceeded", None),
        (500, {}, _error(500, "INTERNAL"), "retry", "google_internal", None),
        (500, {}, _error(500, "UNKNOWN"), "retry", "google_unknown", None),
        (409, {}, _error(409, "ABORTED"), "permanent", "google_aborted", None),
        (400, {}, _error(400, "INVALID_ARGUMENT"), "permanent", "google_invalid_argument", None),
        (403, {}, _error(403, "PERMISSION_DENIED"), "permanent", "google_permission_denied", None),
        (401, {}, _error(401, "UNAUTHENTICATED"), "permanent", "google_unauthenticated", None),
        (404, {}, _error(404, "NOT_FOUND"), "permanent", "google_not_found", None),
        (400, {}, _error(400, "SOMETHING_NEW"), "permanent", "http_4xx", None),
        (502, {}, b"<html>", "retry", "http_5xx", None),
        (401, {}, b"", "permanent", "auth", None),
    ],
)
def test_classify(status, headers, body, outcome, reason, after):
    result = google_ads.classify(status, headers, body)
    assert (result.outcome, result.reason, result.retry_after) == (outcome, reason, after)


def test_classify_detail_names_fields_not_values():
    body = _error(400, "INVALID_ARGUMENT",
                  {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INVALID_SHA256_FORMAT"},
                  {"@type": "type.googleapis.com/google.rpc.BadRequest",
                   "fieldViolations": [{"field": "events[0].userData", "description": "john@example.com"}]})
    result = google_ads.classify(400, {}, body)
    assert result.platform_code == "INVALID_ARGUMENT"
    assert "INVALID_SHA256_FORMAT" in result.detail and "events[0].userData" in result.detail
    assert "john@example.com" not in result.detail


async def test_payloads_are_accepted_by_the_fake(aiohttp_server, session, make_event):
    fake = FakeDataManager()
    base = await serve(aiohttp_server, fake)
    settings = GoogleAdsSettings(account_id=fake.account_id, conversion_action_id=fake.conversion_action_id,
                                 access_token=fake.access_token, base_url=base, login_account_id="5550001111")
    events = [
        make_event(),
        make_event(event_id="e2", kind="lead", value=None, currency=None, order_id=None, gclid=None,
                   wbraid="WB-1", gbraid="GB-1"),
        make_event(event_id="e3", order_id="ORD-3", email=None, phone=None, ad_user_data=False),
        make_event(event_id="e4", order_id=None, gclid=None),
    ]
    result = await google_ads.send(session, settings, events, timeout=5)
    assert result.outcome == "ok", result
    assert fake.rejected == []
    assert [e["transactionId"] for e in fake.events] == ["ORD-1001", "e2", "ORD-3", "e4"]


def test_denied_ad_user_data_sends_no_identifiers(make_event, now):
    event = make_event(ad_user_data=False)
    payload = google_ads.event_payload(event)
    assert "userData" not in payload
    assert payload["consent"]["adUserData"] == "CONSENT_DENIED"
    assert google_ads.check(make_event(ad_user_data=False, gclid=None), now).reason == "no_identifiers"
