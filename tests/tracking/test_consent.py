"""Consent from CMP cookies and Sec-GPC: one table per CMP (given, denied, no choice, malformed), then precedence."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from halo_proxy.tracking.consent import ConsentPolicy, parse_consent
from halo_proxy.tracking.models import Consent
from tests.tracking.tcf_builder import build_core

GRANTED_DEFAULT = ConsentPolicy(unknown=True)
DENIED_DEFAULT = ConsentPolicy(unknown=False)
NO_HEADERS = CIMultiDict()
GPC = CIMultiDict({"Sec-GPC": "1"})


def consent(analytics, marketing, explicit, source, gpc=False):
    return Consent(analytics=analytics, marketing=marketing, explicit=explicit, gpc=gpc, source=source)


UNKNOWN_DENIED = consent(False, False, False, "unknown")

# --- CookieYes ---------------------------------------------------------------------------------------------------

CKY_ID = "consentid:ZDR5ZU1QS3dQbm5SeE5HZGRnSzBqcGFHdU1LdGJOaWs"
COOKIEYES = [
    pytest.param(
        f"{CKY_ID},consent:yes,action:yes,necessary:yes,functional:yes,analytics:yes,performance:yes,"
        "advertisement:yes,other:yes",
        consent(True, True, True, "cookieyes"),
        id="given",
    ),
    pytest.param(
        f"{CKY_ID},consent:no,action:yes,necessary:yes,functional:no,analytics:no,performance:no,advertisement:no,"
        "other:no",
        consent(False, False, True, "cookieyes"),
        id="denied",
    ),
    pytest.param(
        f"{CKY_ID},consent:no,action:yes,necessary:yes,functional:yes,analytics:yes,performance:no,advertisement:no",
        consent(True, False, True, "cookieyes"),
        id="analytics-only-summary-says-no",
    ),
    pytest.param(
        f"{CKY_ID},consent:no,action:no,necessary:yes,functional:no,analytics:no,performance:no,advertisement:no",
        consent(False, False, False, "cookieyes"),
        id="no-choice-opt-in-defaults",
    ),
    pytest.param(
        f"{CKY_ID},consent:yes,action:no,necessary:yes,functional:yes,analytics:yes,performance:yes,advertisement:yes",
        consent(True, True, False, "cookieyes"),
        id="no-choice-opt-out-defaults",
    ),
    pytest.param(
        "consentid%3AZDR5ZU1Q%2Cconsent%3Ayes%2Caction%3Ayes%2Canalytics%3Ayes%2Cadvertisement%3Ano",
        consent(True, False, True, "cookieyes"),
        id="url-encoded",
    ),
    pytest.param("garbage", UNKNOWN_DENIED, id="malformed-text"),
    pytest.param(f"{CKY_ID},consent:yes,action:yes", UNKNOWN_DENIED, id="malformed-no-categories"),
    pytest.param("analytics:maybe,advertisement:sure", UNKNOWN_DENIED, id="malformed-values"),
    pytest.param("%E0%A4%A", UNKNOWN_DENIED, id="malformed-percent"),
]


@pytest.mark.parametrize(("value", "expected"), COOKIEYES)
def test_cookieyes(value, expected):
    assert parse_consent({"cookieyes-consent": value}, NO_HEADERS, DENIED_DEFAULT) == expected


# --- Cookiebot ---------------------------------------------------------------------------------------------------

CB_GIVEN = (
    "{stamp:%27J3Vb6dVKx9mPqK1O0sZbGzJ2bZ8c0hJ0sD5sWg3+vY1Rr0sY3tQ3Tw==%27%2Cnecessary:true%2Cpreferences:true"
    "%2Cstatistics:true%2Cmarketing:true%2Cmethod:%27explicit%27%2Cver:1%2Cutc:1698057791350%2Cregion:%27gb%27}"
)
CB_DENIED = (
    "{stamp:%27J3Vb6dVKx9mPqK1O0sZbGzJ2bZ8c0hJ0sD5sWg3+vY1Rr0sY3tQ3Tw==%27%2Cnecessary:true%2Cpreferences:false"
    "%2Cstatistics:false%2Cmarketing:false%2Cmethod:%27explicit%27%2Cver:1%2Cutc:1698057791350%2Cregion:%27de%27}"
)
CB_STATS_ONLY_FULLY_ENCODED = (
    "%7Bstamp%3A%27Ab12cdEF%2FghIJklmn%3D%3D%27%2Cnecessary%3Atrue%2Cpreferences%3Afalse%2Cstatistics%3Atrue"
    "%2Cmarketing%3Afalse%2Cmethod%3A%27explicit%27%2Cver%3A3%2Cutc%3A1717171717171%2Ciab2%3A%27%27%2Cregion%3A%27cz%27%7D"
)
CB_IMPLIED = (
    "{stamp:%27Xy12%27%2Cnecessary:true%2Cpreferences:true%2Cstatistics:true%2Cmarketing:true%2Cmethod:%27implied%27"
    "%2Cver:1%2Cutc:1698057791350%2Cregion:%27us-06%27}"
)
CB_NO_CONSENT_REQUIRED_OBJECT = (
    "{stamp:%27-1%27%2Cnecessary:true%2Cpreferences:true%2Cstatistics:true%2Cmarketing:true%2Cmethod:%27implied%27"
    "%2Cver:1%2Cutc:1698057791350%2Cregion:%27VN%27}"
)
COOKIEBOT = [
    pytest.param(CB_GIVEN, consent(True, True, True, "cookiebot"), id="given"),
    pytest.param(CB_DENIED, consent(False, False, True, "cookiebot"), id="denied"),
    pytest.param(CB_STATS_ONLY_FULLY_ENCODED, consent(True, False, True, "cookiebot"), id="statistics-only-encoded"),
    pytest.param(CB_IMPLIED, consent(True, True, False, "cookiebot"), id="implied"),
    pytest.param("-1", consent(True, True, False, "cookiebot"), id="no-consent-required"),
    pytest.param(CB_NO_CONSENT_REQUIRED_OBJECT, consent(True, True, False, "cookiebot"), id="stamp-minus-one"),
    pytest.param("0", consent(False, False, True, "cookiebot"), id="declined-zero"),
    pytest.param("{stamp:%27abc", UNKNOWN_DENIED, id="malformed-truncated"),
    pytest.param("{stamp:'x',necessary:true}", UNKNOWN_DENIED, id="malformed-no-categories"),
    pytest.param("[" * 5000, UNKNOWN_DENIED, id="malformed-deep-nesting"),
    pytest.param(
        "{statistics:true,marketing:true,a:" + "[" * 1500 + "]" * 1500 + "}",
        UNKNOWN_DENIED,
        id="malformed-too-deep-for-json",
    ),
    pytest.param("yes", UNKNOWN_DENIED, id="malformed-word"),
    pytest.param("{statistics:'true',marketing:1}", consent(False, False, False, "cookiebot"), id="non-boolean"),
]


@pytest.mark.parametrize(("value", "expected"), COOKIEBOT)
def test_cookiebot(value, expected):
    assert parse_consent({"CookieConsent": value}, NO_HEADERS, DENIED_DEFAULT) == expected


# --- OneTrust ----------------------------------------------------------------------------------------------------


def onetrust(groups: str, interactions: int = 1, gpc: int = 0) -> str:
    return (
        f"isGpcEnabled={gpc}&datestamp=Mon+Oct+23+2023+10%3A15%3A22+GMT%2B0200+(Central+European+Summer+Time)"
        "&version=202310.1.0&browserGpcFlag=0&isIABGlobal=false&hosts=&consentId=3f1c8e4a-52b1-4a57-9c55-0d2f2b0e6d11"
        f"&interactionCount={interactions}&landingPath=NotLandingPage&groups={groups}&AwaitingReconsent=false"
        "&geolocation=CZ%3B10"
    )


ALL_GROUPS = "C0001%3A1%2CC0002%3A1%2CC0003%3A1%2CC0004%3A1%2CC0005%3A1"
NONE_GROUPS = "C0001%3A1%2CC0002%3A0%2CC0003%3A0%2CC0004%3A0%2CC0005%3A0"
PERF_GROUPS = "C0001%3A1%2CC0002%3A1%2CC0003%3A0%2CC0004%3A0"
ONETRUST = [
    pytest.param({"OptanonConsent": onetrust(ALL_GROUPS)}, None, consent(True, True, True, "onetrust"), id="given"),
    pytest.param(
        {"OptanonConsent": onetrust(NONE_GROUPS, 2), "OptanonAlertBoxClosed": "2023-10-23T08:15:22.613Z"},
        None,
        consent(False, False, True, "onetrust"),
        id="denied",
    ),
    pytest.param(
        {"OptanonConsent": onetrust(PERF_GROUPS)}, None, consent(True, False, True, "onetrust"), id="analytics-only"
    ),
    pytest.param(
        {"OptanonConsent": onetrust(NONE_GROUPS, 0)}, None, consent(False, False, False, "onetrust"), id="no-choice"
    ),
    pytest.param(
        {"OptanonConsent": onetrust(NONE_GROUPS, 0), "OptanonAlertBoxClosed": "2023-10-23T08:15:22.613Z"},
        None,
        consent(False, False, True, "onetrust"),
        id="banner-closed",
    ),
    pytest.param(
        {"OptanonConsent": onetrust(ALL_GROUPS, gpc=1)},
        None,
        consent(True, False, True, "onetrust", gpc=True),
        id="cmp-applied-gpc",
    ),
    pytest.param(
        {"OptanonConsent": onetrust("C0001%3A1%2CC0002%3A0%2CC0003%3A1%2CC0004%3A1%2CC0009%3A1")},
        ConsentPolicy(unknown=False, onetrust_analytics_groups=("C0009",), onetrust_marketing_groups=("C0004", "C0005")),
        consent(True, False, True, "onetrust"),
        id="custom-groups-all-required",
    ),
    pytest.param(
        {"OptanonConsent": onetrust("C0001%3A1%2CC00021%3A1")},
        None,
        consent(False, False, True, "onetrust"),
        id="whole-id-match",
    ),
    pytest.param({"OptanonConsent": onetrust("")}, None, UNKNOWN_DENIED, id="malformed-no-groups"),
    pytest.param({"OptanonConsent": "%%%&&&=="}, None, UNKNOWN_DENIED, id="malformed-garbage"),
    pytest.param(
        {"OptanonConsent": "groups=C0002%3Ayes%2CC0004"}, None, UNKNOWN_DENIED, id="malformed-group-values"
    ),
    pytest.param(
        {"OptanonConsent": onetrust(ALL_GROUPS, interactions=0).replace("interactionCount=0", "interactionCount=x")},
        None,
        consent(True, True, False, "onetrust"),
        id="odd-interaction-count",
    ),
]


@pytest.mark.parametrize(("cookies", "policy", "expected"), ONETRUST)
def test_onetrust(cookies, policy, expected):
    assert parse_consent(cookies, NO_HEADERS, policy or DENIED_DEFAULT) == expected


# --- Complianz ---------------------------------------------------------------------------------------------------

COMPLIANZ = [
    pytest.param(
        {"cmplz_statistics": "allow", "cmplz_marketing": "allow", "cmplz_banner-status": "dismissed"},
        consent(True, True, True, "complianz"),
        id="given",
    ),
    pytest.param(
        {"cmplz_statistics": "deny", "cmplz_marketing": "deny", "cmplz_functional": "allow"},
        consent(False, False, True, "complianz"),
        id="denied",
    ),
    pytest.param(
        {"cmplz_statistics": "allow", "cmplz_marketing": "deny", "cmplz_preferences": "deny"},
        consent(True, False, True, "complianz"),
        id="statistics-only",
    ),
    pytest.param(
        {"cmplz_rt_statistics": "allow", "cmplz_rt_marketing": "allow"},
        consent(True, True, True, "complianz"),
        id="multisite-prefix",
    ),
    pytest.param({"cmplz_banner-status": "dismissed"}, UNKNOWN_DENIED, id="no-choice-dismissed-only"),
    pytest.param({"cmplz_statistics": "1", "cmplz_marketing": "yes"}, UNKNOWN_DENIED, id="malformed"),
]


@pytest.mark.parametrize(("cookies", "expected"), COMPLIANZ)
def test_complianz(cookies, expected):
    assert parse_consent(cookies, NO_HEADERS, DENIED_DEFAULT) == expected


# --- TCF ---------------------------------------------------------------------------------------------------------

TCF = [
    pytest.param(
        build_core(purposes_consent={1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}), consent(True, True, True, "tcf"), id="given"
    ),
    pytest.param(build_core(), consent(False, False, True, "tcf"), id="denied"),
    pytest.param(
        build_core(purposes_consent={1}, purposes_li={2, 7, 8, 9, 10}),
        consent(True, False, True, "tcf"),
        id="legitimate-interest-only",
    ),
    pytest.param(
        "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA",
        consent(True, False, True, "tcf"),
        id="real-string",
    ),
    pytest.param("not-a-tc-string!", UNKNOWN_DENIED, id="malformed"),
    pytest.param(build_core(version=1), UNKNOWN_DENIED, id="wrong-version"),
]


@pytest.mark.parametrize(("value", "expected"), TCF)
def test_tcf(value, expected):
    assert parse_consent({"euconsent-v2": value}, NO_HEADERS, DENIED_DEFAULT) == expected


# --- No signal, GPC, precedence ----------------------------------------------------------------------------------

CB_DENIED_COOKIES = {"CookieConsent": CB_DENIED}


@pytest.mark.parametrize(
    ("cookies", "headers", "policy", "expected"),
    [
        pytest.param({}, NO_HEADERS, GRANTED_DEFAULT, consent(True, True, False, "unknown"), id="none-granted"),
        pytest.param({}, NO_HEADERS, DENIED_DEFAULT, consent(False, False, False, "unknown"), id="none-denied"),
        pytest.param(
            {"_ga": "GA1.1.1.1", "OptanonConsent": ""},
            NO_HEADERS,
            GRANTED_DEFAULT,
            consent(True, True, False, "unknown"),
            id="unrelated-and-empty-cookies",
        ),
        pytest.param({}, GPC, GRANTED_DEFAULT, consent(True, False, False, "gpc", gpc=True), id="gpc-no-cmp"),
        pytest.param(
            {}, CIMultiDict({"sec-gpc": " 1 "}), DENIED_DEFAULT, consent(False, False, False, "gpc", gpc=True),
            id="gpc-no-cmp-denied-default",
        ),
        pytest.param(
            {"CookieConsent": CB_GIVEN}, GPC, DENIED_DEFAULT, consent(True, False, True, "cookiebot", gpc=True),
            id="gpc-overrides-cmp",
        ),
        pytest.param({}, CIMultiDict({"Sec-GPC": "0"}), GRANTED_DEFAULT, consent(True, True, False, "unknown"),
                     id="gpc-zero-ignored"),
        pytest.param(
            {"CookieConsent": CB_DENIED, "OptanonConsent": onetrust(ALL_GROUPS), "euconsent-v2": build_core()},
            NO_HEADERS,
            GRANTED_DEFAULT,
            consent(False, False, True, "cookiebot"),
            id="cookiebot-before-onetrust",
        ),
        pytest.param(
            {"OptanonConsent": onetrust(PERF_GROUPS), "cookieyes-consent": "analytics:no,advertisement:yes"},
            NO_HEADERS,
            GRANTED_DEFAULT,
            consent(True, False, True, "onetrust"),
            id="onetrust-before-cookieyes",
        ),
        pytest.param(
            {"cookieyes-consent": "action:yes,analytics:yes,advertisement:no", "cmplz_marketing": "allow"},
            NO_HEADERS,
            GRANTED_DEFAULT,
            consent(True, False, True, "cookieyes"),
            id="cookieyes-before-complianz",
        ),
        pytest.param(
            {"cmplz_statistics": "deny", "euconsent-v2": build_core(purposes_consent={1, 3, 4, 7, 8})},
            NO_HEADERS,
            GRANTED_DEFAULT,
            consent(False, False, True, "complianz"),
            id="complianz-before-tcf",
        ),
        pytest.param(
            {"CookieConsent": "garbage", "euconsent-v2": build_core(purposes_consent={1, 3, 4, 7, 8})},
            NO_HEADERS,
            DENIED_DEFAULT,
            consent(True, True, True, "tcf"),
            id="malformed-cmp-falls-through",
        ),
    ],
)
def test_signal_precedence(cookies, headers, policy, expected):
    assert parse_consent(cookies, headers, policy) == expected


def test_consent_state_labels():
    assert consent(True, True, True, "tcf").state == "granted"
    assert parse_consent({"CookieConsent": "0"}, NO_HEADERS).state == "denied"
