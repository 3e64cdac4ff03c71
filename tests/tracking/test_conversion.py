"""Lead and order validation: tables of bodies and the ConversionInput they make, or the field the error names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from halo_proxy.tracking.conversion import (
    InputError,
    form_redirect,
    parse_json_object,
    parse_lead,
    parse_money,
    parse_order,
)
from halo_proxy.tracking.models import ConversionInput

NOW = datetime(2025, 3, 12, 9, 0, tzinfo=UTC)
SESSION = "3f2b8c1e-6a4d-4b8e-9a77-0c1d2e3f4a5b"


def lead(data, source="api", **kwargs):
    kwargs.setdefault("default_region", "CZ")
    kwargs.setdefault("default_currency", "CZK")
    return parse_lead(data, source=source, **kwargs)


def order(data, **kwargs):
    kwargs.setdefault("default_region", "CZ")
    kwargs.setdefault("default_currency", "CZK")
    kwargs.setdefault("now", NOW)
    return parse_order(data, **kwargs)


# -- the seed lead and valid leads -----------------------------------------------------------------------------------


def test_seed_lead():
    result = lead({"email": "user@example.com", "session_id": SESSION, "form_type": "contact"})
    assert result == ConversionInput(
        kind="lead", source="api", email="user@example.com", session_ref=SESSION, form_type="contact"
    )


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(
            {"email": " Alice@Example.COM "},
            {"email": "alice@example.com"},
            id="email-normalised",
        ),
        pytest.param({"phone": "601 234 567"}, {"phone": "+420601234567"}, id="phone-tenant-region"),
        pytest.param(
            {"phone": "0911 123 456", "country": "sk"},
            {"phone": "+421911123456", "country": "SK"},
            id="phone-region-from-country",
        ),
        pytest.param({"session_id": f"  {SESSION} "}, {"session_ref": SESSION}, id="session-trimmed"),
        pytest.param(
            {"email": "a@b.cz", "value": 1500, "currency": "eur"},
            {"email": "a@b.cz", "value": "1500", "currency": "EUR"},
            id="value-and-currency-uppercased",
        ),
        pytest.param(
            {"email": "a@b.cz", "value": 12.5},
            {"email": "a@b.cz", "value": "12.5", "currency": "CZK"},
            id="value-gets-tenant-currency",
        ),
        pytest.param(
            {"email": "a@b.cz", "value": None, "currency": None},
            {"email": "a@b.cz"},
            id="nulls-are-absent",
        ),
        pytest.param(
            {"email": "a@b.cz", "phone": "", "name": "   ", "message": ""},
            {"email": "a@b.cz"},
            id="empty-strings-are-absent",
        ),
        pytest.param(
            {"email": "a@b.cz", "event_id": 12345},
            {"email": "a@b.cz", "external_id": "12345"},
            id="event-id-number",
        ),
        pytest.param(
            {"email": "a@b.cz", "event_id": " evt-1 "},
            {"email": "a@b.cz", "external_id": "evt-1"},
            id="event-id-string",
        ),
        pytest.param(
            {"email": "a@b.cz", "event_id": "e" * 255},
            {"email": "a@b.cz", "external_id": "e" * 255},
            id="event-id-255",
        ),
        pytest.param(
            {"email": "a@b.cz", "consent_marketing": False},
            {"email": "a@b.cz", "consent_marketing": False},
            id="consent-false",
        ),
        pytest.param(
            {"email": "a@b.cz", "name": "  Jana\tNováková "},
            {"email": "a@b.cz", "name": "Jana Nováková"},
            id="name-control-chars-to-space",
        ),
        pytest.param(
            {"email": "a@b.cz", "name": "x" * 250},
            {"email": "a@b.cz", "name": "x" * 200},
            id="name-cut-to-200",
        ),
        pytest.param(
            {"email": "a@b.cz", "message": "Hello,\r\nI need a quote.\x00\x07"},
            {"email": "a@b.cz", "message": "Hello,\nI need a quote."},
            id="message-keeps-line-breaks",
        ),
        pytest.param(
            {"email": "a@b.cz", "message": "m" * 6000},
            {"email": "a@b.cz", "message": "m" * 5000},
            id="message-cut-to-5000",
        ),
        pytest.param(
            {"email": "a@b.cz", "form_type": "f" * 150},
            {"email": "a@b.cz", "form_type": "f" * 100},
            id="form-type-cut-to-100",
        ),
        pytest.param(
            {"email": "a@b.cz", "first_name": "Jana", "last_name": "Nováková"},
            {"email": "a@b.cz", "first_name": "Jana", "last_name": "Nováková", "name": "Jana Nováková"},
            id="name-from-first-and-last",
        ),
        pytest.param(
            {
                "email": "a@b.cz",
                "fields": {"company": "Acme", "budget": 5000, "tags": ["a", "b"], "x": {"y": {"z": 1}}},
            },
            {
                "email": "a@b.cz",
                "fields": {"company": "Acme", "budget": 5000, "tags": ["a", "b"], "x": {"y": {"z": 1}}},
            },
            id="fields-kept-as-is",
        ),
        pytest.param(
            {
                "email": "a@b.cz",
                "city": "Brno",
                "region": "JM",
                "postal_code": "602 00",
                "event_source_url": "https://acme.example/contact?x=1",
                "ga_client_id": "1234567890.1700000000",
            },
            {
                "email": "a@b.cz",
                "city": "Brno",
                "region": "JM",
                "postal_code": "602 00",
                "event_source_url": "https://acme.example/contact?x=1",
                "ga_client_id": "1234567890.1700000000",
            },
            id="matching-extras",
        ),
    ],
)
def test_valid_json_lead(data, expected):
    assert lead(data) == ConversionInput(kind="lead", source="api", **expected)


def test_session_known_from_cookie_satisfies_requirement():
    assert lead({"form_type": "contact"}, source="form", session_known=True) == ConversionInput(
        kind="lead", source="form", form_type="contact"
    )


# -- invalid leads ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, code, field",
    [
        pytest.param({}, "missing_field", None, id="nothing"),
        pytest.param({"form_type": "contact", "name": "Jana"}, "missing_field", None, id="no-identifier"),
        pytest.param({"email": "", "phone": " ", "session_id": None}, "missing_field", None, id="all-empty"),
        pytest.param({"email": "not-an-email"}, "invalid_field", "email", id="bad-email"),
        pytest.param({"email": 42}, "invalid_field", "email", id="email-not-string"),
        pytest.param({"phone": "12"}, "invalid_field", "phone", id="bad-phone"),
        pytest.param({"phone": 601234567}, "invalid_field", "phone", id="phone-number-type"),
        pytest.param({"session_id": ["x"]}, "invalid_field", "session_id", id="session-list"),
        pytest.param({"session_id": "s" * 513}, "invalid_field", "session_id", id="session-too-long"),
        pytest.param({"session_id": "abc\ndef"}, "invalid_field", "session_id", id="session-control-char"),
        pytest.param({"email": "a@b.cz", "value": "abc"}, "invalid_field", "value", id="value-text"),
        pytest.param({"email": "a@b.cz", "value": True}, "invalid_field", "value", id="value-bool"),
        pytest.param(
            {"email": "a@b.cz", "value": {"amount": 1}}, "invalid_field", "value", id="value-object"
        ),
        pytest.param(
            {"email": "a@b.cz", "currency": "EURO"}, "invalid_field", "currency", id="currency-4-letters"
        ),
        pytest.param({"email": "a@b.cz", "currency": "€"}, "invalid_field", "currency", id="currency-symbol"),
        pytest.param({"email": "a@b.cz", "currency": 978}, "invalid_field", "currency", id="currency-number"),
        pytest.param(
            {"email": "a@b.cz", "event_id": "e" * 256}, "invalid_field", "event_id", id="event-id-256"
        ),
        pytest.param({"email": "a@b.cz", "event_id": 1.5}, "invalid_field", "event_id", id="event-id-float"),
        pytest.param({"email": "a@b.cz", "event_id": True}, "invalid_field", "event_id", id="event-id-bool"),
        pytest.param(
            {"email": "a@b.cz", "consent_marketing": "yes"},
            "invalid_field",
            "consent_marketing",
            id="consent-string-in-json",
        ),
        pytest.param(
            {"email": "a@b.cz", "consent_marketing": 1},
            "invalid_field",
            "consent_marketing",
            id="consent-int",
        ),
        pytest.param({"email": "a@b.cz", "name": 5}, "invalid_field", "name", id="name-number"),
        pytest.param({"email": "a@b.cz", "message": ["hi"]}, "invalid_field", "message", id="message-list"),
        pytest.param(
            {"email": "a@b.cz", "form_type": {"a": 1}}, "invalid_field", "form_type", id="form-type-object"
        ),
        pytest.param({"email": "a@b.cz", "fields": ["a"]}, "invalid_field", "fields", id="fields-list"),
        pytest.param({"email": "a@b.cz", "fields": "a=b"}, "invalid_field", "fields", id="fields-string"),
        pytest.param(
            {"email": "a@b.cz", "fields": {f"k{i}": i for i in range(51)}},
            "invalid_field",
            "fields",
            id="fields-51-keys",
        ),
        pytest.param(
            {"email": "a@b.cz", "fields": {"k": "v" * 2001}}, "invalid_field", "fields", id="fields-long-text"
        ),
        pytest.param(
            {"email": "a@b.cz", "fields": {"a": {"b": {"c": {"d": 1}}}}},
            "invalid_field",
            "fields",
            id="fields-depth-4",
        ),
        pytest.param(
            {"email": "a@b.cz", "fields": {"a": [[["x"]]]}},
            "invalid_field",
            "fields",
            id="fields-list-depth-4",
        ),
        pytest.param(
            {"email": "a@b.cz", "fields": {"k": float("nan")}}, "invalid_field", "fields", id="fields-nan"
        ),
        pytest.param(
            {"email": "a@b.cz", "fields": {"k": "a\x00b"}}, "invalid_field", "fields", id="fields-nul"
        ),
        pytest.param(
            {"email": "a@b.cz", "fields": {"k": 2**70}}, "invalid_field", "fields", id="fields-huge-int"
        ),
        pytest.param({"email": "a@b.cz", "name": "\ud800"}, "invalid_field", "name", id="lone-surrogate"),
        pytest.param(
            {"email": "a@b.cz", "country": "CZE"}, "invalid_field", "country", id="country-3-letters"
        ),
        pytest.param(
            {"email": "a@b.cz", "event_source_url": "javascript:alert(1)"},
            "invalid_field",
            "event_source_url",
            id="url-scheme",
        ),
        pytest.param({"email": "a@b.cz", "emial": "x"}, "unknown_field", "emial", id="unknown-key"),
        pytest.param(
            {"email": "a@b.cz", "_redirect": "/thanks"},
            "unknown_field",
            "_redirect",
            id="form-helper-in-json",
        ),
        pytest.param(
            {"email": "a@b.cz", "halo_session_id": SESSION},
            "unknown_field",
            "halo_session_id",
            id="form-session-in-json",
        ),
    ],
)
def test_invalid_json_lead(data, code, field):
    with pytest.raises(InputError) as err:
        lead(data)
    assert (err.value.code, err.value.field) == (code, field)
    assert err.value.status == 422
    body = err.value.to_json()
    assert body["error"] == code and body["detail"]
    assert body.get("field") == field


def test_missing_identifier_names_the_fields():
    with pytest.raises(InputError) as err:
        lead({"form_type": "contact"})
    assert "email" in err.value.detail and "phone" in err.value.detail and "session_id" in err.value.detail
    with pytest.raises(InputError) as err:
        lead({"form_type": "contact"}, source="form")
    assert "halo_session_id" in err.value.detail


def test_type_error_says_what_is_expected():
    with pytest.raises(InputError, match="value must be a number"):
        lead({"email": "a@b.cz", "value": True})


def test_error_detail_never_repeats_the_value():
    with pytest.raises(InputError) as err:
        lead({"email": "secret-person@"})
    assert "secret-person" not in err.value.detail


def test_body_must_be_an_object():
    with pytest.raises(InputError) as err:
        lead(["email", "a@b.cz"])
    assert err.value.code == "invalid_field"


# -- form posts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(
            {"email": "user@example.com", "halo_session_id": SESSION, "form_type": "contact"},
            {"email": "user@example.com", "session_ref": SESSION, "form_type": "contact"},
            id="seed-form",
        ),
        pytest.param(
            {"email": "a@b.cz", "csrf_token": "x", "website": "", "company": "Acme", "_redirect": "/thanks"},
            {"email": "a@b.cz"},
            id="unknown-fields-ignored",
        ),
        pytest.param(
            {"session_id": "s1", "halo_session_id": "s2"}, {"session_ref": "s2"}, id="halo-session-id-wins"
        ),
        pytest.param({"session_id": "s1"}, {"session_ref": "s1"}, id="session-id-in-form"),
        pytest.param(
            {"email": "a@b.cz", "value": " 12.50 "},
            {"email": "a@b.cz", "value": "12.5", "currency": "CZK"},
            id="value-string",
        ),
        pytest.param({"email": "a@b.cz", "value": ""}, {"email": "a@b.cz"}, id="value-empty"),
        pytest.param({"email": "a@b.cz", "fields": "kept-out"}, {"email": "a@b.cz"}, id="fields-key-ignored"),
    ]
    + [
        pytest.param(
            {"email": "a@b.cz", "consent_marketing": word},
            {"email": "a@b.cz", "consent_marketing": True},
            id=f"consent-{word}",
        )
        for word in ("on", "true", "1", "yes", "ON", " Yes ")
    ]
    + [
        pytest.param(
            {"email": "a@b.cz", "consent_marketing": word},
            {"email": "a@b.cz", "consent_marketing": False},
            id=f"consent-{word}",
        )
        for word in ("off", "false", "0", "no", "FALSE")
    ]
    + [pytest.param({"email": "a@b.cz", "consent_marketing": ""}, {"email": "a@b.cz"}, id="consent-empty")],
)
def test_valid_form_lead(data, expected):
    assert lead(data, source="form") == ConversionInput(kind="lead", source="form", **expected)


@pytest.mark.parametrize(
    "data, field",
    [
        pytest.param(
            {"email": "a@b.cz", "consent_marketing": "maybe"}, "consent_marketing", id="consent-word"
        ),
        pytest.param({"email": "a@b.cz", "value": "12,50"}, "value", id="value-decimal-comma"),
        pytest.param({"email": "a@b.cz", "phone": "abc"}, "phone", id="bad-phone"),
        pytest.param({"email": "a@b.cz", "message": object()}, "message", id="file-upload-as-message"),
        pytest.param({"halo_session_id": "x" * 600}, "halo_session_id", id="session-too-long"),
    ],
)
def test_invalid_form_lead(data, field):
    with pytest.raises(InputError) as err:
        lead(data, source="form")
    assert err.value.field == field


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(
            {"_redirect": " https://acme.localhost/thanks "}, "https://acme.localhost/thanks", id="url"
        ),
        pytest.param({"_redirect": "/thanks"}, "/thanks", id="path"),
        pytest.param({}, None, id="absent"),
        pytest.param({"_redirect": ""}, None, id="empty"),
        pytest.param({"_redirect": "/a\r\nSet-Cookie: x"}, None, id="header-injection"),
        pytest.param({"_redirect": "/\\evil.example"}, None, id="backslash"),
    ],
)
def test_form_redirect(data, expected):
    assert form_redirect(data) == expected


def test_unknown_source_is_a_programming_error():
    with pytest.raises(ValueError):
        lead({"email": "a@b.cz"}, source="email")


# -- phones in several formats with the tenant's region ---------------------------------------------------------


@pytest.mark.parametrize(
    "phone, region, expected",
    [
        pytest.param("601 234 567", "CZ", "+420601234567", id="cz-national-spaces"),
        pytest.param("601234567", "CZ", "+420601234567", id="cz-national"),
        pytest.param("+420 601 234 567", "CZ", "+420601234567", id="cz-international"),
        pytest.param("00420601234567", "CZ", "+420601234567", id="cz-00-prefix"),
        pytest.param("(415) 555-2671", "US", "+14155552671", id="us-national"),
        pytest.param("+1 415-555-2671", "CZ", "+14155552671", id="us-international-in-cz-tenant"),
        pytest.param("020 7946 0958", "GB", "+442079460958", id="gb-national"),
        pytest.param("+44 20 7946 0958", None, "+442079460958", id="international-without-region"),
    ],
)
def test_phone_formats(phone, region, expected):
    assert lead({"phone": phone}, default_region=region).phone == expected


def test_national_phone_without_region_names_the_field():
    with pytest.raises(InputError) as err:
        lead({"phone": "601 234 567"}, default_region=None)
    assert err.value.field == "phone"


# -- money -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("12.50", "12.5", id="string-12.50"),
        pytest.param(12.5, "12.5", id="float-12.5"),
        pytest.param(1e3, "1000", id="float-1e3"),
        pytest.param("1e3", "1000", id="string-1e3"),
        pytest.param(0, "0", id="zero"),
        pytest.param("0.00", "0", id="zero-with-places"),
        pytest.param("-0", "0", id="negative-zero"),
        pytest.param(1500, "1500", id="int"),
        pytest.param(19.99, "19.99", id="float-19.99"),
        pytest.param(0.1, "0.1", id="float-0.1"),
        pytest.param("0.0001", "0.0001", id="four-places"),
        pytest.param("12.345000", "12.345", id="trailing-zeros-dropped"),
        pytest.param("+5", "5", id="plus-sign"),
        pytest.param(".5", "0.5", id="leading-dot"),
        pytest.param(1_000_000_000_000, "1000000000000", id="max-int"),
        pytest.param("1000000000000.0000", "1000000000000", id="max-string"),
        pytest.param("999999999999.9999", "999999999999.9999", id="just-under-max-exact"),
        pytest.param(None, None, id="absent"),
        pytest.param("  ", None, id="blank"),
    ],
)
def test_money_valid(value, expected):
    assert parse_money(value) == expected


@pytest.mark.parametrize(
    "value, detail",
    [
        pytest.param(-1, "negative", id="minus-one"),
        pytest.param("-0.01", "negative", id="negative-string"),
        pytest.param(float("nan"), "finite", id="nan-float"),
        pytest.param(float("inf"), "finite", id="inf-float"),
        pytest.param("NaN", "number", id="nan-string"),
        pytest.param("Infinity", "number", id="infinity-string"),
        pytest.param(True, "must be a number", id="true"),
        pytest.param(False, "must be a number", id="false"),
        pytest.param("abc", "number", id="abc"),
        pytest.param("12,50", "number", id="decimal-comma"),
        pytest.param("1 000", "number", id="space-thousands"),
        pytest.param("0x10", "number", id="hex"),
        pytest.param("12.5 CZK", "number", id="with-currency"),
        pytest.param(1e300, "exceed", id="huge-float"),
        pytest.param(10**400, "exceed", id="huge-int"),
        pytest.param("1e999999999", "exceed", id="huge-exponent"),
        pytest.param("1000000000000.0001", "exceed", id="just-over-max"),
        pytest.param("1" * 65, "number", id="overlong-string"),
        pytest.param("0.00001", "decimal places", id="five-places"),
        pytest.param(0.30000000000000004, "decimal places", id="float-noise"),
        pytest.param("1e-9", "decimal places", id="tiny"),
        pytest.param("1.00000000000000000000000000001", "decimal places", id="beyond-default-precision"),
        pytest.param("1e-2000000", "decimal places", id="tiny-beyond-exact-precision"),
        pytest.param([12], "must be a number", id="list"),
    ],
)
def test_money_invalid(value, detail):
    with pytest.raises(InputError) as err:
        parse_money(value)
    assert err.value.field == "value"
    assert detail in err.value.detail


def test_fields_none_and_copy():
    assert parse_json_object(None) is None
    source = {"a": 1}
    kept = parse_json_object(source)
    assert kept == source and kept is not source


# -- orders ----------------------------------------------------------------------------------------------------------

ITEMS = [
    {"sku": "SHOE-RED-42", "name": "Red shoe", "quantity": 2, "price": "1250.00"},
    {"sku": "SOCK", "name": "Socks", "quantity": 1, "price": 149, "options": {"size": "M"}},
]


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(
            {"order_id": "ORD-1001", "value": "2649.00"},
            {"external_id": "ORD-1001", "value": "2649", "currency": "CZK"},
            id="minimal",
        ),
        pytest.param(
            {"order_id": 1001, "value": 99.9, "currency": "usd"},
            {"external_id": "1001", "value": "99.9", "currency": "USD"},
            id="integer-order-id",
        ),
        pytest.param(
            {"order_id": "A", "value": 0},
            {"external_id": "A", "value": "0", "currency": "CZK"},
            id="free-order",
        ),
        pytest.param(
            {
                "order_id": "ORD-1002",
                "value": 2649,
                "email": "Buyer@Example.com",
                "phone": "+420 601 234 567",
                "session_id": SESSION,
                "name": "Jana Nováková",
                "consent_marketing": True,
                "items": ITEMS,
                "occurred_at": "2025-03-12T08:55:00+01:00",
            },
            {
                "external_id": "ORD-1002",
                "value": "2649",
                "currency": "CZK",
                "email": "buyer@example.com",
                "phone": "+420601234567",
                "session_ref": SESSION,
                "name": "Jana Nováková",
                "consent_marketing": True,
                "items": ITEMS,
                "occurred_at": datetime(2025, 3, 12, 7, 55, tzinfo=UTC),
            },
            id="full",
        ),
        pytest.param(
            {"order_id": "B", "value": 1, "created_at": "2025-03-12T09:10:00Z"},
            {"external_id": "B", "value": "1", "currency": "CZK", "occurred_at": NOW + timedelta(minutes=10)},
            id="created-at-alias-within-skew",
        ),
        pytest.param(
            {"order_id": "C", "value": 1, "occurred_at": "2024-01-01T00:00:00Z"},
            {
                "external_id": "C",
                "value": "1",
                "currency": "CZK",
                "occurred_at": datetime(2024, 1, 1, tzinfo=UTC),
            },
            id="past-time",
        ),
        pytest.param(
            {"order_id": "D", "value": 1, "items": [{"n": i} for i in range(150)]},
            {"external_id": "D", "value": "1", "currency": "CZK", "items": [{"n": i} for i in range(100)]},
            id="items-capped-at-100",
        ),
        pytest.param(
            {"order_id": "E", "value": 1, "items": []},
            {"external_id": "E", "value": "1", "currency": "CZK", "items": []},
            id="items-empty",
        ),
    ],
)
def test_valid_order(data, expected):
    assert order(data) == ConversionInput(kind="order", source="api", **expected)


@pytest.mark.parametrize(
    "data, code, field",
    [
        pytest.param({"value": 10}, "missing_field", "order_id", id="no-order-id"),
        pytest.param({"order_id": "", "value": 10}, "missing_field", "order_id", id="empty-order-id"),
        pytest.param({"order_id": "A"}, "missing_field", "value", id="no-value"),
        pytest.param({"order_id": "A", "value": None}, "missing_field", "value", id="null-value"),
        pytest.param(
            {"order_id": "A" * 256, "value": 1}, "invalid_field", "order_id", id="order-id-too-long"
        ),
        pytest.param({"order_id": 1.5, "value": 1}, "invalid_field", "order_id", id="order-id-float"),
        pytest.param({"order_id": {"id": 1}, "value": 1}, "invalid_field", "order_id", id="order-id-object"),
        pytest.param({"order_id": "A", "value": -1}, "invalid_field", "value", id="negative-value"),
        pytest.param({"order_id": "A", "value": "abc"}, "invalid_field", "value", id="text-value"),
        pytest.param(
            {"order_id": "A", "value": 1, "currency": "US"}, "invalid_field", "currency", id="bad-currency"
        ),
        pytest.param({"order_id": "A", "value": 1, "email": "x@"}, "invalid_field", "email", id="bad-email"),
        pytest.param(
            {"order_id": "A", "value": 1, "phone": "+1 2"}, "invalid_field", "phone", id="bad-phone"
        ),
        pytest.param(
            {"order_id": "A", "value": 1, "items": {"sku": "x"}}, "invalid_field", "items", id="items-object"
        ),
        pytest.param(
            {"order_id": "A", "value": 1, "items": ["x"]}, "invalid_field", "items", id="item-not-object"
        ),
        pytest.param(
            {"order_id": "A", "value": 1, "items": [{"a": {"b": {"c": {}}}}]},
            "invalid_field",
            "items",
            id="item-too-deep",
        ),
        pytest.param(
            {"order_id": "A", "value": 1, "occurred_at": "yesterday"},
            "invalid_field",
            "occurred_at",
            id="time-text",
        ),
        pytest.param(
            {"order_id": "A", "value": 1, "occurred_at": "2025-03-12T09:00:00"},
            "invalid_field",
            "occurred_at",
            id="time-naive",
        ),
        pytest.param(
            {"order_id": "A", "value": 1, "occurred_at": 1741770000},
            "invalid_field",
            "occurred_at",
            id="time-number",
        ),
        pytest.param(
            {"order_id": "A", "value": 1, "occurred_at": "2025-03-12T10:00:00Z"},
            "invalid_field",
            "occurred_at",
            id="time-future",
        ),
        pytest.param(
            {"order_id": "A", "value": 1, "created_at": "2030-01-01T00:00:00Z"},
            "invalid_field",
            "created_at",
            id="created-at-future",
        ),
        pytest.param(
            {"order_id": "A", "value": 1, "event_id": "x"},
            "unknown_field",
            "event_id",
            id="lead-key-in-order",
        ),
        pytest.param({"order_id": "A", "value": 1, "total": 5}, "unknown_field", "total", id="unknown-key"),
        pytest.param(
            {"order_id": "A", "value": 1, "consent_marketing": "on"},
            "invalid_field",
            "consent_marketing",
            id="consent-word",
        ),
    ],
)
def test_invalid_order(data, code, field):
    with pytest.raises(InputError) as err:
        order(data)
    assert (err.value.code, err.value.field) == (code, field)
