"""Personal data that visitors' URLs carry by accident is not stored in plain text: emails and phone-like
digit runs in landing paths and referrer paths, emails in UTM values."""

from datetime import UTC, datetime

import pytest

from halo_proxy.tracking.campaign import NO_CAMPAIGN, parse_campaign
from halo_proxy.tracking.text import redact
from halo_proxy.tracking.touch import touch_for_visit

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/thanks/jan.novak@example.cz", "/thanks/[email]"),
        ("/a/b+tag@mail.example.co.uk/c", "/a/[email]/c"),
        ("/call/+420 777 123 456", "/call/[phone]"),
        ("/call/(420)777-123-456/x", "/call/[phone]/x"),
        ("/order/2026-12-01", "/order/2026-12-01"),  # a date is eight digits: kept
        ("/p/sku-12345678", "/p/sku-12345678"),  # part of a word: kept
        ("/blog/hello-world", "/blog/hello-world"),
        ("/", "/"),
    ],
)
def test_redact(value, expected):
    assert redact(value) == expected


def test_landing_path_is_redacted():
    touch = touch_for_visit(campaign=NO_CAMPAIGN, referrer=None, landing_path="/welcome/jan@example.cz", now=NOW)
    assert touch.landing_path == "/welcome/[email]"


def test_utm_values_lose_emails_but_keep_numbers():
    campaign = parse_campaign({"utm_source": "newsletter", "utm_content": "jan@example.cz",
                               "utm_id": "420777123456"})
    assert campaign.source == "newsletter"
    assert campaign.content == "[email]"
    assert campaign.utm_id == "420777123456"
