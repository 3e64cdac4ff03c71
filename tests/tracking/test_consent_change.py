"""The consent-change rule and HaloTrack's own consent cookie, as tables (no sockets)."""

from __future__ import annotations

from uuid import UUID

import pytest

from halo_proxy.tracking.consent import ConsentPolicy, own_consent_value, parse_consent, read_own
from halo_proxy.tracking.consent_change import decide_consent_change, effective_consent
from halo_proxy.tracking.models import Consent

SID = UUID("11111111-2222-4333-8444-555555555555")
GRANTED = Consent(analytics=True, marketing=True)
DENIED = Consent(analytics=False, marketing=False)
POLICY = ConsentPolicy(unknown=True)
CY_ALL = "consentid:x,consent:yes,action:yes,necessary:yes,analytics:yes,advertisement:yes"
CY_NONE = "consentid:x,consent:no,action:yes,necessary:yes,analytics:no,advertisement:no"


@pytest.mark.parametrize("analytics, marketing, gpc, expected", [
    (True, True, False, (True, True)),
    (True, True, True, (True, False)),
    (False, True, False, (False, False)),  # marketing needs analytics
    (True, False, False, (True, False)),
])
def test_effective_consent(analytics, marketing, gpc, expected):
    consent = effective_consent(analytics, marketing, gpc)
    assert (consent.analytics, consent.marketing, consent.gpc, consent.source) == (*expected, gpc, "halotrack")


@pytest.mark.parametrize("value, expected", [
    ("v1.11", (True, True)), ("v1.10", (True, False)), ("v1.00", (False, False)), ("v1.01", (False, False)),
    ("v1.1", None), ("v2.11", None), ("", None), ("v1.11x", None), (None, None),
])
def test_own_cookie_values(value, expected):
    read = read_own(value)
    assert (None if read is None else (read.analytics, read.marketing)) == expected
    if expected is not None:
        assert own_consent_value(*expected) == value.replace("v1.01", "v1.00")


@pytest.mark.parametrize("cookies, analytics, marketing, source", [
    ({}, True, True, "unknown"),
    ({"_halo_consent": "v1.00"}, False, False, "halotrack"),
    ({"_halo_consent": "v1.10"}, True, False, "halotrack"),
    # both speak: the more restrictive wins for each use
    ({"_halo_consent": "v1.11", "cookieyes-consent": CY_NONE}, False, False, "cookieyes"),
    ({"_halo_consent": "v1.00", "cookieyes-consent": CY_ALL}, False, False, "halotrack"),
    ({"_halo_consent": "v1.11", "cookieyes-consent": CY_ALL}, True, True, "cookieyes"),
    ({"_halo_consent": "garbage", "cookieyes-consent": CY_ALL}, True, True, "cookieyes"),
])
def test_the_own_cookie_beside_a_banner(cookies, analytics, marketing, source):
    consent = parse_consent(cookies, {}, POLICY)
    assert (consent.analytics, consent.marketing, consent.source) == (analytics, marketing, source)


COOKIES = {"_halo": "sealed", "_fbp": "fb.1.1.1", "_fbc": "fb.1.1.x"}


@pytest.mark.parametrize("name, args, expected", [
    ("withdraw with a session", (False, True, False, (SID, 3), GRANTED, COOKIES),
     {"change": "withdrawn", "withdraw": SID, "expire": ("_halo", "_fbp", "_fbc"), "own_value": "v1.00"}),
    ("withdraw without a session, had consent", (False, False, False, None, GRANTED, {}),
     {"change": "withdrawn", "withdraw": None, "expire": ()}),
    ("deny again", (False, False, False, None, DENIED, {}), {"change": "unchanged", "withdraw": None}),
    ("grant without a session starts one", (True, True, False, None, DENIED, {}),
     {"change": "granted", "start": True, "own_value": "v1.11"}),
    ("same as sealed", (True, True, False, (SID, 3), GRANTED, COOKIES),
     {"change": "unchanged", "update": None, "seal_state": None, "expire": ()}),
    ("same as sealed under a rotated key", (True, True, False, (SID, 3 | 0x10), GRANTED, COOKIES),
     {"change": "unchanged", "update": None, "seal_state": None}),
    ("marketing withdrawn", (True, False, False, (SID, 3), GRANTED, COOKIES),
     {"change": "updated", "update": SID, "seal_state": 1, "expire": ("_fbp", "_fbc")}),
    ("analytics granted to a marketing-only session", (True, True, False, (SID, 2), GRANTED, {}),
     {"change": "granted", "update": SID, "seal_state": 3}),
    ("gpc sealed in", (True, True, True, (SID, 1), GRANTED, {}),
     {"change": "updated", "update": SID, "seal_state": 5}),
])
def test_consent_changes(name, args, expected):
    analytics, marketing, gpc, opened, previous, cookies = args
    change = decide_consent_change(analytics, marketing, gpc, opened, previous, cookies, "_halo")
    got = {key: getattr(change, key) for key in expected}
    assert got == expected, name
