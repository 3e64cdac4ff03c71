"""Shopify and Stripe order webhooks: fixtures shaped like the platforms' documented payloads, and tables of
variations with the ConversionInput (or the ignore reason, or the error's field) each makes."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from halo_proxy.tracking.adapters import (
    AdapterResult,
    minor_unit_exponent,
    parse_shopify_order,
    parse_stripe_event,
)
from halo_proxy.tracking.conversion import InputError
from halo_proxy.tracking.models import ConversionInput

NOW = datetime(2025, 3, 12, 9, 0, tzinfo=UTC)
SESSION = "3f2b8c1e-6a4d-4b8e-9a77-0c1d2e3f4a5b"

# Shopify's documented orders/create example (the "send test notification" order), trimmed of fields HaloTrack
# does not read, with its addresses and line item as published.
SHOPIFY_ORDER = {
    "id": 820982911946154508,
    "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
    "app_id": None,
    "browser_ip": None,
    "buyer_accepts_marketing": True,
    "cancel_reason": "customer",
    "cancelled_at": "2019-06-04T13:53:06-04:00",
    "cart_token": None,
    "checkout_id": None,
    "checkout_token": None,
    "confirmed": False,
    "contact_email": "jon@doe.ca",
    "created_at": "2019-06-04T13:53:06-04:00",
    "currency": "USD",
    "current_total_price": "403.00",
    "customer_locale": "en",
    "email": "jon@doe.ca",
    "financial_status": "voided",
    "fulfillment_status": "pending",
    "landing_site": None,
    "name": "#9999",
    "note": None,
    "note_attributes": [],
    "number": 234,
    "order_number": 1234,
    "order_status_url": "https://apple.myshopify.com/690933842/orders/123456abcd/authenticate?key=abcdefg",
    "phone": None,
    "presentment_currency": "USD",
    "processed_at": None,
    "referring_site": None,
    "source_name": "web",
    "subtotal_price": "393.00",
    "tags": "",
    "test": True,
    "token": "123456abcd",
    "total_discounts": "5.00",
    "total_line_items_price": "398.00",
    "total_price": "403.00",
    "total_tax": "0.00",
    "updated_at": "2019-06-04T13:53:06-04:00",
    "billing_address": {
        "first_name": "Steve",
        "address1": "123 Shipping Street",
        "phone": "555-555-SHIP",
        "city": "Shippington",
        "zip": "40003",
        "province": "Kentucky",
        "country": "United States",
        "last_name": "Shipper",
        "address2": None,
        "company": "Shipping Company",
        "latitude": None,
        "longitude": None,
        "name": "Steve Shipper",
        "country_code": "US",
        "province_code": "KY",
    },
    "customer": {
        "id": 115310627314723954,
        "email": "john@example.com",
        "accepts_marketing": False,
        "created_at": None,
        "updated_at": None,
        "first_name": "John",
        "last_name": "Smith",
        "state": "disabled",
        "note": None,
        "verified_email": True,
        "tags": "",
        "currency": "USD",
        "phone": None,
        "admin_graphql_api_id": "gid://shopify/Customer/115310627314723954",
    },
    "line_items": [
        {
            "id": 866550311766439020,
            "admin_graphql_api_id": "gid://shopify/LineItem/866550311766439020",
            "fulfillable_quantity": 1,
            "fulfillment_service": "manual",
            "gift_card": False,
            "grams": 567,
            "name": "IPod Nano - 8GB",
            "price": "199.00",
            "product_exists": True,
            "product_id": 632910392,
            "properties": [],
            "quantity": 1,
            "requires_shipping": True,
            "sku": "IPOD2008PINK",
            "taxable": True,
            "title": "IPod Nano - 8GB",
            "total_discount": "0.00",
            "variant_id": 808950810,
            "variant_title": None,
            "vendor": None,
        },
        {
            "id": 141249953214522974,
            "name": "IPod Nano - 8GB",
            "price": "199.00",
            "product_id": 632910392,
            "quantity": 1,
            "sku": "IPOD2008PINK",
            "title": "IPod Nano - 8GB",
            "variant_id": 808950810,
        },
    ],
    "shipping_address": {
        "first_name": "Steve",
        "address1": "123 Shipping Street",
        "phone": "555-555-SHIP",
        "city": "Shippington",
        "zip": "40003",
        "province": "Kentucky",
        "country": "United States",
        "last_name": "Shipper",
        "country_code": "US",
        "province_code": "KY",
    },
}

SHOPIFY_ITEM = {
    "id": "866550311766439020",
    "product_id": "632910392",
    "variant_id": "808950810",
    "sku": "IPOD2008PINK",
    "name": "IPod Nano - 8GB",
    "quantity": 1,
    "price": "199",
}

SHOPIFY_EXPECTED = ConversionInput(
    kind="order",
    source="shopify",
    external_id="820982911946154508",
    email="jon@doe.ca",
    phone=None,  # "555-555-SHIP" is no phone number: dropped, the order kept
    name="John Smith",
    first_name="John",
    last_name="Smith",
    value="403",
    currency="USD",
    session_ref=None,
    consent_marketing=True,
    fields={
        "order_name": "#9999",
        "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
        "financial_status": "voided",
        "test": True,
    },
    items=[SHOPIFY_ITEM, {**SHOPIFY_ITEM, "id": "141249953214522974"}],
    city="Shippington",
    region="KY",
    postal_code="40003",
    country="US",
    occurred_at=datetime(2019, 6, 4, 17, 53, 6, tzinfo=UTC),
)


def shopify(changes=None, *, drop=(), topic="orders/create", region="CZ", currency="CZK"):
    order = copy.deepcopy(SHOPIFY_ORDER)
    for path in drop:
        target = order
        *parents, last = path.split(".")
        for name in parents:
            target = target[name]
        del target[last]
    for path, value in (changes or {}).items():
        target = order
        *parents, last = path.split(".")
        for name in parents:
            target = target[name]
        target[last] = value
    return parse_shopify_order(order, topic=topic, default_region=region, default_currency=currency, now=NOW)


def test_shopify_documented_example():
    result = shopify()
    assert result == AdapterResult(conversion=SHOPIFY_EXPECTED, topic="orders/create")
    assert result.is_conversion


@pytest.mark.parametrize(
    "changes, drop, expected",
    [
        pytest.param(
            {
                "note_attributes": [
                    {"name": "gift", "value": "no"},
                    {"name": "halo_session_id", "value": SESSION},
                ]
            },
            (),
            {"session_ref": SESSION},
            id="session-from-note-attribute",
        ),
        pytest.param(
            {"attributes": {"halo_session_id": f" {SESSION} "}},
            (),
            {"session_ref": SESSION},
            id="session-from-attributes-object",
        ),
        pytest.param(
            {"attributes": [{"key": "halo_session_id", "value": SESSION}]},
            (),
            {"session_ref": SESSION},
            id="session-from-attributes-key-value",
        ),
        pytest.param(
            {
                "note_attributes": [{"name": "halo_session_id", "value": "from-note"}],
                "attributes": {"halo_session_id": "from-attributes"},
            },
            (),
            {"session_ref": "from-note"},
            id="note-attribute-wins",
        ),
        pytest.param(
            {"note_attributes": [{"name": "halo_session_id", "value": ""}]},
            (),
            {"session_ref": None},
            id="empty-session-attribute",
        ),
        pytest.param(
            {"note_attributes": "halo_session_id=x"},
            (),
            {"session_ref": None},
            id="malformed-note-attributes",
        ),
        pytest.param(
            {"phone": "+420 601 234 567"}, (), {"phone": "+420601234567"}, id="order-phone-international"
        ),
        pytest.param(
            {
                "customer.phone": "601 234 567",
                "billing_address.country_code": "CZ",
                "shipping_address.country_code": "CZ",
            },
            (),
            {"phone": "+420601234567", "country": "CZ"},
            id="customer-phone-read-in-billing-country",
        ),
        pytest.param(
            {"billing_address.phone": "(415) 555-2671"},
            (),
            {"phone": "+14155552671"},
            id="billing-phone-us-national-in-cz-tenant",
        ),
        pytest.param(
            {"billing_address.phone": "601 234 567", "billing_address.country_code": None},
            (),
            {"phone": "+420601234567", "country": None},
            id="billing-phone-tenant-region-fallback",
        ),
        pytest.param(
            {"email": None},
            (),
            {"email": "jon@doe.ca"},
            id="contact-email-fallback",
        ),
        pytest.param(
            {"email": None, "contact_email": None},
            (),
            {"email": "john@example.com"},
            id="customer-email-fallback",
        ),
        pytest.param(
            {"email": "not an email", "contact_email": None, "customer.email": None},
            (),
            {"email": None},
            id="invalid-email-dropped",
        ),
        pytest.param({"email": " Jon@DOE.ca "}, (), {"email": "jon@doe.ca"}, id="email-normalised"),
        pytest.param(
            {},
            ("customer",),
            {"name": "Steve Shipper", "first_name": "Steve", "last_name": "Shipper"},
            id="name-from-billing-address",
        ),
        pytest.param(
            {},
            ("billing_address",),
            {"city": "Shippington", "region": "KY", "postal_code": "40003", "country": "US"},
            id="address-falls-back-to-shipping",
        ),
        pytest.param(
            {"total_price": "1500", "currency": "JPY"},
            (),
            {"value": "1500", "currency": "JPY"},
            id="zero-decimal-jpy",
        ),
        pytest.param(
            {"total_price": "12.345", "currency": "KWD"},
            (),
            {"value": "12.345", "currency": "KWD"},
            id="three-decimal-kwd",
        ),
        pytest.param({"currency": None}, (), {"currency": "CZK"}, id="missing-currency-tenant-default"),
        pytest.param(
            {},
            ("id",),
            {"external_id": "820982911946154508"},
            id="id-from-graphql-gid",
        ),
        pytest.param(
            {
                "buyer_accepts_marketing": None,
                "customer.email_marketing_consent": {"state": "not_subscribed"},
            },
            (),
            {"consent_marketing": False},
            id="consent-from-customer-email-marketing",
        ),
        pytest.param(
            {"buyer_accepts_marketing": None, "customer.email_marketing_consent": {"state": ["subscribed"]}},
            (),
            {"consent_marketing": None},
            id="consent-state-not-a-string",
        ),
        pytest.param(
            {"created_at": "2031-01-01T00:00:00Z"}, (), {"occurred_at": None}, id="future-time-dropped"
        ),
        pytest.param({"created_at": "soon"}, (), {"occurred_at": None}, id="bad-time-dropped"),
        pytest.param({"line_items": None}, (), {"items": None}, id="no-line-items"),
        pytest.param(
            {"line_items": [{"id": i, "quantity": 1, "price": "1.00"} for i in range(120)]},
            (),
            {"items": [{"id": str(i), "quantity": 1, "price": "1"} for i in range(100)]},
            id="line-items-capped",
        ),
        pytest.param(
            {"line_items": [{"id": 1, "quantity": -1, "price": "free", "title": "Gift"}, "junk"]},
            (),
            {"items": [{"id": "1", "name": "Gift"}]},
            id="line-item-bad-values-dropped",
        ),
    ],
)
def test_shopify_variations(changes, drop, expected):
    result = shopify(changes, drop=drop)
    assert result.conversion == ConversionInput(**{**_fields(SHOPIFY_EXPECTED), **expected})


def _fields(conversion: ConversionInput) -> dict:
    return {name: getattr(conversion, name) for name in conversion.__slots__}


@pytest.mark.parametrize("topic", ["orders/create", "orders/paid", None])
def test_shopify_order_topics(topic):
    assert shopify(topic=topic).conversion.external_id == "820982911946154508"


@pytest.mark.parametrize(
    "topic", ["orders/updated", "orders/cancelled", "customers/create", "checkouts/create"]
)
def test_shopify_other_topics_ignored(topic):
    result = shopify(topic=topic)
    assert result.conversion is None and not result.is_conversion
    assert topic in result.ignored


@pytest.mark.parametrize(
    "changes, drop, code, field",
    [
        pytest.param({}, ("id", "admin_graphql_api_id"), "missing_field", "id", id="no-id"),
        pytest.param(
            {"id": None, "admin_graphql_api_id": "gid://shopify/Customer/1"},
            (),
            "missing_field",
            "id",
            id="gid-of-other-kind",
        ),
        pytest.param({}, ("total_price",), "missing_field", "total_price", id="no-total-price"),
        pytest.param({"total_price": "abc"}, (), "invalid_field", "total_price", id="total-price-text"),
        pytest.param({"total_price": "-5.00"}, (), "invalid_field", "total_price", id="total-price-negative"),
        pytest.param({"total_price": True}, (), "invalid_field", "total_price", id="total-price-bool"),
    ],
)
def test_shopify_invalid(changes, drop, code, field):
    with pytest.raises(InputError) as err:
        shopify(changes, drop=drop)
    assert (err.value.code, err.value.field) == (code, field)


@pytest.mark.parametrize("body", [[], "order", None, 42])
def test_shopify_body_not_an_object(body):
    with pytest.raises(InputError):
        parse_shopify_order(body, default_region="CZ", default_currency="CZK", now=NOW)


# -- Stripe ----------------------------------------------------------------------------------------------------------

# A checkout.session.completed event as Stripe documents it (payment mode, paid).
STRIPE_EVENT = {
    "id": "evt_1PVwcnR8QWoDuPnP0eRk39Wn",
    "object": "event",
    "api_version": "2024-06-20",
    "created": 1741769700,  # 2025-03-12T08:55:00Z
    "livemode": False,
    "pending_webhooks": 1,
    "request": {"id": None, "idempotency_key": None},
    "type": "checkout.session.completed",
    "data": {
        "object": {
            "id": "cs_test_a1uS9U7mL0zDhvwzkx6k7YhmITcD9dQUVp1gkQsMSE4hITV5tzQ7aR4Z9L",
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": False,
            "amount_subtotal": 25000,
            "amount_total": 25000,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": "auto",
            "cancel_url": "https://acme.example/cart",
            "client_reference_id": None,
            "consent": None,
            "consent_collection": None,
            "created": 1741769400,  # 2025-03-12T08:50:00Z
            "currency": "usd",
            "customer": "cus_QMfaXmplE1234",
            "customer_creation": "if_required",
            "customer_details": {
                "address": {
                    "city": "South San Francisco",
                    "country": "US",
                    "line1": "354 Oyster Point Blvd",
                    "line2": None,
                    "postal_code": "94080",
                    "state": "CA",
                },
                "email": "Jenny.Rosen@Example.com",
                "name": "Jenny Rosen",
                "phone": "+14155552671",
                "tax_exempt": "none",
                "tax_ids": [],
            },
            "customer_email": None,
            "expires_at": 1741855800,
            "invoice": None,
            "livemode": False,
            "locale": None,
            "metadata": {},
            "mode": "payment",
            "payment_intent": "pi_3PVwcnR8QWoDuPnP1xExampl",
            "payment_method_types": ["card"],
            "payment_status": "paid",
            "status": "complete",
            "submit_type": None,
            "subscription": None,
            "success_url": "https://acme.example/thanks",
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "url": None,
        }
    },
}

STRIPE_EXPECTED = ConversionInput(
    kind="order",
    source="stripe",
    external_id="cs_test_a1uS9U7mL0zDhvwzkx6k7YhmITcD9dQUVp1gkQsMSE4hITV5tzQ7aR4Z9L",
    email="jenny.rosen@example.com",
    phone="+14155552671",
    name="Jenny Rosen",
    value="250",
    currency="USD",
    session_ref=None,
    consent_marketing=None,
    fields={"payment_status": "paid", "mode": "payment", "livemode": False},
    city="South San Francisco",
    region="CA",
    postal_code="94080",
    country="US",
    occurred_at=datetime(2025, 3, 12, 8, 55, tzinfo=UTC),
)


def stripe(changes=None, *, event_changes=None, region="CZ", currency="CZK"):
    event = copy.deepcopy(STRIPE_EVENT)
    session = event["data"]["object"]
    for path, value in (changes or {}).items():
        target = session
        *parents, last = path.split(".")
        for name in parents:
            target = target[name]
        target[last] = value
    event.update(event_changes or {})
    return parse_stripe_event(event, default_region=region, default_currency=currency, now=NOW)


def test_stripe_documented_event():
    assert stripe() == AdapterResult(
        conversion=STRIPE_EXPECTED,
        delivery_id="evt_1PVwcnR8QWoDuPnP0eRk39Wn",
        topic="checkout.session.completed",
    )


@pytest.mark.parametrize(
    "changes, expected",
    [
        pytest.param(
            {"amount_total": 500, "currency": "jpy"},
            {"value": "500", "currency": "JPY"},
            id="zero-decimal-jpy",
        ),
        pytest.param(
            {"amount_total": 12000, "currency": "krw"},
            {"value": "12000", "currency": "KRW"},
            id="zero-decimal-krw",
        ),
        pytest.param(
            {"amount_total": 5120, "currency": "bhd"},
            {"value": "5.12", "currency": "BHD"},
            id="three-decimal-bhd",
        ),
        pytest.param(
            {"amount_total": 12345, "currency": "kwd"},
            {"value": "12.345", "currency": "KWD"},
            id="three-decimal-kwd",
        ),
        pytest.param(
            {"amount_total": 1000, "currency": "jod"},
            {"value": "1", "currency": "JOD"},
            id="three-decimal-jod",
        ),
        pytest.param(
            {"amount_total": 7, "currency": "omr"},
            {"value": "0.007", "currency": "OMR"},
            id="three-decimal-omr",
        ),
        pytest.param(
            {"amount_total": 2500, "currency": "tnd"},
            {"value": "2.5", "currency": "TND"},
            id="three-decimal-tnd",
        ),
        pytest.param(
            {"amount_total": 50000, "currency": "isk"},
            {"value": "500", "currency": "ISK"},
            id="isk-two-decimal-in-stripe",
        ),
        pytest.param(
            {"amount_total": 264900, "currency": "czk"},
            {"value": "2649", "currency": "CZK"},
            id="two-decimal-czk",
        ),
        pytest.param(
            {"amount_total": 1999, "currency": "eur"},
            {"value": "19.99", "currency": "EUR"},
            id="two-decimal-eur",
        ),
        pytest.param({"amount_total": 0}, {"value": "0"}, id="free"),
        pytest.param({"amount_total": None}, {"value": None}, id="no-amount"),
        pytest.param({"currency": None}, {"currency": "CZK"}, id="missing-currency-tenant-default"),
        pytest.param(
            {"client_reference_id": SESSION}, {"session_ref": SESSION}, id="session-from-client-reference-id"
        ),
        pytest.param(
            {"metadata": {"halo_session_id": SESSION}}, {"session_ref": SESSION}, id="session-from-metadata"
        ),
        pytest.param(
            {"metadata": {"halo_session_id": SESSION}, "client_reference_id": "cart-991"},
            {"session_ref": SESSION},
            id="metadata-wins-over-client-reference",
        ),
        pytest.param(
            {"metadata": {"halo_session_id": ""}, "client_reference_id": "cart-991"},
            {"session_ref": "cart-991"},
            id="empty-metadata-falls-back",
        ),
        pytest.param(
            {"customer_details.email": None, "customer_email": "buyer@example.com"},
            {"email": "buyer@example.com"},
            id="customer-email-fallback",
        ),
        pytest.param({"customer_details.email": "nope"}, {"email": None}, id="invalid-email-dropped"),
        pytest.param(
            {"customer_details.phone": "(415) 555-2671"},
            {"phone": "+14155552671"},
            id="national-phone-read-in-address-country",
        ),
        pytest.param(
            {"customer_details.phone": "601 234 567", "customer_details.address": None},
            {
                "phone": "+420601234567",
                "city": None,
                "region": None,
                "postal_code": None,
                "country": None,
            },
            id="phone-tenant-region-without-address",
        ),
        pytest.param({"customer_details.phone": "12"}, {"phone": None}, id="invalid-phone-dropped"),
        pytest.param(
            {"customer_details": None},
            {
                "email": None,
                "phone": None,
                "name": None,
                "city": None,
                "region": None,
                "postal_code": None,
                "country": None,
            },
            id="no-customer-details",
        ),
        pytest.param(
            {"consent": {"promotions": "opt_in", "terms_of_service": "accepted"}},
            {"consent_marketing": True},
            id="consent-opt-in",
        ),
        pytest.param(
            {"consent": {"promotions": "opt_out"}}, {"consent_marketing": False}, id="consent-opt-out"
        ),
        pytest.param(
            {"payment_status": "unpaid"},
            {"fields": {"payment_status": "unpaid", "mode": "payment", "livemode": False}},
            id="async-payment-still-a-conversion",
        ),
        pytest.param(
            {"mode": "subscription", "amount_total": 0},
            {"value": "0", "fields": {"payment_status": "paid", "mode": "subscription", "livemode": False}},
            id="subscription-trial",
        ),
    ],
)
def test_stripe_variations(changes, expected):
    result = stripe(changes)
    assert result.conversion == ConversionInput(**{**_fields(STRIPE_EXPECTED), **expected})
    assert result.delivery_id == "evt_1PVwcnR8QWoDuPnP0eRk39Wn"


@pytest.mark.parametrize(
    "event_changes, expected",
    [
        pytest.param(
            {"created": None}, datetime(2025, 3, 12, 8, 50, tzinfo=UTC), id="falls-back-to-session-created"
        ),
        pytest.param(
            {"created": 4102444800}, datetime(2025, 3, 12, 8, 50, tzinfo=UTC), id="future-event-time-dropped"
        ),
        pytest.param(
            {"created": "1741769700"}, datetime(2025, 3, 12, 8, 50, tzinfo=UTC), id="string-time-dropped"
        ),
        pytest.param(
            {"created": 253402300800},  # 10000-01-01T00:00:00Z, past what datetime can hold
            datetime(2025, 3, 12, 8, 50, tzinfo=UTC),
            id="time-past-year-9999-dropped",
        ),
    ],
)
def test_stripe_time(event_changes, expected):
    assert stripe(event_changes=event_changes).conversion.occurred_at == expected


@pytest.mark.parametrize(
    "event_type",
    [
        "payment_intent.succeeded",
        "checkout.session.expired",
        "checkout.session.async_payment_succeeded",
        "charge.refunded",
        "customer.created",
    ],
)
def test_stripe_other_events_ignored(event_type):
    result = stripe(event_changes={"type": event_type})
    assert result.conversion is None
    assert result.delivery_id == "evt_1PVwcnR8QWoDuPnP0eRk39Wn"
    assert result.topic == event_type
    assert event_type in result.ignored


def test_stripe_setup_mode_ignored():
    result = stripe({"mode": "setup", "amount_total": None})
    assert result.conversion is None and "setup" in result.ignored


@pytest.mark.parametrize(
    "changes, event_changes, code, field",
    [
        pytest.param({}, {"id": None}, "missing_field", "id", id="no-event-id"),
        pytest.param({}, {"type": None}, "missing_field", "type", id="no-type"),
        pytest.param({}, {"data": {}}, "invalid_field", "data.object", id="no-object"),
        pytest.param({"object": "payment_intent"}, {}, "invalid_field", "data.object", id="wrong-object"),
        pytest.param({"id": None}, {}, "missing_field", "data.object.id", id="no-session-id"),
        pytest.param(
            {"amount_total": "25000"}, {}, "invalid_field", "data.object.amount_total", id="amount-string"
        ),
        pytest.param(
            {"amount_total": 250.0}, {}, "invalid_field", "data.object.amount_total", id="amount-float"
        ),
        pytest.param(
            {"amount_total": True}, {}, "invalid_field", "data.object.amount_total", id="amount-bool"
        ),
        pytest.param(
            {"amount_total": -100}, {}, "invalid_field", "data.object.amount_total", id="amount-negative"
        ),
        pytest.param(
            {"amount_total": 10**20}, {}, "invalid_field", "data.object.amount_total", id="amount-huge"
        ),
    ],
)
def test_stripe_invalid(changes, event_changes, code, field):
    with pytest.raises(InputError) as err:
        stripe(changes, event_changes=event_changes)
    assert (err.value.code, err.value.field) == (code, field)


@pytest.mark.parametrize("body", [[], "event", None])
def test_stripe_body_not_an_object(body):
    with pytest.raises(InputError):
        parse_stripe_event(body, default_region="CZ", default_currency="CZK", now=NOW)


@pytest.mark.parametrize(
    "currency, exponent",
    [
        ("JPY", 0),
        ("KRW", 0),
        ("VND", 0),
        ("XOF", 0),
        ("BHD", 3),
        ("KWD", 3),
        ("JOD", 3),
        ("OMR", 3),
        ("TND", 3),
        ("USD", 2),
        ("EUR", 2),
        ("CZK", 2),
        ("ISK", 2),
        ("HUF", 2),
        ("TWD", 2),
    ],
)
def test_minor_unit_exponent(currency, exponent):
    assert minor_unit_exponent(currency) == exponent
