"""The attribution models (tracking/credit.py): hand-computed tables for each model, the exact sums of the
rounding, the `last_touch` model against the attribution's own last touch, and hypothesis for the invariants:
every model's credits of any conversion sum to exactly 1 and to exactly its value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_proxy.tracking.attribution import attribute
from halo_proxy.tracking.credit import (
    CONVERSION_UNIT,
    MODELS,
    UNATTRIBUTED_KEY,
    Credit,
    TouchKey,
    credit,
    credit_models,
    shares,
    touch_key,
)
from halo_proxy.tracking.models import Touch

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
AT = T0 + timedelta(days=14)  # the conversion
D = Decimal

GOOGLE = TouchKey("google", "cpc", "summer", "Paid Search")
FACEBOOK = TouchKey("facebook", "social", "retargeting", "Organic Social")
DIRECT = TouchKey("(direct)", "(none)", "(not set)", "Direct")
EMAIL = TouchKey("newsletter", "email", "november", "Email")


def google(at: datetime) -> Touch:
    return Touch(at=at, source="google", medium="cpc", campaign="summer", channel="Paid Search",
                 click_ids=(("gclid", "g-1"),))


def facebook(at: datetime) -> Touch:
    return Touch(at=at, source="facebook", medium="social", campaign="retargeting", channel="Organic Social",
                 referrer_domain="facebook.com")


def direct(at: datetime) -> Touch:
    return Touch(at=at, source="(direct)", medium="(none)", channel="Direct")


def email(at: datetime) -> Touch:
    return Touch(at=at, source="newsletter", medium="email", campaign="november", channel="Email")


def table(credits: tuple[Credit, ...]) -> list[tuple[TouchKey, Decimal, Decimal]]:
    return [(c.key, c.conversions, c.revenue) for c in credits]


# google 14 days before the conversion, facebook 7 days before, a direct visit at the conversion's moment.
PATH = (google(T0), facebook(T0 + timedelta(days=7)), direct(AT))


@pytest.mark.parametrize("model, expected", [
    ("first_touch", [(GOOGLE, D("1.000000"), D("100.00"))]),
    # the direct visit carries no campaign data: the attribution's last touch is facebook's
    ("last_touch", [(FACEBOOK, D("1.000000"), D("100.00"))]),
    ("last_non_direct", [(FACEBOOK, D("1.000000"), D("100.00"))]),
    # thirds: the one unit left by the floors goes to the key seen first
    ("linear", [(GOOGLE, D("0.333334"), D("33.34")), (FACEBOOK, D("0.333333"), D("33.33")),
                (DIRECT, D("0.333333"), D("33.33"))]),
    # weights 2^-2, 2^-1, 1 = 1/7, 2/7, 4/7; millionths 142857.14, 285714.29, 571428.57 -> +1 to the third;
    # cents 1428.57, 2857.14, 5714.29 -> +1 to the first (largest remainder .571)
    ("time_decay", [(GOOGLE, D("0.142857"), D("14.29")), (FACEBOOK, D("0.285714"), D("28.57")),
                    (DIRECT, D("0.571429"), D("57.14"))]),
    ("position_based", [(GOOGLE, D("0.400000"), D("40.00")), (FACEBOOK, D("0.200000"), D("20.00")),
                        (DIRECT, D("0.400000"), D("40.00"))]),
])
def test_each_model_on_a_three_touch_path(model, expected):
    assert table(credit(model, PATH, converted_at=AT, value=D("100"))) == expected


FOUR = (google(T0), email(T0 + timedelta(days=1)), facebook(T0 + timedelta(days=2)), email(T0 + timedelta(days=3)))


@pytest.mark.parametrize("model, expected", [
    ("first_touch", [(GOOGLE, D("1"), D("250.00"))]),
    ("last_touch", [(EMAIL, D("1"), D("250.00"))]),
    ("last_non_direct", [(EMAIL, D("1"), D("250.00"))]),
    # the two email touches are one key: 2/4
    ("linear", [(GOOGLE, D("0.25"), D("62.50")), (EMAIL, D("0.5"), D("125.00")), (FACEBOOK, D("0.25"), D("62.50"))]),
    # 40 % first, 10 % + 10 % the middle two, 40 % last: email 10 % + 40 %
    ("position_based", [(GOOGLE, D("0.4"), D("100.00")), (EMAIL, D("0.5"), D("125.00")),
                        (FACEBOOK, D("0.1"), D("25.00"))]),
])
def test_touches_of_one_key_make_one_credit(model, expected):
    got = table(credit(model, FOUR, converted_at=T0 + timedelta(days=3), value=250))
    assert got == expected


def test_time_decay_halves_a_touch_s_weight_every_seven_days():
    path = (email(AT - timedelta(days=21)), google(AT - timedelta(days=7)))
    assert shares("time_decay", path, AT) == (Fraction(1, 5), Fraction(4, 5))  # 1/8 : 1/2
    # A touch after the conversion's time (never stored so) weighs as one at the conversion.
    assert shares("time_decay", (google(AT), facebook(AT + timedelta(days=1))), AT) == (Fraction(1, 2),) * 2
    # Ages beyond what a float can halve: the youngest touch still takes everything, nothing divides by zero.
    ancient = (email(AT - timedelta(days=365 * 40)), google(AT))
    assert shares("time_decay", ancient, AT) == (Fraction(0), Fraction(1))
    assert table(credit("time_decay", ancient, converted_at=AT, value=10)) == [(GOOGLE, D("1"), D("10.00"))]


@pytest.mark.parametrize("n, expected", [
    (1, [Fraction(1)]),
    (2, [Fraction(1, 2)] * 2),
    (3, [Fraction(2, 5), Fraction(1, 5), Fraction(2, 5)]),
    (5, [Fraction(2, 5)] + [Fraction(1, 15)] * 3 + [Fraction(2, 5)]),
])
def test_position_based_shares(n, expected):
    path = tuple(google(T0 + timedelta(hours=i)) for i in range(n))
    assert list(shares("position_based", path, AT)) == expected


def test_last_non_direct_falls_back_to_the_last_direct_touch():
    path = (direct(T0), direct(T0 + timedelta(days=1)))
    assert table(credit("last_non_direct", path, converted_at=AT, value=5)) == [(DIRECT, D("1"), D("5.00"))]
    assert shares("last_non_direct", path, AT) == (Fraction(0), Fraction(1))
    # a Direct touch after a campaign one: last_non_direct skips it, last_touch skips it too (no campaign data)
    path = (email(T0), direct(T0 + timedelta(days=1)))
    assert shares("last_non_direct", path, AT) == shares("last_touch", path, AT) == (Fraction(1), Fraction(0))


def test_last_touch_is_the_attribution_s_own_last_touch():
    # A referral with no channel but Direct data would be "latest"; the attribution names the campaign touch.
    referral = Touch(at=T0 + timedelta(days=2), source="(direct)", medium="(none)", channel="Direct",
                     referrer_domain="blog.example")
    path = (google(T0), referral, direct(T0 + timedelta(days=3)))
    attribution = attribute(path, match_type="session", session_id="s", converted_at=AT, lookback_days=90)
    assert attribution.last_touch == referral  # an external referrer is campaign data
    [only] = credit("last_touch", attribution.touches, converted_at=AT, last_touch=attribution.last_touch)
    assert only.key == touch_key(referral)
    # The attribution's own choice wins over the rule's: what the record stored is what the report credits.
    [stored] = credit("last_touch", path, converted_at=AT, last_touch=path[0])
    assert stored.key == GOOGLE


@pytest.mark.parametrize("model", MODELS)
def test_no_touches_is_one_unattributed_credit(model):
    assert table(credit(model, (), converted_at=AT, value=D("99.5"))) == [(UNATTRIBUTED_KEY, D(1), D("99.50"))]
    assert table(credit(model, (), converted_at=AT)) == [(UNATTRIBUTED_KEY, D(1), D(0))]


def test_a_missing_source_medium_or_campaign_reads_not_set():
    bare = Touch(at=T0, source=None, medium=None, campaign=None, channel="Unassigned")
    assert touch_key(bare) == TouchKey("(not set)", "(not set)", "(not set)", "Unassigned")


def test_values_with_four_decimals_are_split_in_ten_thousandths():
    got = table(credit("linear", PATH, converted_at=AT, value=D("10.0001")))
    assert [r for _, _, r in got] == [D("3.3334"), D("3.3334"), D("3.3333")]
    assert sum(r for _, _, r in got) == D("10.0001")


def test_no_value_credits_no_revenue_and_a_negative_one_is_split_like_a_positive():
    assert [c.revenue for c in credit("linear", PATH, converted_at=AT)] == [0, 0, 0]
    got = [c.revenue for c in credit("linear", PATH, converted_at=AT, value=D("-100"))]
    assert got == [D("-33.34"), D("-33.33"), D("-33.33")]


def test_unknown_model_and_naive_time_are_refused():
    with pytest.raises(ValueError, match="unknown attribution model"):
        credit("u_shaped", PATH, converted_at=AT)
    with pytest.raises(ValueError, match="timezone-aware"):
        credit("linear", PATH, converted_at=AT.replace(tzinfo=None))


def test_credit_models_gives_every_model():
    assert list(credit_models(PATH, converted_at=AT, value=1)) == list(MODELS)


# -- properties -----------------------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)

keys = st.sampled_from([
    ("google", "cpc", "summer", "Paid Search"),
    ("google", "organic", None, "Organic Search"),
    ("facebook", "social", "retargeting", "Organic Social"),
    ("(direct)", "(none)", None, "Direct"),
    ("newsletter", "email", "november", "Email"),
    (None, None, None, "Unassigned"),
])


@st.composite
def touch_lists(draw: st.DrawFn) -> tuple[Touch, ...]:
    offsets = draw(st.lists(st.integers(min_value=0, max_value=90 * 86400), max_size=12, unique=True))
    touches = []
    for offset in sorted(offsets, reverse=True):
        source, medium, campaign, channel = draw(keys)
        referrer = draw(st.sampled_from([None, "blog.example"]))
        touches.append(Touch(at=AT - timedelta(seconds=offset), source=source, medium=medium, campaign=campaign,
                             channel=channel, referrer_domain=referrer))
    return tuple(touches)


values = st.one_of(st.none(), st.decimals(min_value=0, max_value=10**12, places=4, allow_nan=False),
                   st.integers(min_value=0, max_value=10**12).map(Decimal))


@PROPERTY
@given(touches=touch_lists(), value=values)
def test_credits_always_sum_to_one_and_to_the_value(touches, value):
    every = credit_models(touches, converted_at=AT, value=value)
    assert every == {m: credit(m, touches, converted_at=AT, value=value) for m in MODELS}
    for model, credits in every.items():
        assert sum(c.conversions for c in credits) == 1, model
        assert sum(c.revenue for c in credits) == (value or 0), model
        assert all(c.conversions >= 0 and c.revenue >= 0 for c in credits), model
        assert all(c.conversions % CONVERSION_UNIT == 0 for c in credits), model
        assert len({c.key for c in credits}) == len(credits), model
        expected_keys = {touch_key(t) for t in touches} or {UNATTRIBUTED_KEY}
        assert {c.key for c in credits} <= expected_keys, model


@PROPERTY
@given(touches=touch_lists(), value=values)
def test_each_credit_is_its_exact_share_within_one_unit(touches, value):
    for model in MODELS:
        exact: dict[TouchKey, Fraction] = {}
        for t, part in zip(touches, shares(model, touches, AT), strict=True):
            exact[touch_key(t)] = exact.get(touch_key(t), Fraction(0)) + part
        for c in credit(model, touches, converted_at=AT, value=value):
            if c.key == UNATTRIBUTED_KEY:
                continue
            assert abs(Fraction(c.conversions) - exact[c.key]) < Fraction(CONVERSION_UNIT), model


@PROPERTY
@given(touches=touch_lists())
def test_first_and_last_touch_models_agree_with_the_attribution(touches):
    attribution = attribute(touches, match_type="session", session_id="s", converted_at=AT, lookback_days=90)
    first = credit("first_touch", attribution.touches, converted_at=AT)
    last = credit("last_touch", attribution.touches, converted_at=AT)  # the rule, without the stored choice
    if attribution.first_touch is None:
        assert [c.key for c in first] == [c.key for c in last] == [UNATTRIBUTED_KEY]
    else:
        assert [c.key for c in first] == [touch_key(attribution.first_touch)]
        assert [c.key for c in last] == [touch_key(attribution.last_touch)]
