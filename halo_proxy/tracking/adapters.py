"""Native order webhooks (Shopify, Stripe) turned into `ConversionInput`.

The route verifies the signature over the raw body (`crypto.verify_shopify` / `crypto.verify_stripe`), decodes
the JSON and hands the object here. Each adapter answers an `AdapterResult`: either a conversion to store, or
``ignored`` with a reason (the route answers 200 and stores nothing, so the platform stops retrying).

These payloads come from platforms that validate their own data and retry a refused delivery for hours or days
(Shopify eventually drops the subscription). So only what makes the order meaningful is required (its id, and a
parseable total); a contact detail that HaloTrack cannot normalise (an email our rules refuse, a phone without a
usable country) is dropped rather than refusing the order, and a missing or absurd time leaves `occurred_at`
unset (the route then uses the time of receipt).

Deduplication, as the route is expected to do it:

- Shopify: a retried delivery repeats ``X-Shopify-Webhook-Id``; the route answers 200 to an id it has seen
  (store the id in the same transaction as the conversion). The conversion's own idempotency key is the order
  id (`external_id`), so ``orders/create`` and ``orders/paid`` for one order make one conversion, the second
  answered like any repeat.
- Stripe: `AdapterResult.delivery_id` is the event id (``evt_...``), the same on every retry; `external_id` is
  the Checkout Session id (``cs_...``), the conversion's idempotency key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from halo_proxy.tracking.conversion import (
    FUTURE_SKEW,
    ID_MAX_CHARS,
    ITEMS_MAX,
    SESSION_MAX_CHARS,
    InputError,
    canonical_money,
    parse_money,
)
from halo_proxy.tracking.identity import IdentityError, normalise_email, normalise_phone
from halo_proxy.tracking.models import ConversionInput

__all__ = [
    "SESSION_ATTRIBUTE",
    "SHOPIFY_ORDER_TOPICS",
    "STRIPE_CONVERSION_TYPES",
    "AdapterResult",
    "minor_unit_exponent",
    "parse_shopify_order",
    "parse_stripe_event",
]

# The cart / note attribute (and Stripe metadata key) that carries the HaloTrack session id.
SESSION_ATTRIBUTE = "halo_session_id"
SHOPIFY_ORDER_TOPICS = frozenset({"orders/create", "orders/paid"})
STRIPE_CONVERSION_TYPES = frozenset({"checkout.session.completed"})

# Stripe amounts are integers in the currency's minor unit. Most currencies have two decimals; these differ.
# (ISK, HUF and TWD keep two decimals in Stripe's API even though only whole units can be charged.)
STRIPE_ZERO_DECIMAL = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})

_TEXT_MAX = 200
_ITEM_TEXT_MAX = 255
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_GID_ORDER = re.compile(r"gid://shopify/Order/(\d+)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Times before this are not real order times.
_EPOCH_FLOOR = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AdapterResult:
    """What a platform webhook amounts to.

    `conversion` is set when the payload is a conversion to store; otherwise `ignored` says why (a sentence fit
    for a log line, never holding personal data). `delivery_id` is the platform's id of the delivered event when
    the payload carries one (Stripe's event id); `topic` is the event type or webhook topic.
    """

    conversion: ConversionInput | None = None
    ignored: str | None = None
    delivery_id: str | None = None
    topic: str | None = None

    @property
    def is_conversion(self) -> bool:
        return self.conversion is not None


# -- lenient readers for platform payloads ---------------------------------------------------------------------------


def _obj(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: object, limit: int = _TEXT_MAX) -> str | None:
    """A trimmed string without control characters, cut to `limit`; None for anything else or empty."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = _CONTROL.sub(" ", str(value)).strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text[:limit].rstrip() or None


def _ident(value: object, limit: int = ID_MAX_CHARS) -> str | None:
    """An id as given, or None when it is not a short clean string or integer."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value).strip()
    if not text or len(text) > limit or _CONTROL.search(text):
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _email(*candidates: object) -> str | None:
    for value in candidates:
        if isinstance(value, str) and value.strip():
            try:
                return normalise_email(value)
            except IdentityError:
                continue
    return None


def _phone(candidates: Sequence[tuple[object, str | None]], default_region: str | None) -> str | None:
    """The first candidate that parses; each is tried with its own address's country, then the default."""
    for value, country in candidates:
        if not (isinstance(value, str) and value.strip()):
            continue
        for region in dict.fromkeys((country, default_region)):
            try:
                return normalise_phone(value, region)
            except IdentityError:
                continue
    return None


def _country(value: object) -> str | None:
    if isinstance(value, str) and _COUNTRY.fullmatch(value.strip()):
        return value.strip().upper()
    return None


def _currency(value: object, default: str | None) -> str | None:
    if isinstance(value, str) and _CURRENCY.fullmatch(value.strip()):
        return value.strip().upper()
    return default.strip().upper() if isinstance(default, str) and default.strip() else None


def _sane_time(at: datetime | None, now: datetime) -> datetime | None:
    if at is None or at.utcoffset() is None or at < _EPOCH_FLOOR or at - now > FUTURE_SKEW:
        return None
    return at


def _iso_time(value: object, now: datetime) -> datetime | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return _sane_time(datetime.fromisoformat(value.strip()), now)
    except ValueError:
        return None


def _unix_time(value: object, now: datetime) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**40:
        return None
    try:
        at = datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):  # past the year 9999
        return None
    return _sane_time(at, now)


