"""`decide_visit` as a table: request facts and the opened cookie in, the decision out. No sockets, no database;
time and randomness are fixed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from multidict import CIMultiDict, MultiDict

from halo_proxy.tracking.campaign import parse_campaign
from halo_proxy.tracking.consent import ConsentPolicy
from halo_proxy.tracking.models import AnonEvent, ConsentUpdate, SessionWrite
from halo_proxy.tracking.touch import campaign_fingerprint, touch_for_visit
from halo_proxy.tracking.visit import (
    FB_COOKIE,
    REPEAT_SECONDS,
    STALE_KEY,
    SetCookie,
    SiteRules,
    VisitFacts,
    consent_bits,
    decide_visit,
    set_cookie_header,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KNOWN = UUID("11111111-1111-4111-8111-111111111111")
NEW = UUID("22222222-2222-4222-8222-222222222222")
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")
PAGE = {"User-Agent": CHROME, "Sec-Fetch-Dest": "document", "Accept": "text/html"}
GRANTED = SiteRules("shop", "_halo", ("shop.example",), "/_halo", ConsentPolicy(unknown=True))
DENIED = GRANTED._replace(consent=ConsentPolicy(unknown=False))
ALL = 3  # analytics | marketing, no GPC
MS = int(NOW.timestamp() * 1000)


class FixedFresh:
    @staticmethod
    def session_id() -> UUID:
        return NEW

    @staticmethod
    def fbp_number() -> int:
        return 1234567890


def facts(path: str = "/page", query: str = "", headers: dict | None = None, cookies: dict | None = None,
          method: str = "GET", host: str = "shop.example") -> VisitFacts:
    q = MultiDict(pair.split("=", 1) for pair in query.split("&")) if query else MultiDict()
    return VisitFacts(method, path, host, q, CIMultiDict(PAGE if headers is None else headers), cookies or {})


def decide(f: VisitFacts, opened=None, site: SiteRules = GRANTED, recent=None, now: datetime = NOW):  # type: ignore[no-untyped-def]
    return decide_visit(f, opened, site, recent or {}, now, FixedFresh())


@pytest.mark.parametrize(("f", "reason"), [
    (facts(method="POST"), "method"),
    (facts(path="/_halo/t.js"), "reserved"),
    (facts(path="/static/app.css"), "asset"),
    (facts(headers={**PAGE, "Sec-Purpose": "prefetch"}), "prefetch"),
    (facts(headers={"User-Agent": CHROME, "Sec-Fetch-Dest": "image"}), "not_document"),
    (facts(headers={**PAGE, "User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}), "bot"),
])
def test_what_is_not_a_page_view_is_skipped_and_nothing_else(f, reason):
    decision = decide(f, opened=(KNOWN, ALL))
    assert decision.skip == reason
    assert (decision.write, decision.cookies, decision.seal_state, decision.channel) == (None, (), None, None)


def test_denied_consent_keeps_one_anonymous_aggregate_and_expires_the_cookie():
    decision = decide(facts(query="utm_source=news&utm_medium=email&utm_campaign=dec",
                            cookies={"_halo": "whatever"}), opened=(KNOWN, ALL), site=DENIED)
    assert decision.skip is None and decision.expire_session and decision.seal_state is None
    assert decision.write == AnonEvent(tenant_id="shop", day=NOW.date(), utm_source="news", utm_medium="email",
                                       utm_campaign="dec", path="/page", channel=decision.channel)
    assert decision.session_id is None and decision.cookies == () and not decision.created


def test_denied_consent_without_a_cookie_expires_nothing():
    decision = decide(facts(), site=DENIED)
    assert type(decision.write) is AnonEvent and not decision.expire_session


def test_a_returning_visitor_with_nothing_new_takes_the_fast_path():
    decision = decide(facts(cookies={"_halo": "sealed", "_fbp": f"fb.1.{MS}.42"}), opened=(KNOWN, ALL))
    assert decision == decision._replace()  # a plain value
    assert (decision.channel, decision.session_id, decision.write, decision.seal_state) == ("Direct", KNOWN, None,
                                                                                            None)
    assert decision.cookies == () and not decision.created and not decision.touched


def test_the_fast_path_writes_consent_only_when_it_changed():
    decision = decide(facts(headers={**PAGE, "Sec-GPC": "1"}, cookies={"_halo": "sealed"}), opened=(KNOWN, ALL))
    assert decision.write == ConsentUpdate("shop", KNOWN, decision.consent, NOW)
    assert decision.seal_state == consent_bits(decision.consent) == 1 | 4  # analytics, GPC: marketing off
    assert decision.cookies == ()  # no _fbp without marketing


def test_a_cookie_sealed_under_a_rotated_key_is_sealed_again_and_nothing_written():
    cookies = {"_halo": "sealed", "_fbp": f"fb.1.{MS}.42"}
    decision = decide(facts(cookies=cookies), opened=(KNOWN, ALL | STALE_KEY))
    assert (decision.session_id, decision.seal_state, decision.write) == (KNOWN, ALL, None)
    # with new consent too: the consent written, sealed once
    decision = decide(facts(headers={**PAGE, "Sec-GPC": "1"}, cookies=cookies), opened=(KNOWN, ALL | STALE_KEY))
    assert decision.seal_state == 1 | 4 and decision.write == ConsentUpdate("shop", KNOWN, decision.consent, NOW)
    # a campaign touch re-seals it as well
    decision = decide(facts(query="utm_source=news&utm_medium=email", cookies=cookies),
                      opened=(KNOWN, ALL | STALE_KEY))
    assert decision.touched and decision.seal_state == ALL


def test_the_stale_flag_is_the_one_crypto_sets():
    from halo_proxy.crypto import COOKIE_STALE, COOKIE_STATE_MAX

    assert STALE_KEY == COOKIE_STALE and not STALE_KEY & COOKIE_STATE_MAX


def test_the_fast_path_gives_a_missing_fbp_with_marketing_consent():
    decision = decide(facts(cookies={"_halo": "sealed"}), opened=(KNOWN, ALL))
    assert decision.cookies == (SetCookie("_fbp", f"fb.1.{MS}.1234567890", 90 * 86400),)
    assert decision.write is None


def test_a_new_visitor_gets_a_session_a_write_and_cookies():
    decision = decide(facts(query="utm_source=google&utm_medium=cpc&gclid=abc&fbclid=FB1"))
    assert decision.created and not decision.touched and decision.session_id == NEW
    assert decision.seal_state == ALL
    write = decision.write
    assert type(write) is SessionWrite and write.is_new and write.session_id == NEW and write.at == NOW
    assert write.fbp == f"fb.1.{MS}.1234567890" and write.fbc == f"fb.1.{MS}.FB1"
    assert write.ip_hash is None  # keyed hashing is the service's
    assert [c.name for c in decision.cookies] == ["_fbp", "_fbc"]
    assert decision.remember == campaign_fingerprint(write.touch)
    assert decision.user_agent == CHROME


def test_a_new_visitor_without_campaign_data_is_not_remembered_for_the_repeat_rule():
    decision = decide(facts())
    assert decision.created and decision.remember is None and decision.channel == "Direct"


def test_a_campaign_touch_of_a_known_session_is_a_touch():
    decision = decide(facts(query="utm_source=news&utm_medium=email"), opened=(KNOWN, ALL),
                      )
    assert decision.touched and not decision.created and decision.seal_state is None
    assert type(decision.write) is SessionWrite and not decision.write.is_new


def _recent(query: str, at: datetime) -> dict:
    touch = touch_for_visit(campaign=parse_campaign(MultiDict(p.split("=", 1) for p in query.split("&"))),
                            referrer=None, landing_path="/page", now=at)
    return {("shop", KNOWN): (campaign_fingerprint(touch), at.timestamp())}


@pytest.mark.parametrize(("seen_ago", "repeat"), [(60, True), (REPEAT_SECONDS - 1, True), (REPEAT_SECONDS, False)])
def test_a_reload_of_the_same_campaign_landing_within_30_minutes_is_not_a_new_touch(seen_ago, repeat):
    query = "utm_source=news&utm_medium=email"
    decision = decide(facts(query=query), opened=(KNOWN, ALL),
                      recent=_recent(query, NOW - timedelta(seconds=seen_ago)))
    assert (decision.write is None) is repeat
    assert decision.channel is not None  # counted as a visit either way
    assert decision.touched is not repeat


def test_another_campaign_within_30_minutes_is_a_touch():
    decision = decide(facts(query="utm_source=other&utm_medium=cpc"), opened=(KNOWN, ALL),
                      recent=_recent("utm_source=news&utm_medium=email", NOW - timedelta(seconds=60)))
    assert decision.touched


@pytest.mark.parametrize(("fbp", "kept"), [
    (f"fb.1.{MS}.987654321", True),
    ("fb.1.1700000000000.AbC-_.~+/=", True),
    ("<script>", False),
    ("fb.1.x.1", False),
])
def test_an_fbp_cookie_is_kept_only_when_it_has_meta_s_shape(fbp, kept):
    decision = decide(facts(cookies={"_fbp": fbp}))
    assert (decision.write.fbp == fbp) is kept  # type: ignore[union-attr]
    assert bool(FB_COOKIE.fullmatch(fbp)) is kept
    assert ("_fbp" in [c.name for c in decision.cookies]) is not kept


@pytest.mark.parametrize(("fbc", "fbclid", "new"), [
    (None, "NEW", True),  # a first fbclid
    (f"fb.1.{MS}.OLD", "NEW", True),  # a later one replaces it
    (f"fb.1.{MS}.SAME", "SAME", False),  # the same one again: kept as it was
    ("junk", "NEW", True),
])
def test_fbc_follows_the_latest_fbclid(fbc, fbclid, new):
    cookies = {"_fbc": fbc} if fbc else {}
    decision = decide(facts(query=f"fbclid={fbclid}", cookies=cookies))
    assert decision.write.fbc == (f"fb.1.{MS}.{fbclid}" if new else fbc)  # type: ignore[union-attr]
    assert ("_fbc" in [c.name for c in decision.cookies]) is new


def test_without_marketing_no_facebook_identifiers_are_kept_or_made():
    decision = decide(facts(query="fbclid=X", headers={**PAGE, "Sec-GPC": "1"}, cookies={"_fbp": f"fb.1.{MS}.1"}))
    assert decision.write.fbp is None and decision.write.fbc is None  # type: ignore[union-attr]
    assert decision.cookies == ()


@pytest.mark.parametrize(("referer", "touch"), [
    ("https://shop.example/cart", False),  # internal navigation: the fast path
    ("https://www.google.com/", True),  # an outside referrer is campaign data
])
def test_an_outside_referrer_is_a_touch_and_an_internal_one_is_not(referer, touch):
    decision = decide(facts(headers={**PAGE, "Referer": referer}), opened=(KNOWN, ALL))
    assert decision.touched is touch


def test_invalid_text_in_the_user_agent_is_made_storable():
    decision = decide(facts(headers={**PAGE, "User-Agent": "Mozilla\udcff/5.0"}))
    assert decision.user_agent is not None and decision.user_agent.encode("utf-8")


@pytest.mark.parametrize(("https", "domain", "http_only", "expected"), [
    (False, None, True, "a=b; Max-Age=60; Path=/; SameSite=Lax; HttpOnly"),
    (True, ".shop.example", False, "a=b; Max-Age=60; Path=/; SameSite=Lax; Domain=.shop.example; Secure"),
])
def test_set_cookie_header(https, domain, http_only, expected):
    assert set_cookie_header("a", "b", 60, https, domain=domain, http_only=http_only) == expected
