import pytest

from halo_proxy.tracking.campaign import (
    CLICK_ID_MAX_LENGTH,
    UTM_MAX_LENGTH,
    Campaign,
    has_campaign_data,
    parse_campaign,
)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({}, Campaign(), id="empty"),
        pytest.param({"page": "2", "q": "shoes"}, Campaign(), id="unrelated"),
        pytest.param(
            {"utm_source": "google", "utm_medium": "cpc", "gclid": "abc123"},
            Campaign(source="google", medium="cpc", click_ids=(("gclid", "abc123"),)),
            id="seed-day-1",
        ),
        pytest.param(
            {"utm_source": "facebook", "utm_medium": "social", "fbclid": "xyz789"},
            Campaign(source="facebook", medium="social", click_ids=(("fbclid", "xyz789"),)),
            id="seed-day-2",
        ),
        pytest.param(
            {
                "utm_source": " Newsletter ",
                "utm_medium": "email",
                "utm_campaign": "Spring Sale",
                "utm_term": "running shoes",
                "utm_content": "hero-button",
                "utm_id": "cmp_42",
            },
            Campaign("Newsletter", "email", "Spring Sale", "running shoes", "hero-button", "cmp_42"),
            id="all-utms-trimmed-case-kept",
        ),
        pytest.param({"utm_source": "   ", "utm_medium": ""}, Campaign(), id="blank-values"),
        pytest.param({"utm_source": "a\x00b\nc"}, Campaign(source="abc"), id="control-characters-removed"),
        pytest.param({"utm_campaign": "x" * 500}, Campaign(campaign="x" * UTM_MAX_LENGTH), id="utm-capped"),
        pytest.param({"UTM_SOURCE": "google"}, Campaign(), id="names-are-lowercase"),
        pytest.param(
            {"ScCid": "sc-1", "sccid": "ignored", "gclid": "Cj0KCQ-AbC_123", "msclkid": "f00d"},
            Campaign(click_ids=(("gclid", "Cj0KCQ-AbC_123"), ("msclkid", "f00d"), ("ScCid", "sc-1"))),
            id="click-ids-in-canonical-order-verbatim",
        ),
        pytest.param(
            {n: f"v-{n}" for n in (
                "gclid", "gbraid", "wbraid", "dclid", "fbclid", "ttclid", "msclkid", "li_fat_id", "twclid", "ScCid",
                "epik", "rdt_cid",
            )},
            Campaign(click_ids=tuple((n, f"v-{n}") for n in (
                "gclid", "gbraid", "wbraid", "dclid", "fbclid", "ttclid", "msclkid", "li_fat_id", "twclid", "ScCid",
                "epik", "rdt_cid",
            ))),
            id="every-click-id",
        ),
        pytest.param({"gclid": " abc "}, Campaign(click_ids=(("gclid", "abc"),)), id="click-id-trimmed"),
        pytest.param({"gclid": "g" * (CLICK_ID_MAX_LENGTH + 1)}, Campaign(), id="click-id-too-long-dropped"),
        pytest.param({"fbclid": "ab\ncd"}, Campaign(), id="click-id-with-control-dropped"),
        pytest.param({"fbclid": "abc; Domain=example.com; Path=/admin"}, Campaign(),
                     id="click-id-that-would-add-cookie-attributes-dropped"),
        pytest.param({"fbclid": "€uro"}, Campaign(), id="click-id-not-ascii-dropped"),
        pytest.param({"ttclid": "E.C.P.CscBn-_x/y+z="}, Campaign(click_ids=(("ttclid", "E.C.P.CscBn-_x/y+z="),)),
                     id="dotted-base64-click-id-kept"),
        pytest.param({"fbclid": ""}, Campaign(), id="click-id-empty"),
    ],
)
def test_parse_campaign(query, expected):
    assert parse_campaign(query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({}, False, id="empty"),
        pytest.param({"page": "1"}, False, id="unrelated"),
        pytest.param({"utm_source": ""}, False, id="blank-utm"),
        pytest.param({"utm_source": "x"}, True, id="utm"),
        pytest.param({"utm_campaign": "summer"}, True, id="campaign-only"),
        pytest.param({"wbraid": "w1"}, True, id="click-id"),
        pytest.param({"utm_foo": "x"}, False, id="unknown-utm-name"),
    ],
)
def test_has_campaign_data(query, expected):
    assert has_campaign_data(query) is expected
    assert bool(parse_campaign(query)) is expected


def test_multidict_query_takes_first_value():
    from multidict import MultiDict

    query = MultiDict([("utm_source", "first"), ("utm_source", "second")])
    assert parse_campaign(query).source == "first"