def _full_name(first: str | None, last: str | None) -> str | None:
    return " ".join(part for part in (first, last) if part) or None


def _compact(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


# -- Shopify -------------------------------------------------------------------------------------------------------


def _shopify_attributes(order: Mapping[str, Any]) -> dict[str, str]:
    """Cart / note attributes by name. ``note_attributes`` is a list of ``{name, value}``; ``attributes`` may be
    the same list (or with ``key``) or a plain object. Earlier sources win."""
    found: dict[str, str] = {}
    for source in (order.get("note_attributes"), order.get("attributes")):
        if isinstance(source, Mapping):
            pairs = list(source.items())
        elif isinstance(source, list):
            pairs = []
            for entry in source:
                entry = _obj(entry)
                pairs.append((entry.get("name", entry.get("key")), entry.get("value")))
        else:
            continue
        for name, value in pairs:
            if isinstance(name, str) and name.strip() and name.strip() not in found:
                text = _str(value, SESSION_MAX_CHARS)
                if text is not None:
                    found[name.strip()] = text
    return found


def _shopify_items(order: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    lines = order.get("line_items")
    if not isinstance(lines, list):
        return None
    items = []
    for line in lines[:ITEMS_MAX]:
        line = _obj(line)
        if not line:
            continue
        quantity = line.get("quantity")
        try:
            price = parse_money(line.get("price"), "price")
        except InputError:
            price = None
        items.append(
            _compact(
                {
                    "id": _ident(line.get("id")),
                    "product_id": _ident(line.get("product_id")),
                    "variant_id": _ident(line.get("variant_id")),
                    "sku": _str(line.get("sku"), _ITEM_TEXT_MAX),
                    "name": _str(line.get("name") or line.get("title"), _ITEM_TEXT_MAX),
                    "quantity": quantity
                    if isinstance(quantity, int) and not isinstance(quantity, bool) and 0 <= quantity < 2**31
                    else None,
                    "price": price,
                }
            )
        )
    return items


def parse_shopify_order(
    order: object,
    *,
    topic: str | None = None,
    default_region: str | None,
    default_currency: str,
    now: datetime,
) -> AdapterResult:
    """An order webhook (``orders/create`` or ``orders/paid``; `topic` is ``X-Shopify-Topic``, None to accept
    the payload as an order) as a conversion of kind ``order``, source ``shopify``.

    Requires the order id (``id``, else the number in ``admin_graphql_api_id``) and ``total_price``. The session
    comes from the cart / note attribute ``halo_session_id``; without it the route matches by email and phone.
    """
    if topic is not None and topic not in SHOPIFY_ORDER_TOPICS:
        return AdapterResult(
            ignored=f"topic {_str(topic, 64)} is not an order conversion", topic=_str(topic, 64)
        )
    if not isinstance(order, Mapping):
        raise InputError("invalid_field", "the body must be a Shopify order object", None)

    order_id = _ident(order.get("id"))
    gid = _str(order.get("admin_graphql_api_id"), ID_MAX_CHARS)
    if order_id is None and gid is not None:
        match = _GID_ORDER.fullmatch(gid)
        order_id = match.group(1) if match else None
    if order_id is None:
        raise InputError("missing_field", "the order has no id", "id")
    if order.get("total_price") is None:
        raise InputError("missing_field", "the order has no total_price", "total_price")
    value = parse_money(order.get("total_price"), "total_price")

    customer = _obj(order.get("customer"))
    billing = _obj(order.get("billing_address"))
    shipping = _obj(order.get("shipping_address"))
    address = billing or shipping
    billing_country = _country(billing.get("country_code"))
    shipping_country = _country(shipping.get("country_code"))

    first_name = _str(customer.get("first_name")) or _str(address.get("first_name"))
    last_name = _str(customer.get("last_name")) or _str(address.get("last_name"))
    accepts_marketing = order.get("buyer_accepts_marketing")
    if not isinstance(accepts_marketing, bool):
        state = _obj(customer.get("email_marketing_consent")).get("state")
        accepts_marketing = (
            {"subscribed": True, "not_subscribed": False, "unsubscribed": False}.get(state)
            if isinstance(state, str)
            else None
        )

    attributes = _shopify_attributes(order)
    session_ref = _ident(attributes.get(SESSION_ATTRIBUTE), SESSION_MAX_CHARS)

    conversion = ConversionInput(
        kind="order",
        source="shopify",
        external_id=order_id,
        email=_email(order.get("email"), order.get("contact_email"), customer.get("email")),
        phone=_phone(
            [
                (order.get("phone"), billing_country or shipping_country),
                (customer.get("phone"), billing_country or shipping_country),
                (billing.get("phone"), billing_country),
                (shipping.get("phone"), shipping_country),
            ],
            default_region,
        ),
        name=_full_name(first_name, last_name),
        first_name=first_name,
        last_name=last_name,
        value=value,
        currency=_currency(order.get("currency"), default_currency),
        session_ref=session_ref,
        consent_marketing=accepts_marketing,
        fields=_compact(
            {
                "order_name": _str(order.get("name"), 64),
                "admin_graphql_api_id": gid,
                "financial_status": _str(order.get("financial_status"), 64),
                "test": order.get("test") if isinstance(order.get("test"), bool) else None,
            }
        )
        or None,
        items=_shopify_items(order),
        city=_str(address.get("city"), 100),
        region=_str(address.get("province_code"), 100) or _str(address.get("province"), 100),
        postal_code=_str(address.get("zip"), 32),
        country=_country(address.get("country_code")),
        occurred_at=_iso_time(order.get("created_at"), now) or _iso_time(order.get("processed_at"), now),
    )
    return AdapterResult(conversion=conversion, topic=topic)


# -- Stripe --------------------------------------------------------------------------------------------------------


def minor_unit_exponent(currency: str) -> int:
    """Decimal places of a Stripe amount in `currency` (uppercase ISO code): 0, 2 or 3."""
    if currency in STRIPE_ZERO_DECIMAL:
        return 0
    if currency in STRIPE_THREE_DECIMAL:
        return 3
    return 2


def parse_stripe_event(
    event: object,
    *,
    default_region: str | None,
    default_currency: str,
    now: datetime,
) -> AdapterResult:
    """A Stripe event. Only ``checkout.session.completed`` is a conversion (kind ``order``, source ``stripe``);
    other types are ignored. A Checkout Session in ``setup`` mode takes no payment and is ignored as well.

    `external_id` is the Checkout Session id; `delivery_id` the event id. The amount is ``amount_total`` in the
    currency's minor unit (see `minor_unit_exponent`). The session comes from ``metadata.halo_session_id``,
    else ``client_reference_id`` (which a site may use for its own purposes; an id that names no session just
    leaves matching to email and phone). The time is the event's ``created`` (when the checkout completed), else
    the session's.
    """
    if not isinstance(event, Mapping):
        raise InputError("invalid_field", "the body must be a Stripe event object", None)
    event_id = _ident(event.get("id"))
    if event_id is None:
        raise InputError("missing_field", "the event has no id", "id")
    event_type = _str(event.get("type"), 128)
    if event_type is None:
        raise InputError("missing_field", "the event has no type", "type")
    if event_type not in STRIPE_CONVERSION_TYPES:
        return AdapterResult(
            ignored=f"event type {event_type} is not a conversion", delivery_id=event_id, topic=event_type
        )
    session = _obj(event.get("data")).get("object")
    if not isinstance(session, Mapping) or session.get("object", "checkout.session") != "checkout.session":
        raise InputError("invalid_field", "data.object must be a Checkout Session", "data.object")
    session_id = _ident(session.get("id"))
    if session_id is None:
        raise InputError("missing_field", "the Checkout Session has no id", "data.object.id")
    if session.get("mode") == "setup":
        return AdapterResult(
            ignored="a Checkout Session in setup mode takes no payment",
            delivery_id=event_id,
            topic=event_type,
        )

    currency = _currency(session.get("currency"), default_currency)
    amount = session.get("amount_total")
    value = None
    if amount is not None:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise InputError("invalid_field", "amount_total must be an integer", "data.object.amount_total")
        exponent = minor_unit_exponent(currency or "")
        value = canonical_money(Decimal(amount).scaleb(-exponent), "data.object.amount_total")

    details = _obj(session.get("customer_details"))
    address = _obj(details.get("address"))
    country = _country(address.get("country"))
    metadata = _obj(session.get("metadata"))
    session_ref = _ident(metadata.get(SESSION_ATTRIBUTE), SESSION_MAX_CHARS) or _ident(
        session.get("client_reference_id"), SESSION_MAX_CHARS
    )
    promotions = _obj(session.get("consent")).get("promotions")

    conversion = ConversionInput(
        kind="order",
        source="stripe",
        external_id=session_id,
        email=_email(details.get("email"), session.get("customer_email")),
        phone=_phone([(details.get("phone"), country)], default_region),
        name=_str(details.get("name")),
        value=value,
        currency=currency,
        session_ref=session_ref,
        consent_marketing={"opt_in": True, "opt_out": False}.get(promotions)
        if isinstance(promotions, str)
        else None,
        fields=_compact(
            {
                "payment_status": _str(session.get("payment_status"), 64),
                "mode": _str(session.get("mode"), 64),
                "livemode": event.get("livemode") if isinstance(event.get("livemode"), bool) else None,
            }
        )
        or None,
        city=_str(address.get("city"), 100),
        region=_str(address.get("state"), 100),
        postal_code=_str(address.get("postal_code"), 32),
        country=country,
        occurred_at=_unix_time(event.get("created"), now) or _unix_time(session.get("created"), now),
    )
    return AdapterResult(conversion=conversion, delivery_id=event_id, topic=event_type)
