"""Attribution rules: the seed journey, the lookback window, touches after the conversion, unmatched conversions,
the choice among a person's sessions, and the response and storage shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from halo_proxy.tracking.attribution import (
    MAX_TOUCHES,
    attribute,
    attribution_from_record,
    attribution_json,
    attribution_record,
    choose_session,
)
from halo_proxy.tracking.models import Attribution, Touch

DAY_1 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
DAY_2 = DAY_1 + timedelta(days=1)
DAY_3 = DAY_1 + timedelta(days=2)
SESSION = "3f2b8c1e-6a4d-4b8e-9a77-0c1d2e3f4a5b"

GOOGLE = Touch(
    at=DAY_1,
    source="google",
    medium="cpc",
    campaign="summer",
    channel="Paid Search",
    landing_path="/",
    click_ids=(("gclid", "abc123"),),
)
FACEBOOK = Touch(
    at=DAY_2,
    source="facebook",
    medium="social",
    campaign="retargeting",
    channel="Organic Social",
    referrer_domain="facebook.com",
    referrer_url="https://facebook.com/",
    landing_path="/sale",
    click_ids=(("fbclid", "xyz789"),),
)


def touch(at, source="(direct)", medium="(none)", channel="Direct", **kwargs):
    return Touch(at=at, source=source, medium=medium, channel=channel, **kwargs)


def run(touches, *, match_type="session", session_id=SESSION, converted_at=DAY_3, lookback_days=90):
    return attribute(
        touches,
        match_type=match_type,
        session_id=session_id,
        converted_at=converted_at,
        lookback_days=lookback_days,
    )


def test_seed_journey():
    result = run([GOOGLE, FACEBOOK])
    assert result == Attribution(
        match_type="session",
        session_id=SESSION,
        first_touch=GOOGLE,
        last_touch=FACEBOOK,
        days_to_convert=2,
        click_ids=(("gclid", "abc123"), ("fbclid", "xyz789")),
        touches=(GOOGLE, FACEBOOK),
    )
    assert attribution_json(result) == {
        "first_touch": {
            "source": "google",
            "medium": "cpc",
            "campaign": "summer",
            "channel": "Paid Search",
            "at": "2025-03-10T09:00:00Z",
        },
        "last_touch": {
            "source": "facebook",
            "medium": "social",
            "campaign": "retargeting",
            "channel": "Organic Social",
            "at": "2025-03-11T09:00:00Z",
        },
        "days_to_convert": 2,
        "click_ids": {"gclid": "abc123", "fbclid": "xyz789"},
    }


OLD_TIKTOK = touch(
    DAY_3 - timedelta(days=120), "tiktok", "paid", "Paid Social", click_ids=(("ttclid", "old"),)
)
LATE_BING = touch(DAY_3 + timedelta(hours=1), "bing", "cpc", "Paid Search", click_ids=(("msclkid", "late"),))
DIRECT_1 = touch(DAY_1)
DIRECT_2 = touch(DAY_2)
GCLID_NEW = touch(DAY_2, "google", "cpc", "Paid Search", click_ids=(("gclid", "new"),))


@pytest.mark.parametrize(
    "touches, kwargs, first, last, days, click_ids, kept",
    [
        pytest.param(
            [FACEBOOK, GOOGLE],
            {},
            GOOGLE,
            FACEBOOK,
            2,
            {"gclid": "abc123", "fbclid": "xyz789"},
            [GOOGLE, FACEBOOK],
            id="unsorted-input",
        ),
        pytest.param(
            [OLD_TIKTOK, GOOGLE, FACEBOOK],
            {},
            GOOGLE,
            FACEBOOK,
            2,
            {"gclid": "abc123", "fbclid": "xyz789"},
            [GOOGLE, FACEBOOK],
            id="lookback-excludes-old-first-touch",
        ),
        pytest.param(
            [OLD_TIKTOK, GOOGLE],
            {"lookback_days": 365},
            OLD_TIKTOK,
            GOOGLE,
            120,
            {"gclid": "abc123", "ttclid": "old"},
            [OLD_TIKTOK, GOOGLE],
            id="longer-lookback-keeps-it",
        ),
        pytest.param(
            [GOOGLE, FACEBOOK, LATE_BING],
            {},
            GOOGLE,
            FACEBOOK,
            2,
            {"gclid": "abc123", "fbclid": "xyz789"},
            [GOOGLE, FACEBOOK],
            id="touch-after-conversion-ignored",
        ),
        pytest.param(
            [GOOGLE],
            {"converted_at": DAY_1},
            GOOGLE,
            GOOGLE,
            0,
            {"gclid": "abc123"},
            [GOOGLE],
            id="touch-at-conversion-instant-counts",
        ),
        pytest.param(
            [GOOGLE],
            {"converted_at": DAY_3 - timedelta(minutes=1)},
            GOOGLE,
            GOOGLE,
            1,
            {"gclid": "abc123"},
            [GOOGLE],
            id="whole-days-round-down",
        ),
        pytest.param(
            [GOOGLE, FACEBOOK],
            {"lookback_days": 2},
            GOOGLE,
            FACEBOOK,
            2,
            {"gclid": "abc123", "fbclid": "xyz789"},
            [GOOGLE, FACEBOOK],
            id="window-boundary-inclusive",
        ),
        pytest.param(
            [GOOGLE, FACEBOOK],
            {"lookback_days": 1},
            FACEBOOK,
            FACEBOOK,
            1,
            {"fbclid": "xyz789"},
            [FACEBOOK],
            id="short-lookback",
        ),
        pytest.param([DIRECT_1], {}, DIRECT_1, DIRECT_1, 2, {}, [DIRECT_1], id="direct-only"),
        pytest.param(
            [DIRECT_1, FACEBOOK],
            {},
            DIRECT_1,
            FACEBOOK,
            2,
            {"fbclid": "xyz789"},
            [DIRECT_1, FACEBOOK],
            id="direct-first-campaign-last",
        ),
        pytest.param(
            [GOOGLE, DIRECT_2],
            {},
            GOOGLE,
            GOOGLE,
            2,
            {"gclid": "abc123"},
            [GOOGLE, DIRECT_2],
            id="last-touch-skips-later-direct",
        ),
        pytest.param(
            [GOOGLE, GCLID_NEW],
            {},
            GOOGLE,
            GCLID_NEW,
            2,
            {"gclid": "new"},
            [GOOGLE, GCLID_NEW],
            id="latest-click-id-value",
        ),
        pytest.param(
            [touch(DAY_1, "x", "y", "Other", click_ids=(("rdt_cid", "r"), ("gclid", "g"), ("custom", "c")))],
            {},
            None,
            None,
            2,
            {"gclid": "g", "rdt_cid": "r", "custom": "c"},
            None,
            id="click-ids-in-stored-order",
        ),
    ],
)
def test_attribute(touches, kwargs, first, last, days, click_ids, kept):
    result = run(touches, **kwargs)
    if first is not None:
        assert result.first_touch == first
        assert result.last_touch == last
    assert result.days_to_convert == days
    assert dict(result.click_ids) == click_ids
    assert list(result.click_ids) == list(click_ids.items())
    if kept is not None:
        assert list(result.touches) == kept
    assert result.match_type == "session" and result.session_id == SESSION


@pytest.mark.parametrize(
    "match_type, session_id, touches",
    [
        pytest.param("none", None, [], id="unmatched"),
        pytest.param("none", None, [GOOGLE], id="unmatched-touches-ignored"),
        pytest.param("session", None, [GOOGLE], id="no-session-id"),
    ],
)
def test_unmatched(match_type, session_id, touches):
    result = run(touches, match_type=match_type, session_id=session_id)
    assert result == Attribution()
    assert attribution_json(result) == {
        "first_touch": None,
        "last_touch": None,
        "days_to_convert": None,
        "click_ids": {},
    }


@pytest.mark.parametrize("match_type", ["session", "email", "phone"])
def test_matched_without_eligible_touches(match_type):
    result = run([OLD_TIKTOK, LATE_BING], match_type=match_type)
    assert result == Attribution(match_type=match_type, session_id=SESSION)


@pytest.mark.parametrize("match_type", ["email", "phone"])
def test_match_type_kept(match_type):
    assert run([GOOGLE], match_type=match_type).match_type == match_type


def test_offsets_compare_as_instants():
    prague = timezone(timedelta(hours=1))
    converted = datetime(2025, 3, 12, 10, 0, tzinfo=prague)  # 09:00 UTC = DAY_3
    result = run([GOOGLE, FACEBOOK], converted_at=converted)
    assert result.days_to_convert == 2
    assert attribution_json(result)["first_touch"]["at"] == "2025-03-10T09:00:00Z"


def test_touch_list_capped_keeping_first_and_latest():
    touches = [touch(DAY_3 - timedelta(hours=i), "google", "cpc", "Paid Search") for i in range(1, 400)]
    result = run(touches)
    earliest = min(touches, key=lambda t: t.at)
    assert len(result.touches) == MAX_TOUCHES
    assert result.touches[0] == result.first_touch == earliest
    assert result.touches[-1] == result.last_touch == touches[0]
    assert list(result.touches[1:]) == sorted(touches, key=lambda t: t.at)[-(MAX_TOUCHES - 1) :]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"match_type": "cookie"}, id="unknown-match-type"),
        pytest.param({"lookback_days": -1}, id="negative-lookback"),
        pytest.param({"converted_at": datetime(2025, 3, 12, 9, 0)}, id="naive-time"),
    ],
)
def test_attribute_rejects_programming_errors(kwargs):
    with pytest.raises(ValueError):
        run([GOOGLE], **kwargs)


# -- choose_session ------------------------------------------------------------------------------------------------

A, B, C = "a", "b", "c"


@pytest.mark.parametrize(
    "candidates, expected",
    [
        pytest.param([], None, id="none"),
        pytest.param([(A, DAY_1)], A, id="one"),
        pytest.param([(A, DAY_1), (B, DAY_2)], B, id="latest-wins"),
        pytest.param([(B, DAY_2), (A, DAY_1)], B, id="order-does-not-matter"),
        pytest.param([(A, None), (B, DAY_1)], B, id="session-without-touch-skipped"),
        pytest.param([(A, None), (B, None)], None, id="no-touch-before-conversion"),
        pytest.param([(A, DAY_2), (B, DAY_2), (C, DAY_1)], A, id="tie-goes-to-first"),
        pytest.param([(UUID(SESSION), DAY_1)], UUID(SESSION), id="uuid-ids"),
    ],
)
def test_choose_session(candidates, expected):
    assert choose_session(candidates) == expected


# -- storage record ------------------------------------------------------------------------------------------------


def test_record_is_json_and_round_trips():
    result = run([GOOGLE, FACEBOOK])
    record = attribution_record(result)
    assert json.loads(json.dumps(record)) == record
    assert record["v"] == 1
    assert record["match_type"] == "session" and record["session_id"] == SESSION
    assert record["days_to_convert"] == 2
    assert record["first_touch_index"] == 0 and record["last_touch_index"] == 1
    assert record["touches"][1] == {
        "at": "2025-03-11T09:00:00Z",
        "source": "facebook",
        "medium": "social",
        "campaign": "retargeting",
        "term": None,
        "content": None,
        "utm_id": None,
        "channel": "Organic Social",
        "referrer_domain": "facebook.com",
        "referrer_url": "https://facebook.com/",
        "landing_path": "/sale",
        "click_ids": {"fbclid": "xyz789"},
    }
    assert attribution_from_record(record) == result


@pytest.mark.parametrize(
    "attribution",
    [
        pytest.param(Attribution(), id="unmatched"),
        pytest.param(Attribution(match_type="email", session_id=SESSION), id="matched-no-touches"),
    ],
)
def test_record_round_trips_without_touches(attribution):
    record = attribution_record(attribution)
    assert record["first_touch"] is None and record["touches"] == []
    assert attribution_from_record(json.loads(json.dumps(record))) == attribution


def test_record_session_id_as_text():
    result = run([GOOGLE], session_id=UUID(SESSION))
    assert attribution_record(result)["session_id"] == SESSION


def test_record_round_trips_when_key_order_is_lost():
    """jsonb keeps object keys in its own order; reading back restores the stored click-id order."""
    result = run([GOOGLE, FACEBOOK])
    record = attribution_record(result)
    record["click_ids"] = dict(reversed(record["click_ids"].items()))
    assert attribution_from_record(record) == result
