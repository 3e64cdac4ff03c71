"""First/last-touch rules, including the seed journey: Google Ads on day 1, Facebook on day 2, then a direct visit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest

from halo_proxy.tracking.campaign import parse_campaign
from halo_proxy.tracking.models import Touch
from halo_proxy.tracking.referrer import parse_referrer
from halo_proxy.tracking.touch import (
    TouchAction,
    campaign_fingerprint,
    decide_touch,
    is_campaign_touch,
    merge_click_ids,
    same_campaign,
    touch_for_visit,
)

DAY_1 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
DAY_2 = DAY_1 + timedelta(days=1)
DAY_3 = DAY_1 + timedelta(days=2)
HOST = "acme.localhost"
TENANT_HOSTS = (HOST, "*.acme.example")


def visit(url: str, now: datetime, referer: str | None = None) -> Touch:
    parts = urlsplit(url)
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(name, value)
    return touch_for_visit(
        campaign=parse_campaign(query),
        referrer=parse_referrer(referer, HOST, TENANT_HOSTS),
        landing_path=parts.path or "/",
        now=now,
    )


class Session:
    """A stand-in for stored session state, updated only from decisions."""

    def __init__(self) -> None:
        self.first: Touch | None = None
        self.last: Touch | None = None
        self.history: list[Touch] = []
        self.click_ids: dict[str, tuple[str, datetime]] = {}

    def apply(self, touch: Touch):
        decision = decide_touch(
            touch, new_visitor=self.first is None, click_ids=self.click_ids, last_touch=self.last
        )
        if decision.first_touch is not None:
            self.first = decision.first_touch
        if decision.last_touch is not None:
            self.last = decision.last_touch
        if decision.history is not None:
            self.history.append(decision.history)
        self.click_ids = decision.click_ids.click_ids
        return decision


def test_seed_journey():
    session = Session()

    day1 = visit("https://acme.localhost/?utm_source=google&utm_medium=cpc&gclid=abc123", DAY_1)
    assert (day1.source, day1.medium, day1.channel) == ("google", "cpc", "Paid Search")
    decision = session.apply(day1)
    assert decision.action is TouchAction.NEW_SESSION
    assert session.first == session.last == day1
    assert session.click_ids == {"gclid": ("abc123", DAY_1)}

    day2 = visit("https://acme.localhost/sale?utm_source=facebook&utm_medium=social&fbclid=xyz789", DAY_2)
    assert (day2.source, day2.medium, day2.channel) == ("facebook", "social", "Organic Social")
    decision = session.apply(day2)
    assert decision.action is TouchAction.UPDATE_LAST
    assert decision.first_touch is None
    assert session.first == day1
    assert session.last == day2
    assert session.click_ids == {"gclid": ("abc123", DAY_1), "fbclid": ("xyz789", DAY_2)}

    direct = visit("https://acme.localhost/cart", DAY_3)
    assert (direct.source, direct.medium, direct.channel) == ("(direct)", "(none)", "Direct")
    decision = session.apply(direct)
    assert decision.action is TouchAction.NONE
    assert decision.writes is False
    assert (session.first, session.last) == (day1, day2)
    assert session.history == [day1, day2]


def test_touch_fields():
    touch = visit(
        "https://acme.localhost/shoes/red?utm_source=newsletter&utm_medium=email&utm_campaign=spring&utm_term=boty"
        "&utm_content=hero&utm_id=42&msclkid=m1",
        DAY_1,
        referer="https://mail.google.com/",
    )
    assert touch == Touch(
        at=DAY_1,
        source="newsletter",
        medium="email",
        campaign="spring",
        term="boty",
        content="hero",
        utm_id="42",
        channel="Email",
        referrer_domain="mail.google.com",
        referrer_url="https://mail.google.com/",
        landing_path="/shoes/red",
        click_ids=(("msclkid", "m1"),),
    )


@pytest.mark.parametrize(
    ("url", "referer", "expected"),
    [
        pytest.param("https://acme.localhost/?utm_source=x", None, True, id="utm"),
        pytest.param("https://acme.localhost/?utm_campaign=spring", None, True, id="utm-campaign-only"),
        pytest.param("https://acme.localhost/?gclid=g", None, True, id="click-id"),
        pytest.param("https://acme.localhost/?fbclid=f", None, True, id="fbclid"),
        pytest.param("https://acme.localhost/", "https://www.google.com/", True, id="search-referrer"),
        pytest.param("https://acme.localhost/", "https://blog.example.org/", True, id="external-referrer"),
        pytest.param("https://acme.localhost/", None, False, id="direct"),
        pytest.param("https://acme.localhost/b", "https://acme.localhost/a", False, id="internal-navigation"),
        pytest.param("https://acme.localhost/", "https://shop.acme.example/", False, id="tenant-subdomain"),
        pytest.param("https://acme.localhost/?utm_source=", None, False, id="blank-utm"),
        pytest.param("https://acme.localhost/?page=2", None, False, id="unrelated-query"),
    ],
)
def test_is_campaign_touch(url, referer, expected):
    assert is_campaign_touch(visit(url, DAY_1, referer)) is expected


@pytest.mark.parametrize(
    ("new_visitor", "url", "referer", "expected"),
    [
        pytest.param(True, "https://acme.localhost/", None, TouchAction.NEW_SESSION, id="new-direct"),
        pytest.param(True, "https://acme.localhost/?gclid=g", None, TouchAction.NEW_SESSION, id="new-paid"),
        pytest.param(False, "https://acme.localhost/", None, TouchAction.NONE, id="returning-direct"),
        pytest.param(False, "https://acme.localhost/x", "https://acme.localhost/", TouchAction.NONE,
                     id="returning-internal"),
        pytest.param(False, "https://acme.localhost/", "https://duckduckgo.com/", TouchAction.UPDATE_LAST,
                     id="returning-organic"),
        pytest.param(False, "https://acme.localhost/?utm_source=nl&utm_medium=email", None, TouchAction.UPDATE_LAST,
                     id="returning-utm"),
        pytest.param(False, "https://acme.localhost/?ttclid=t", None, TouchAction.UPDATE_LAST,
                     id="returning-click-id"),
    ],
)
def test_decide_touch(new_visitor, url, referer, expected):
    touch = visit(url, DAY_2, referer)
    decision = decide_touch(touch, new_visitor=new_visitor)
    assert decision.action is expected
    if expected is TouchAction.NEW_SESSION:
        assert decision.first_touch == decision.last_touch == decision.history == touch
    elif expected is TouchAction.UPDATE_LAST:
        assert decision.first_touch is None
        assert decision.last_touch == decision.history == touch
    else:
        assert decision.first_touch is decision.last_touch is decision.history is None


def test_reload_of_landing_page_is_not_a_new_touch():
    first = visit("https://acme.localhost/?utm_source=google&utm_medium=cpc&gclid=abc123", DAY_1)
    reload = visit("https://acme.localhost/?utm_source=google&utm_medium=cpc&gclid=abc123", DAY_1 + timedelta(minutes=5))
    later = visit("https://acme.localhost/?utm_source=google&utm_medium=cpc&gclid=abc123", DAY_2)
    assert same_campaign(first, reload)
    assert campaign_fingerprint(first) == campaign_fingerprint(reload)
    assert decide_touch(reload, new_visitor=False, last_touch=first).action is TouchAction.NONE
    assert decide_touch(later, new_visitor=False, last_touch=first).action is TouchAction.UPDATE_LAST
    assert decide_touch(reload, new_visitor=False).action is TouchAction.UPDATE_LAST


def test_fingerprint_differs_for_different_campaigns():
    a = visit("https://acme.localhost/?utm_source=google&utm_medium=cpc&utm_campaign=a", DAY_1)
    b = visit("https://acme.localhost/?utm_source=google&utm_medium=cpc&utm_campaign=b", DAY_1)
    assert campaign_fingerprint(a) != campaign_fingerprint(b)
    assert isinstance(campaign_fingerprint(a), int)


T0 = DAY_1
T1 = DAY_2


@pytest.mark.parametrize(
    ("existing", "seen", "at", "expected", "changed"),
    [
        pytest.param({}, [("gclid", "a")], T0, {"gclid": ("a", T0)}, ("gclid",), id="first-seen"),
        pytest.param({"gclid": ("a", T0)}, [("gclid", "a")], T1, {"gclid": ("a", T0)}, (), id="same-value-keeps-time"),
        pytest.param({"gclid": ("a", T0)}, [("gclid", "b")], T1, {"gclid": ("b", T1)}, ("gclid",), id="new-value"),
        pytest.param(
            {"gclid": ("a", T0)}, [("fbclid", "f")], T1, {"gclid": ("a", T0), "fbclid": ("f", T1)}, ("fbclid",),
            id="other-name-added",
        ),
        pytest.param({"gclid": ("b", T1)}, [("gclid", "a")], T0, {"gclid": ("b", T1)}, (), id="older-write-ignored"),
        pytest.param({"gclid": ("a", T0)}, [], T1, {"gclid": ("a", T0)}, (), id="nothing-seen"),
    ],
)
def test_merge_click_ids(existing, seen, at, expected, changed):
    update = merge_click_ids(existing, seen, at)
    assert update.click_ids == expected
    assert update.changed == changed


def test_merge_does_not_mutate_input():
    existing = {"gclid": ("a", T0)}
    merge_click_ids(existing, [("gclid", "b")], T1)
    assert existing == {"gclid": ("a", T0)}


def test_returning_direct_visit_with_click_id_only_updates_click_ids():
    touch = visit("https://acme.localhost/?fbclid=new", DAY_2)
    decision = decide_touch(touch, new_visitor=False, click_ids={"fbclid": ("old", DAY_1)})
    assert decision.action is TouchAction.UPDATE_LAST
    assert decision.click_ids.click_ids == {"fbclid": ("new", DAY_2)}
    assert decision.writes


def test_landing_path_is_cleaned():
    touch = touch_for_visit(
        campaign=parse_campaign({}), referrer=None, landing_path="/a\x00b" + "c" * 2000, now=DAY_1
    )
    assert touch.landing_path.startswith("/ab") and len(touch.landing_path) == 1024
    assert touch_for_visit(campaign=parse_campaign({}), referrer=None, landing_path="", now=DAY_1).landing_path == "/"
