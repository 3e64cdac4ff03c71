"""Validation of lead and order bodies into `ConversionInput`.

The route decodes the body (JSON, or the first value of each form field) and hands over Python objects; this
module decides whether they make a conversion and normalises them. Every refusal is an `InputError` whose `field`
names the offending key, so the route can answer the contract's 422 ``{"error", "detail", "field"}``.

Rules shared by leads and orders:

- ``null``, an empty string or a string of spaces counts as absent.
- Identifiers (``event_id``, ``order_id``, ``session_id``) must fit their limit exactly: an identifier cut short
  would silently name something else, so too long is an error. Free text (``name``, ``message``,
  ``form_type``...) is trimmed, stripped of control characters (``message`` keeps its line breaks) and cut to
  its limit: losing the tail of a message is better than losing the lead.
- Money (``value``) is a JSON number or a decimal string, finite, between 0 and 1e12, with at most 4 decimal
  places; it is kept as a canonical decimal string (``"12.5"``, ``"1000"``) and never goes through float
  arithmetic. Booleans are not numbers.
- ``currency`` is three letters (ISO 4217 format), uppercased; the tenant's default applies when a value comes
  without one.
- ``email`` and ``phone`` go through `normalise_email` / `normalise_phone`. A phone without a country code is
  read in the body's ``country`` when one is given, else in the tenant's default region.
- Unknown top-level keys in JSON are refused (``unknown_field``): a misspelt ``sesion_id`` would otherwise lose
  the attribution without a word. Extra data belongs in ``fields``. Form posts ignore unknown fields (real forms
  carry CSRF tokens, honeypots and inputs of their own), and they are not stored, since they may hold personal
  data that would otherwise sit unencrypted.

Besides the contract's fields, both bodies accept ``first_name``, ``last_name``, ``city``, ``region``,
``postal_code``, ``country`` (ISO 3166-1 alpha-2), ``event_source_url`` and ``ga_client_id``, which the ad
platforms use for matching.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Context, Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import urlsplit

from halo_proxy.tracking.identity import IdentityError, normalise_email, normalise_phone
from halo_proxy.tracking.models import ConversionInput

__all__ = [
    "ERROR_CODES",
    "FIELDS_MAX_DEPTH",
    "FIELDS_MAX_KEYS",
    "FIELDS_MAX_TEXT",
    "FUTURE_SKEW",
    "ID_MAX_CHARS",
    "ITEMS_MAX",
    "LEAD_KEYS",
    "LIMITS",
    "MONEY_MAX",
    "MONEY_MAX_PLACES",
    "ORDER_KEYS",
    "SESSION_MAX_CHARS",
    "InputError",
    "canonical_money",
    "form_redirect",
    "parse_country",
    "parse_currency",
    "parse_json_object",
    "parse_money",
    "parse_lead",
    "parse_order",
    "parse_time",
]

# -- limits -------------------------------------------------------------------------------------------------------

ERROR_CODES = ("missing_field", "invalid_field", "unknown_field")

# Free text: cut to these lengths (characters).
LIMITS: dict[str, int] = {
    "name": 200,
    "first_name": 100,
    "last_name": 100,
    "message": 5_000,
    "form_type": 100,
    "city": 100,
    "region": 100,
    "postal_code": 32,
    "ga_client_id": 100,
}
# Identifiers: longer is an error.
ID_MAX_CHARS = 255
SESSION_MAX_CHARS = 512
URL_MAX_CHARS = 2_048

MONEY_MAX = Decimal("1e12")
MONEY_MAX_PLACES = 4
# Longer than any sensible decimal string; keeps Decimal away from pathological input.
MONEY_MAX_CHARS = 64

FIELDS_MAX_KEYS = 50
FIELDS_MAX_TEXT = 2_000
FIELDS_MAX_DEPTH = 3
ITEMS_MAX = 100

# How far in the future an order's own time may lie (clock skew between the sender and us).
FUTURE_SKEW = timedelta(minutes=15)
TIME_MAX_CHARS = 64

_COMMON_KEYS = frozenset(
    {
        "email",
        "phone",
        "name",
        "first_name",
        "last_name",
        "value",
        "currency",
        "session_id",
        "consent_marketing",
        "fields",
        "city",
        "region",
        "postal_code",
        "country",
        "event_source_url",
        "ga_client_id",
    }
)
LEAD_KEYS = _COMMON_KEYS | {"message", "form_type", "event_id"}
ORDER_KEYS = _COMMON_KEYS | {"order_id", "items", "occurred_at", "created_at"}
# Form-only helpers: where to send the browser afterwards, and the session id a page put in a hidden input.
FORM_KEYS = LEAD_KEYS | {"_redirect", "halo_session_id"}

_TRUE_WORDS = frozenset({"on", "true", "1", "yes"})
_FALSE_WORDS = frozenset({"off", "false", "0", "no"})

# C0 controls, DEL and C1 controls; the multiline variant keeps tab and line feed.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
# Exact arithmetic for anything MONEY_MAX_CHARS long.
_EXACT = Context(prec=200)


# -- the error ----------------------------------------------------------------------------------------------------


class InputError(ValueError):
    """A body that is well-formed but not a valid conversion (HTTP 422).

    `code` is one of `ERROR_CODES`; `detail` is a sentence that never repeats the submitted value; `field` names
    the key at fault (None when the fault lies in a combination of keys, such as no identifier at all).
    """

    status = 422

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field

    def to_json(self) -> dict[str, str]:
        """The contract's error body."""
        body = {"error": self.code, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        return body

    def __repr__(self) -> str:
        return f"InputError({self.code!r}, {self.detail!r}, field={self.field!r})"


def _invalid(field: str, detail: str) -> InputError:
    return InputError("invalid_field", detail, field)


# -- scalar parsers -----------------------------------------------------------------------------------------------


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _encodable(field: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(field, f"{field} contains characters that are not valid Unicode") from None


def _text(field: str, value: object, limit: int, *, multiline: bool = False) -> str | None:
    """Trimmed text without control characters, cut to `limit`; None when nothing is left."""
    if _absent(value):
        return None
    if not isinstance(value, str):
        raise _invalid(field, f"{field} must be a string")
    _encodable(field, value)
    if multiline:
        value = _CONTROL_MULTILINE.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    else:
        value = _CONTROL.sub(" ", value)
    value = value.strip()
    return value[:limit].rstrip() or None


def _identifier(field: str, value: object, limit: int = ID_MAX_CHARS) -> str | None:
    """An id: a non-empty string of at most `limit` characters without control characters, or an integer."""
    if _absent(value):
        return None
    if isinstance(value, bool):
        raise _invalid(field, f"{field} must be a string or an integer")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise _invalid(field, f"{field} must be a string or an integer")
    _encodable(field, value)
    value = value.strip()
    if _CONTROL.search(value):
        raise _invalid(field, f"{field} contains control characters")
    if len(value) > limit:
        raise _invalid(field, f"{field} is longer than {limit} characters")
    return value


def parse_money(value: object, field: str = "value") -> str | None:
    """`value` as a canonical decimal string; None when absent.

    Accepts an int, a finite float (read through its shortest repr, so ``12.5`` stays ``12.5``) or a decimal
    string (``"12.50"``, ``"1e3"``). Refuses booleans, negatives, NaN and infinities, more than 1e12, and more
    than 4 decimal places once trailing zeros are dropped (money is never rounded silently).
    """
    if _absent(value):
        return None
    if isinstance(value, bool):
        raise _invalid(field, f"{field} must be a number")
    if isinstance(value, int):
        text = str(value) if abs(value) <= 10**15 else ("-1e16" if value < 0 else "1e16")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(field, f"{field} must be a finite number")
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MONEY_MAX_CHARS or not _DECIMAL_TEXT.fullmatch(text):
            raise _invalid(field, f"{field} must be a number such as 12.50")
    else:
        raise _invalid(field, f"{field} must be a number")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise _invalid(field, f"{field} must be a number such as 12.50") from None
    return canonical_money(amount, field)


def canonical_money(amount: Decimal, field: str = "value") -> str:
    """The canonical string of a decimal amount, or InputError naming `field` when it is not valid money."""
    if not amount.is_finite():
        raise _invalid(field, f"{field} must be a finite number")
    if amount < 0:
        raise _invalid(field, f"{field} must not be negative")
    if amount > MONEY_MAX:
        raise _invalid(field, f"{field} must not exceed 1000000000000")
    if amount == 0:
        return "0"
    # Its first digit beyond the places allowed: refused before `normalize`, which would round an amount
    # this small (below 1e-1000198) to zero.
    if amount.adjusted() < -MONEY_MAX_PLACES:
        raise _invalid(field, f"{field} has more than {MONEY_MAX_PLACES} decimal places")
    normal = amount.normalize(_EXACT)
    exponent = normal.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if exponent < -MONEY_MAX_PLACES:
        raise _invalid(field, f"{field} has more than {MONEY_MAX_PLACES} decimal places")
    return format(normal, "f")


def parse_currency(value: object, default: str | None, field: str = "currency") -> str | None:
    """Three letters, uppercased; `default` when absent."""
    if _absent(value):
        return default.strip().upper() if isinstance(default, str) and default.strip() else None
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value.strip()):
        raise _invalid(field, f"{field} must be a three-letter ISO 4217 code such as EUR")
    return value.strip().upper()


def parse_country(value: object, field: str = "country") -> str | None:
    """Two letters (ISO 3166-1 alpha-2), uppercased."""
    if _absent(value):
        return None
    if not isinstance(value, str) or not _COUNTRY.fullmatch(value.strip()):
        raise _invalid(field, f"{field} must be a two-letter ISO 3166-1 code such as CZ")
    return value.strip().upper()


def _bool(field: str, value: object, *, form: bool) -> bool | None:
    if _absent(value):
        return None
    if isinstance(value, bool):
        return value
    if form and isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _invalid(field, f"{field} must be true or false")


def _url(field: str, value: object) -> str | None:
    if _absent(value):
        return None
    if not isinstance(value, str):
        raise _invalid(field, f"{field} must be a string")
    value = value.strip()
    _encodable(field, value)
    if len(value) > URL_MAX_CHARS:
        raise _invalid(field, f"{field} is longer than {URL_MAX_CHARS} characters")
    if _CONTROL.search(value) or " " in value:
        raise _invalid(field, f"{field} must be an http or https URL")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise _invalid(field, f"{field} must be an http or https URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise _invalid(field, f"{field} must be an http or https URL")
    return value


def parse_time(value: object, *, now: datetime, field: str = "occurred_at") -> datetime | None:
    """An RFC 3339 time with its offset (``2025-03-12T10:00:00Z``), not more than `FUTURE_SKEW` after `now`."""
    if _absent(value):
        return None
    if not isinstance(value, str) or len(value) > TIME_MAX_CHARS:
        raise _invalid(field, f"{field} must be an RFC 3339 time such as 2025-03-12T10:00:00Z")
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _invalid(field, f"{field} must be an RFC 3339 time such as 2025-03-12T10:00:00Z") from None
    if at.utcoffset() is None:
        raise _invalid(field, f"{field} must include a UTC offset or Z")
    if at - now > FUTURE_SKEW:
        raise _invalid(field, f"{field} lies in the future")
    return at


# -- JSON values kept as they are -----------------------------------------------------------------------------------


def _check_json(field: str, value: Any, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise _invalid(field, f"{field} holds an integer too large to store")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(field, f"{field} holds a number that is not finite")
        return
    if isinstance(value, str):
        if len(value) > FIELDS_MAX_TEXT:
            raise _invalid(field, f"{field} holds a text longer than {FIELDS_MAX_TEXT} characters")
        if "\x00" in value:
            raise _invalid(field, f"{field} holds a NUL character")
        _encodable(field, value)
        return
    if depth > FIELDS_MAX_DEPTH:
        raise _invalid(field, f"{field} is nested more than {FIELDS_MAX_DEPTH} levels deep")
    if isinstance(value, Mapping):
        if len(value) > FIELDS_MAX_KEYS:
            raise _invalid(field, f"{field} holds an object with more than {FIELDS_MAX_KEYS} keys")
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > 100 or "\x00" in key:
                raise _invalid(field, f"{field} holds a key that is not a short string")
            _encodable(field, key)
            _check_json(field, item, depth + 1)
        return
    if isinstance(value, list):
        if len(value) > FIELDS_MAX_KEYS:
            raise _invalid(field, f"{field} holds a list longer than {FIELDS_MAX_KEYS} entries")
        for item in value:
            _check_json(field, item, depth + 1)
        return
    raise _invalid(field, f"{field} holds a value that is not JSON")


def parse_json_object(value: object, field: str = "fields") -> dict | None:
    """A JSON object kept as it is, within limits: at most 50 keys per object and entries per list, texts of at
    most 2,000 characters, nested at most 3 levels (the object itself is level 1)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _invalid(field, f"{field} must be an object")
    _check_json(field, value, 1)
    return dict(value)


def _items(value: object) -> list | None:
    """A list of objects; entries beyond `ITEMS_MAX` are dropped (the order counts more than its detail)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid("items", "items must be a list of objects")
    items = []
    for index, item in enumerate(value[:ITEMS_MAX]):
        if not isinstance(item, Mapping):
            raise _invalid("items", f"items[{index}] must be an object")
        _check_json("items", item, 1)
        items.append(dict(item))
    return items


# -- identity -------------------------------------------------------------------------------------------------------


def _email(value: object) -> str | None:
    if _absent(value):
        return None
    try:
        return normalise_email(value)  # type: ignore[arg-type]
    except IdentityError as err:
        raise _invalid("email", err.detail) from None


def _phone(value: object, region: str | None) -> str | None:
    if _absent(value):
        return None
    try:
        return normalise_phone(value, region)  # type: ignore[arg-type]
    except IdentityError as err:
        raise _invalid("phone", err.detail) from None


def _check_keys(data: Mapping, allowed: frozenset[str]) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        name = unknown[0]
        shown = name if len(name) <= 64 and not _CONTROL.search(name) else "(unprintable)"
        raise InputError("unknown_field", f"unknown field {shown}; put extra data in fields", shown)


def _require_object(data: object) -> Mapping:
    if not isinstance(data, Mapping):
        raise InputError("invalid_field", "the body must be a JSON object", None)
    return data


def _common(data: Mapping, *, default_region: str | None, form: bool) -> dict[str, Any]:
    """The fields leads and orders share, validated."""
    country = parse_country(data.get("country"))
    region_for_phone = country or default_region
    name = _text("name", data.get("name"), LIMITS["name"])
    first_name = _text("first_name", data.get("first_name"), LIMITS["first_name"])
    last_name = _text("last_name", data.get("last_name"), LIMITS["last_name"])
    if name is None and (first_name or last_name):
        name = " ".join(part for part in (first_name, last_name) if part)[: LIMITS["name"]]
    return {
        "email": _email(data.get("email")),
        "phone": _phone(data.get("phone"), region_for_phone),
        "name": name,
        "first_name": first_name,
        "last_name": last_name,
        "consent_marketing": _bool("consent_marketing", data.get("consent_marketing"), form=form),
        "city": _text("city", data.get("city"), LIMITS["city"]),
        "region": _text("region", data.get("region"), LIMITS["region"]),
        "postal_code": _text("postal_code", data.get("postal_code"), LIMITS["postal_code"]),
        "country": country,
        "event_source_url": _url("event_source_url", data.get("event_source_url")),
        "ga_client_id": _text("ga_client_id", data.get("ga_client_id"), LIMITS["ga_client_id"]),
    }


# -- leads ----------------------------------------------------------------------------------------------------------


def parse_lead(
    data: Mapping[str, Any],
    *,
    source: Literal["form", "api"],
    default_region: str | None,
    default_currency: str,
    session_known: bool = False,
) -> ConversionInput:
    """A lead from a browser form post (``source="form"``: a dict of first values) or signed server JSON.

    At least one of email, phone and session id is required; `session_known` says the route already has the
    visitor's session from the cookie, which satisfies the requirement. A form's session id is
    ``halo_session_id`` (else ``session_id``). ``_redirect`` is the route's business (see `form_redirect`).
    """
    if source not in ("form", "api"):
        raise ValueError(f"unknown lead source {source!r}")
    form = source == "form"
    data = _require_object(data)
    if not form:
        _check_keys(data, LEAD_KEYS)

    common = _common(data, default_region=default_region, form=form)
    if form:
        session_ref = _identifier("halo_session_id", data.get("halo_session_id"), SESSION_MAX_CHARS)
        if session_ref is None:
            session_ref = _identifier("session_id", data.get("session_id"), SESSION_MAX_CHARS)
    else:
        session_ref = _identifier("session_id", data.get("session_id"), SESSION_MAX_CHARS)
    value = parse_money(data.get("value"))
    currency = parse_currency(data.get("currency"), default_currency if value is not None else None)
    fields = None if form else parse_json_object(data.get("fields"))

    if not (common["email"] or common["phone"] or session_ref or session_known):
        session_name = "halo_session_id" if form else "session_id"
        raise InputError("missing_field", f"one of email, phone or {session_name} is required", None)

    return ConversionInput(
        kind="lead",
        source=source,
        external_id=_identifier("event_id", data.get("event_id")),
        message=_text("message", data.get("message"), LIMITS["message"], multiline=True),
        form_type=_text("form_type", data.get("form_type"), LIMITS["form_type"]),
        value=value,
        currency=currency,
        session_ref=session_ref,
        fields=fields,
        **common,
    )


def form_redirect(data: Mapping[str, Any]) -> str | None:
    """The form's ``_redirect`` target as given (trimmed), or None when absent or not a usable URL or path.

    Whether it points to one of the tenant's hosts is the route's decision.
    """
    value = data.get("_redirect")
    if _absent(value) or not isinstance(value, str):
        return None
    value = value.strip()
    if len(value) > URL_MAX_CHARS or _CONTROL.search(value) or "\\" in value:
        return None
    return value


# -- orders ---------------------------------------------------------------------------------------------------------


def parse_order(
    data: Mapping[str, Any],
    *,
    default_region: str | None,
    default_currency: str,
    now: datetime,
) -> ConversionInput:
    """An order from signed server JSON.

    ``order_id`` (a string of at most 255 characters or an integer) and ``value`` are required. ``items`` is a
    list of objects of which the first 100 are kept. ``occurred_at`` (or ``created_at``) is the order's own time,
    RFC 3339 with an offset, at most 15 minutes after `now`.
    """
    data = _require_object(data)
    _check_keys(data, ORDER_KEYS)
    order_id = _identifier("order_id", data.get("order_id"))
    if order_id is None:
        raise InputError("missing_field", "order_id is required", "order_id")
    value = parse_money(data.get("value"))
    if value is None:
        raise InputError("missing_field", "value is required", "value")
    time_field = "occurred_at" if not _absent(data.get("occurred_at")) else "created_at"
    return ConversionInput(
        kind="order",
        source="api",
        external_id=order_id,
        value=value,
        currency=parse_currency(data.get("currency"), default_currency),
        session_ref=_identifier("session_id", data.get("session_id"), SESSION_MAX_CHARS),
        fields=parse_json_object(data.get("fields")),
        items=_items(data.get("items")),
        occurred_at=parse_time(data.get(time_field), now=now, field=time_field),
        **_common(data, default_region=default_region, form=False),
    )
