"""Shared HTTP rules: Retry-After, the status fallback, scrubbing of platform messages."""

from __future__ import annotations

import pytest

from halo_proxy.forwarders.transport import MAX_RETRY_AFTER_S, http_result, retry_after, scrub


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({}, None),
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": " 2.5 "}, 2.5),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "99999999"}, MAX_RETRY_AFTER_S),
        ({"Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT", "Date": "Wed, 21 Oct 2026 07:28:00 GMT"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT"}, None),  # no Date to measure against
    ],
)
def test_retry_after(headers, expected):
    assert retry_after(headers) == expected


@pytest.mark.parametrize(
    "status, headers, outcome, reason, after",
    [
        (200, {}, "ok", "ok", None),
        (204, {}, "ok", "ok", None),
        (408, {}, "retry", "http_408", None),
        (429, {"Retry-After": "5"}, "retry", "http_429", 5.0),
        (500, {}, "retry", "http_5xx", None),
        (503, {"Retry-After": "9"}, "retry", "http_5xx", 9.0),
        (401, {}, "permanent", "auth", None),
        (403, {}, "permanent", "auth", None),
        (400, {"Retry-After": "5"}, "permanent", "http_4xx", None),
        (404, {}, "permanent", "http_4xx", None),
        (302, {}, "permanent", "http_other", None),
    ],
)
def test_http_result(status, headers, outcome, reason, after):
    result = http_result(status, headers)
    assert (result.outcome, result.reason, result.retry_after, result.status) == (outcome, reason, after, status)


@pytest.mark.parametrize(
    "text, forbidden",
    [
        ("Invalid email john@example.com in em", "john@example.com"),
        ("bad hash " + "a" * 64, "a" * 64),
        ("ip 203.0.113.9 blocked", "203.0.113.9"),
        ("ip 2001:db8::1 blocked", "2001:db8::1"),
        ("phone +1 650 555 1212 invalid", "650 555 1212"),
        ("see https://graph.example/v1?access_token=SECRET", "SECRET"),
        ("access_token=SECRET expired", "SECRET"),
    ],
)
def test_scrub_removes_personal_data_and_tokens(text, forbidden):
    assert forbidden not in scrub(text)


def test_scrub_keeps_one_short_line():
    assert scrub("a\nb\t c" + "x" * 500) == ("a b c" + "x" * 500)[:200]
