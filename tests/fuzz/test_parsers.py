"""Property-based fuzzing (hypothesis) of every parser a conversion route hands a request body to.

Fuzzed:

- `halo_proxy.routes.common.parse_json_object`: arbitrary bytes, and JSON documents of arbitrary values (lone surrogates,
  NaN, deep nesting), whole, truncated or with a byte changed.
- `halo_proxy.routes.conversions.parse_form`: urlencoded bodies (arbitrary bytes, encoded pairs, too many fields), and
  multipart/form-data bodies built part by part: arbitrary Content-Type parameters on the request and on each
  part (every codec Python ships as a charset, RFC 2231 ``charset*=``, arbitrary text such as ``"utf-8\\x00"``),
  boundaries that match or not, arbitrary part headers, Content-Transfer-Encoding, RFC 2231 names, files, nested
  multiparts, bare LF line ends, truncated bodies; a well-formed one-field form whose charset alone varies, so
  that every example reaches the decoding; and arbitrary bytes under an arbitrary Content-Type.
- `parse_lead` (JSON and form, and `form_redirect` on the form) and `parse_order`: arbitrary JSON-like values,
  and objects of the contract's keys holding plausible values (emails, phones, decimal strings, RFC 3339 times,
  URLs, texts at the length limits) or arbitrary ones; and `parse_money` alone, whose accepted amounts must equal
  the amount sent exactly (money is never rounded silently).
- `parse_shopify_order` and `parse_stripe_event`: arbitrary values and objects, and realistic payloads with each
  value in turn replaced (by a plausible value for its key or one of any type) or removed, and with one to three
  random mutations at once (also adding a key the adapters read anywhere); and Stripe's two Unix times together
  (seconds or milliseconds, integers of every magnitude).
- `normalise_email` and `normalise_phone`: arbitrary text and values, with arbitrary regions.

"JSON-like" is what `orjson.loads` can hand over (integers within 64 bits, no NaN) widened by NaN, infinities
and lone surrogates (which a form part decoded with a charset such as ``raw_unicode_escape`` can carry).

The property: a parser returns a value, or raises only the error its route turns into a 4xx answer: `ApiError`
for the api and webhooks functions, `InputError` or `IdentityError` for the tracking parsers (the adapters
document `InputError` alone; that their routes must catch it is the routes' business), `IdentityError` for the
normalisers. Any other exception (TypeError, ValueError, LookupError, UnicodeError...) would escape the route as
a 500. A conversion that is returned must also be storable: no text with a NUL (refused by PostgreSQL) or a lone
surrogate (not UTF-8).

Every test is derandomized (the same examples on every run, so a CI failure reproduces locally) and has no
deadline (phonenumbers loads its metadata on first use). No health check is suppressed.
"""

from __future__ import annotations

import base64
import copy
import encodings
import functools
import json
import pkgutil
import quopri
import re
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_proxy.routes.common import ApiError, parse_json_object
from halo_proxy.routes.conversions import parse_form
from halo_proxy.tracking.adapters import AdapterResult, parse_shopify_order, parse_stripe_event
from halo_proxy.tracking.conversion import (
    _DECIMAL_TEXT,
    ERROR_CODES,
    FORM_KEYS,
    LEAD_KEYS,
    ORDER_KEYS,
    InputError,
    form_redirect,
    parse_lead,
    parse_money,
    parse_order,
)
from halo_proxy.tracking.identity import IdentityError, normalise_email, normalise_phone
from halo_proxy.tracking.models import ConversionInput

NOW = datetime(2025, 3, 12, 9, 0, tzinfo=UTC)


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True)


# -- the property ----------------------------------------------------------------------------------------------------


def storable(value: Any, where: str) -> None:
    """No text in `value` (keys included) holds a NUL or a lone surrogate."""
    if isinstance(value, str):
        assert "\x00" not in value, f"{where} holds a NUL"
        value.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key, where)
            storable(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            storable(item, f"{where}[{index}]")


def returns_or_raises(call: Callable[[], Any], *errors: type[Exception]) -> Any:
    """`call()`'s result, or None when it raised one of `errors` (checked for a usable code and message). Any
    other exception propagates and fails the test."""
    try:
        return call()
    except errors as err:
        if isinstance(err, ApiError):
            assert 400 <= err.status < 500 and err.code and err.detail
        elif isinstance(err, InputError):
            assert err.code in ERROR_CODES and err.detail
        elif isinstance(err, IdentityError):
            assert err.field in ("email", "phone") and err.detail
        return None


def check_conversion(call: Callable[[], ConversionInput]) -> None:
    """The lead and order routes catch InputError and IdentityError."""
    conversion = returns_or_raises(call, InputError, IdentityError)
    if conversion is not None:
        assert isinstance(conversion, ConversionInput)
        for field in dataclass_fields(conversion):
            storable(getattr(conversion, field.name), field.name)


def check_adapter(call: Callable[[], AdapterResult]) -> None:
    """The adapters document InputError alone."""
    result = returns_or_raises(call, InputError)
    if result is not None:
        assert isinstance(result, AdapterResult)
        if result.conversion is not None:
            check_conversion(lambda: result.conversion)
        for text in (result.ignored, result.delivery_id, result.topic):
            storable(text, "result")


# -- values ----------------------------------------------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=())  # every code point, lone surrogates included
ANY_TEXT = st.text(ANY_CHAR, max_size=20)
# Text of exactly the lengths the parsers cut or refuse at.
EDGE_LENGTHS = (2, 3, 32, 33, 63, 64, 65, 100, 101, 128, 129, 200, 201, 254, 255, 256, 512, 513, 2000, 2001,
                2048, 2049, 5000, 5001)
LONG_TEXT = st.builds(str.__mul__, st.sampled_from("a1 .@\x00\u00e9\ud800"), st.sampled_from(EDGE_LENGTHS))
TEXT = ANY_TEXT | LONG_TEXT
# Integers of every magnitude within what orjson decodes (st.integers() keeps mostly to small ones, and so
# would a bounded st.integers() for the bit length).
BITS = st.sampled_from(range(65))
INT64 = BITS.flatmap(lambda bits: st.integers(min_value=-min(2**bits, 2**63), max_value=2**bits - 1))
SCALARS = st.none() | st.booleans() | INT64 | st.floats() | TEXT
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3),
    max_leaves=8,
)
OBJECTS = st.dictionaries(ANY_TEXT, JSON, max_size=4)
# Enough to stand in for a value of the wrong type where nesting makes no difference.
SHALLOW = SCALARS | st.lists(SCALARS, max_size=2) | st.dictionaries(ANY_TEXT, SCALARS, max_size=2)


def mostly(usual: st.SearchStrategy[Any], unusual: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three times in four `usual`, else `unusual`; shrinks towards `usual`."""
    return st.integers(min_value=0, max_value=3).flatmap(lambda n: unusual if n == 3 else usual)


def _text_of(alphabet: str, max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(alphabet), min_size=min_size, max_size=max_size)


LABELS = _text_of("abcxyz019-\u00e9\u0159", 8) | ANY_TEXT
EMAILS = st.builds(
    "{}@{}".format, _text_of("abcXYZ019.+-_'\u00e9 ", 12) | ANY_TEXT, st.lists(LABELS, max_size=3).map(".".join)
)
PHONES = st.builds(
    "{}{}".format,
    st.sampled_from(["", "+", "00", "+1 ", "+420 ", "+44 (0) "]),
    _text_of("0123456789 ()-./x\u0661\uff11", 20),  # Arabic-Indic and fullwidth digits too
)
MONEY = (
    st.from_regex(_DECIMAL_TEXT, fullmatch=True)
    | st.builds(  # exponents of every magnitude, which the regex rarely writes
        "{}e{}".format,
        st.sampled_from(["1", "0", "12.5", "0.0001", "-3"]),
        BITS.flatmap(lambda bits: st.integers(-(2**bits), 2**bits)),
    )
    | st.decimals(allow_nan=True, allow_infinity=True).map(str)
    | INT64
    | st.floats()
)
CURRENCIES = _text_of("ABCUSDEURJPYKWDxyz\u00c5 ", 4)
COUNTRIES = _text_of("CZUSGBSKXcz\u00c5 1", 3)
OFFSETS = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
TIMES = st.builds(
    lambda at, offset, zulu: (at.replace(tzinfo=timezone(offset)) if offset is not None else at)
    .isoformat()
    .replace("+00:00", "Z" if zulu else "+00:00"),
    st.datetimes(),
    st.none() | OFFSETS,
    st.booleans(),
)
# Unix times in seconds or in milliseconds (a sender mixing them up) of times around now.
UNIX_TIMES = st.builds(
    lambda at, unit: int(at.replace(tzinfo=UTC).timestamp()) * unit,
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)),
    st.sampled_from([1, 1000]),
)
URLS = st.builds(
    "{}://{}{}".format,
    st.sampled_from(["http", "https", "HTTPS", "ftp", "javascript", ""]),
    _text_of("example.com:80[]@%", 16) | ANY_TEXT,
    st.sampled_from(["", "/", "/p?q=1#f", "/ path", "/\\evil"]),
) | st.sampled_from(["http://[::1", "https://[x]/", "http://a:99999999/", "//example.com/", "/thanks"])
IDS = INT64 | st.uuids().map(str) | TEXT

# Plausible values for the keys the parsers read: they get past the first checks into the deeper ones.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "email": EMAILS,
    "contact_email": EMAILS,
    "customer_email": EMAILS,
    "phone": PHONES,
    "value": MONEY,
    "total_price": MONEY,
    "price": MONEY,
    "currency": CURRENCIES,
    "country": COUNTRIES,
    "country_code": COUNTRIES,
    "occurred_at": TIMES,
    "created_at": TIMES,
    "processed_at": TIMES,
    "event_source_url": URLS,
    "_redirect": URLS,
    "session_id": IDS,
    "halo_session_id": IDS,
    "order_id": IDS,
    "event_id": IDS,
    "id": IDS,
    "consent_marketing": st.booleans() | st.sampled_from(["on", "off", "TRUE", "no", "1", "0", "yes ", "maybe"]),
    "buyer_accepts_marketing": st.booleans(),
    "fields": OBJECTS,
    "items": st.lists(OBJECTS, max_size=3),
    "line_items": st.lists(OBJECTS, max_size=3),
    "admin_graphql_api_id": st.builds("gid://shopify/Order/{}".format, INT64 | TEXT),
    "amount_total": INT64,
    "created": UNIX_TIMES,
    "quantity": INT64,
    "state": st.sampled_from(["subscribed", "not_subscribed", "unsubscribed"]),
    "promotions": st.sampled_from(["opt_in", "opt_out", "none"]),
    "mode": st.sampled_from(["payment", "setup", "subscription"]),
    "type": st.sampled_from(["checkout.session.completed", "payment_intent.created"]),
}


@functools.cache
def value_for(key: str | int) -> st.SearchStrategy[Any]:
    """Three times in four a plausible value for `key` (when there is one), else a value of any type."""
    return mostly(PLAUSIBLE[key], SHALLOW) if key in PLAUSIBLE else SHALLOW


@functools.cache
def text_for(key: str) -> st.SearchStrategy[str]:
    """A form field's value, always text, as the form parser hands it over."""
    return (PLAUSIBLE[key] if key in PLAUSIBLE else TEXT).map(lambda v: v if isinstance(v, str) else str(v)) | TEXT


def contract_objects(keys: frozenset[str], values: Callable[[str], st.SearchStrategy[Any]],
                     required: tuple[str, ...] = ()) -> st.SearchStrategy[dict[str, Any]]:
    """Objects of `keys` (each present or not), sometimes with all of `required`, sometimes with an extra key."""
    optional = {key: values(key) for key in sorted(keys)}
    shapes = [st.fixed_dictionaries({}, optional=optional)]
    if required:
        rest = {key: strategy for key, strategy in optional.items() if key not in required}
        shapes.append(st.fixed_dictionaries({key: values(key) for key in required}, optional=rest))
    extra = st.none() | st.dictionaries(ANY_TEXT, values(""), min_size=1, max_size=2)
    return st.builds(lambda body, more: {**more, **body} if more else body, st.one_of(shapes), extra)


REGIONS = st.none() | COUNTRIES | ANY_TEXT


# -- halo_proxy.routes.common.parse_json_object --------------------------------------------------------------------------------


DAMAGE = st.tuples(mostly(st.just("whole"), st.sampled_from(("cut", "replace", "insert"))),
                   st.floats(0, 1, exclude_max=True), st.integers(min_value=0, max_value=255))


def damage(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` whole (mostly), cut short, or with one byte replaced or inserted."""
    how, where, byte = draw(DAMAGE)
    if how == "whole" or not body:
        return body
    at = int(where * len(body))
    if how == "cut":
        return body[:at]
    return body[:at] + bytes([byte]) + body[at + (how == "replace"):]


@st.composite
def damaged_json(draw: st.DrawFn) -> bytes:
    value, ascii_only = draw(JSON), draw(st.booleans())
    return damage(draw, json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


JSON_BODIES = (
    st.binary(max_size=64)
    | damaged_json()
    | st.builds(lambda n, inner: b"[" * n + inner + b"]" * n, st.integers(0, 3000), st.sampled_from([b"", b"{}"]))
    | st.builds(lambda n: b'{"a":' * n + b"1" + b"}" * n, st.integers(0, 1100))
    | st.sampled_from([b"1e400", b"NaN", b"18446744073709551616", b'"\\ud800"', b"\xef\xbb\xbf{}", b"{}\x00"])
)


@fuzz(100)
@given(JSON_BODIES)
def test_parse_json_object(body):
    data = returns_or_raises(lambda: parse_json_object(body), ApiError)
    assert data is None or isinstance(data, dict)


# -- halo_proxy.routes.conversions.parse_form ----------------------------------------------------------------------------------

# Every codec module Python ships: as a charset each decodes (or refuses) differently.
CODECS = sorted({module.name for module in pkgutil.iter_modules(encodings.__path__)} - {"aliases"})
CODEC_NAMES = st.sampled_from(CODECS)
# A codec name, now and then with an odd character after it (such as "utf-8\x00"), or any text.
CHARSETS = (
    CODEC_NAMES
    | st.builds(str.__add__, CODEC_NAMES, st.sampled_from(["\x00", "\t", '"', "\\", "'", "%", "\u00e9", "\ud800"]))
    | st.sampled_from(["UTF-8", "unknown-8bit", "x-user-defined", ""])
    | ANY_TEXT
)
TOKEN = re.compile(r"[A-Za-z0-9'+_.-]+")
BOUNDARIES = mostly(_text_of("abcXYZ0129'()+_,-./:=? ", 20, min_size=1), ANY_TEXT)
TRANSFER_ENCODINGS = st.sampled_from(
    ["7bit", "8bit", "binary", "base64", "BASE64", "quoted-printable", "x-uuencode", "uuencode", "uue", ""]
) | ANY_TEXT
HEADER_TEXT = st.text(st.characters(codec="latin-1"), max_size=16) | ANY_TEXT
FIELD_NAMES = st.sampled_from(sorted(FORM_KEYS)) | ANY_TEXT


@st.composite
def param(draw: st.DrawFn, name: str, values: st.SearchStrategy[str]) -> str:
    """``; name=value`` quoted, unquoted, RFC 2231 encoded (``name*=charset'lang'%xx``), split (``name*0=``), or
    mangled."""
    value = draw(values)
    style = draw(st.sampled_from(("quoted", "token", "rfc2231", "continued", "raw")))
    if style == "quoted":
        return f'; {name}="{value}"'
    if style == "token":
        return f"; {name}={value}"
    encoded = quote(value.encode("utf-8", "surrogatepass"))
    if style == "rfc2231":
        return f"; {name}*={draw(CHARSETS)}'{draw(HEADER_TEXT)}'{encoded}"
    if style == "continued":
        return f'; {name}*0="{value[:3]}"; {name}*1*={encoded}'
    return f";{name}{draw(HEADER_TEXT)}"


def params(*names: str) -> st.SearchStrategy[str]:
    """Up to two parameters: the named ones or any."""
    anything = st.builds("; {}={}".format, HEADER_TEXT, HEADER_TEXT)
    return st.lists(st.one_of(*(param(name, HEADER_TEXT) for name in names), anything), max_size=2).map("".join)


NAME_PARAM = param("name", FIELD_NAMES)
FILENAME_PARAM = param("filename", HEADER_TEXT)
CHARSET_PARAM = param("charset", CHARSETS)
PART_PARAMS = params("name")
TYPE_PARAMS = params("charset")
FORM_PARAMS = params("charset", "boundary")
DISPOSITIONS = st.sampled_from(["form-data", "FORM-DATA", "attachment", ""])
PART_TYPES = st.sampled_from(["text/plain", "application/octet-stream", "multipart/mixed"]) | HEADER_TEXT
EXTRA_HEADERS = st.lists(st.builds("{}: {}".format, HEADER_TEXT, HEADER_TEXT), max_size=2)
PAYLOADS = st.binary(max_size=24) | TEXT.map(lambda text: text.encode("utf-8", "surrogatepass"))


@st.composite
def part(draw: st.DrawFn, depth: int) -> bytes:
    """One part: a Content-Disposition (now and then none, or with a filename), a Content-Type with a charset,
    a Content-Transfer-Encoding (its payload encoded accordingly or not), headers of any name; at the top level
    now and then a nested multipart."""
    headers: list[str] = []
    if draw(st.integers(0, 9)):
        disposition = draw(DISPOSITIONS) + draw(NAME_PARAM)
        if not draw(st.integers(0, 4)):
            disposition += draw(FILENAME_PARAM)
        headers.append("Content-Disposition: " + disposition + draw(PART_PARAMS))
    if depth == 0 and not draw(st.integers(0, 7)):
        body, content_type = draw(NESTED_MULTIPART)
        headers.append("Content-Type: " + content_type)
    else:
        if draw(st.booleans()):
            headers.append(f"Content-Type: {draw(PART_TYPES)}{draw(CHARSET_PARAM)}{draw(TYPE_PARAMS)}")
        body = draw(PAYLOADS)
        encoding = draw(st.none() | TRANSFER_ENCODINGS)
        if encoding is not None:
            headers.append(f"Content-Transfer-Encoding: {encoding}")
            kind = encoding.strip().lower()
            if kind == "base64" and draw(st.booleans()):
                body = base64.b64encode(body)
            elif kind == "quoted-printable" and draw(st.booleans()):
                body = quopri.encodestring(body)
    headers += draw(EXTRA_HEADERS)
    if draw(st.booleans()):
        headers.reverse()
    return "\r\n".join(headers).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + body


PARTS = {depth: st.lists(part(depth), min_size=1, max_size=3) for depth in (0, 1)}


@st.composite
def multipart_body(draw: st.DrawFn, depth: int = 0, subtype: str = "form-data") -> tuple[bytes, str]:
    """A multipart body and its Content-Type header: the boundary declared is now and then not the one written,
    lines may end in a bare LF, the closing delimiter may be missing, the body may be damaged."""
    boundary = draw(BOUNDARIES)
    written = boundary if draw(st.integers(0, 9)) else draw(BOUNDARIES)
    line_end = b"\r\n" if draw(st.integers(0, 4)) else b"\n"
    delimiter = b"--" + written.encode("utf-8", "surrogatepass")
    body = b"preamble" + line_end if draw(st.booleans()) else b""
    for chunk in draw(PARTS[depth]):
        body += delimiter + line_end + chunk.replace(b"\r\n", line_end) + line_end
    if draw(st.integers(0, 4)):
        body += delimiter + b"--" + line_end
    quoted = draw(st.booleans()) or not TOKEN.fullmatch(boundary)  # a boundary with specials needs quotes
    header = f"multipart/{subtype}; boundary=" + (f'"{boundary}"' if quoted else boundary)
    return damage(draw, body), header + draw(FORM_PARAMS)


NESTED_MULTIPART = multipart_body(1, "mixed")


@st.composite
def one_field_form(draw: st.DrawFn) -> tuple[bytes, str]:
    """A well-formed form of one field, with a charset (every codec, odd spellings, RFC 2231) on the request,
    on the part, or in the part's RFC 2231 ``name*=``: every example reaches the decoding."""
    where = draw(st.sampled_from(("request", "part", "name")))
    request_params = draw(CHARSET_PARAM) if where == "request" else ""
    part_type = f"\r\nContent-Type: text/plain{draw(CHARSET_PARAM)}" if where == "part" else ""
    name = draw(FIELD_NAMES)
    if where == "name":
        disposition = f"; name*={draw(CHARSETS)}''{quote(name.encode('utf-8', 'surrogatepass'))}"
    else:
        disposition = f'; name="{name}"'
    head = f"Content-Disposition: form-data{disposition}{part_type}".encode("utf-8", "surrogatepass")
    body = b"--b\r\n" + head + b"\r\n\r\n" + draw(PAYLOADS) + b"\r\n--b--\r\n"
    return body, "multipart/form-data; boundary=b" + request_params


URLENCODED_TYPES = st.builds(
    "{}{}".format,
    st.sampled_from(["application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded"]),
    params("charset"),
)
URLENCODED_BODIES = (
    st.binary(max_size=64)
    | st.lists(st.tuples(FIELD_NAMES, TEXT), max_size=6).map(
        lambda pairs: urlencode(pairs, encoding="utf-8", errors="surrogatepass").encode()
    )
    | st.integers(190, 210).map(lambda n: b"&".join(b"a%d=1" % i for i in range(n)))
    | st.sampled_from([b"a=%ff", b"a=%", b"=&=&&", b"a=1;b=2", b"%00=%00"])
)


def check_form(body: bytes, content_type: str) -> None:
    fields = returns_or_raises(lambda: parse_form(body, content_type), ApiError)
    if fields is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


@fuzz(100)
@given(URLENCODED_BODIES, URLENCODED_TYPES)
def test_parse_form_urlencoded(body, content_type):
    check_form(body, content_type)


@fuzz(150)
@given(multipart_body())
def test_parse_form_multipart(form):
    check_form(*form)


@fuzz(150)
@given(one_field_form())
def test_parse_form_charsets(form):
    check_form(*form)


@fuzz(100)
@given(st.binary(max_size=64), st.sampled_from(["multipart/form-data; ", "multipart/", ""]), HEADER_TEXT)
def test_parse_form_anything(body, prefix, content_type):
    check_form(body, prefix + content_type)


# -- parse_lead and parse_order ----------------------------------------------------------------------------------------


@fuzz(100)
@given(JSON, REGIONS, st.sampled_from(["api", "form"]), st.booleans())
def test_parse_lead_any_value(data, region, source, session_known):
    check_conversion(lambda: parse_lead(data, source=source, default_region=region, default_currency="CZK",
                                        session_known=session_known))


@fuzz(100)
@given(contract_objects(LEAD_KEYS, value_for), REGIONS)
def test_parse_lead_json(data, region):
    check_conversion(lambda: parse_lead(data, source="api", default_region=region, default_currency="CZK"))


@fuzz(100)
@given(contract_objects(FORM_KEYS, text_for), REGIONS, st.booleans())
def test_parse_lead_form(data, region, session_known):
    check_conversion(lambda: parse_lead(data, source="form", default_region=region, default_currency="CZK",
                                        session_known=session_known))
    redirect = form_redirect(data)  # the route calls it on every form: it may not raise at all
    assert redirect is None or isinstance(redirect, str)


@fuzz(150)
@given(MONEY)
def test_parse_money_never_rounds(value):
    """Besides the property: an amount that is accepted is the amount sent, exactly."""
    text = returns_or_raises(lambda: parse_money(value), InputError)
    if text is not None:
        assert Decimal(text) == Decimal(repr(value) if isinstance(value, float) else str(value).strip())


@fuzz(150)
@given(JSON | contract_objects(ORDER_KEYS, value_for, required=("order_id", "value")), REGIONS)
def test_parse_order(data, region):
    check_conversion(lambda: parse_order(data, default_region=region, default_currency="CZK", now=NOW))


# -- Shopify and Stripe --------------------------------------------------------------------------------------------

# Trimmed from the platforms' documented examples to the keys the adapters read.
SHOPIFY_ORDER: dict[str, Any] = {
    "id": 820982911946154508,
    "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
    "buyer_accepts_marketing": True,
    "contact_email": "jon@doe.ca",
    "created_at": "2019-06-04T13:53:06-04:00",
    "processed_at": "2019-06-04T13:53:07-04:00",
    "currency": "USD",
    "email": "jon@doe.ca",
    "financial_status": "paid",
    "name": "#9999",
    "note_attributes": [{"name": "halo_session_id", "value": "3f2b8c1e-6a4d-4b8e-9a77-0c1d2e3f4a5b"}],
    "attributes": [{"key": "gift", "value": "no"}],
    "phone": "+420 601 234 567",
    "test": True,
    "total_price": "403.00",
    "billing_address": {
        "first_name": "Steve",
        "last_name": "Shipper",
        "phone": "555-555-SHIP",
        "city": "Shippington",
        "zip": "40003",
        "province": "Kentucky",
        "province_code": "KY",
        "country_code": "US",
    },
    "shipping_address": {"phone": "601 234 567", "city": "Praha", "zip": "110 00", "country_code": "CZ"},
    "customer": {
        "email": "john@example.com",
        "first_name": "John",
        "last_name": "Smith",
        "phone": None,
        "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
    },
    "line_items": [
        {"id": 866550311766439020, "product_id": 632910392, "variant_id": 808950810, "sku": "IPOD2008PINK",
         "name": "IPod Nano - 8GB", "title": "IPod Nano", "quantity": 1, "price": "199.00"},
    ],
}
# Newer API versions send no buyer_accepts_marketing: the customer's consent state is read instead.
SHOPIFY_ORDER_CONSENT = {k: v for k, v in SHOPIFY_ORDER.items() if k != "buyer_accepts_marketing"}

STRIPE_EVENT: dict[str, Any] = {
    "id": "evt_1PVwcnR8QWoDuPnP0eRk39Wn",
    "object": "event",
    "created": 1741769700,
    "livemode": False,
    "type": "checkout.session.completed",
    "data": {
        "object": {
            "id": "cs_test_a1uS9U7mL0zDhvwzkx6k7YhmITcD9dQUVp1gkQsMSE4hITV5tzQ7aR4Z9L",
            "object": "checkout.session",
            "amount_total": 25000,
            "client_reference_id": "3f2b8c1e-6a4d-4b8e-9a77-0c1d2e3f4a5b",
            "consent": {"promotions": "opt_in"},
            "created": 1741769400,
            "currency": "usd",
            "customer_details": {
                "address": {"city": "South San Francisco", "country": "US", "postal_code": "94080", "state": "CA"},
                "email": "Jenny.Rosen@Example.com",
                "name": "Jenny Rosen",
                "phone": "+14155552671",
            },
            "customer_email": None,
            "metadata": {"halo_session_id": "3f2b8c1e-6a4d-4b8e-9a77-0c1d2e3f4a5b"},
            "mode": "payment",
            "payment_status": "paid",
        }
    },
}

Path = tuple[str | int, ...]
REMOVE = object()


def paths(document: Any, prefix: Path = ()) -> list[Path]:
    """The path of every value in `document`, depth first."""
    if isinstance(document, dict):
        items: Any = document.items()
    elif isinstance(document, list):
        items = enumerate(document)
    else:
        return []
    found: list[Path] = []
    for key, value in items:
        found.append((*prefix, key))
        found += paths(value, (*prefix, key))
    return found


def value_at(document: Any, path: Path) -> Any:
    for key in path:
        document = document[key]
    return document


def changed(document: dict[str, Any], changes: list[tuple[Path, Any]]) -> dict[str, Any]:
    """A copy of `document` with each path set to its value (REMOVE: deleted); a path an earlier change took
    away (or made a scalar of) is skipped."""
    document = copy.deepcopy(document)
    for path, value in changes:
        try:
            target = value_at(document, path[:-1])
        except (LookupError, TypeError):
            continue
        key = path[-1]
        if isinstance(target, list) and isinstance(key, int) and key < len(target):
            if value is REMOVE:
                del target[key]
            else:
                target[key] = value
        elif isinstance(target, dict) and isinstance(key, str):
            if value is not REMOVE:
                target[key] = value
            elif key in target:
                del target[key]
    return document


SHOPIFY_PATHS = paths(SHOPIFY_ORDER_CONSENT)
STRIPE_PATHS = paths(STRIPE_EVENT)
ADAPTER_KEYS = sorted({key for path in paths(SHOPIFY_ORDER) + STRIPE_PATHS for key in path if isinstance(key, str)})


@functools.cache
def replacement(path: Path) -> st.SearchStrategy[Any]:
    """For the value at `path`, each as likely: removal, a plausible value for its key (when there is one), a
    scalar of any type, a list or an object."""
    key = path[-1]
    kinds = [st.just(REMOVE), SCALARS, st.lists(SCALARS, max_size=2) | st.dictionaries(ANY_TEXT, SCALARS, max_size=2)]
    if key in PLAUSIBLE:
        kinds.append(PLAUSIBLE[key])
    return st.sampled_from(kinds).flatmap(lambda kind: kind)


def mutated(document: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`document` with one to three changes: a value replaced or removed, or a key the adapters read (or any
    key) added to one of its objects."""
    all_paths = paths(document)
    objects = [()] + [path for path in all_paths if isinstance(value_at(document, path), dict)]
    new_path = st.builds(lambda where, key: (*where, key), st.sampled_from(objects),
                         st.sampled_from(ADAPTER_KEYS) | ANY_TEXT)
    change = (st.sampled_from(all_paths) | new_path).flatmap(
        lambda path: replacement(path).map(lambda value: (path, value))
    )
    return st.lists(change, min_size=1, max_size=3).map(lambda changes: changed(document, changes))


def path_ids(all_paths: list[Path]) -> list[str]:
    return [".".join(map(str, path)) for path in all_paths]


def shopify(order: Any, topic: str | None = "orders/paid", region: str | None = "CZ") -> Callable[[], Any]:
    return lambda: parse_shopify_order(order, topic=topic, default_region=region, default_currency="CZK", now=NOW)


def stripe(event: Any, region: str | None = "CZ") -> Callable[[], Any]:
    return lambda: parse_stripe_event(event, default_region=region, default_currency="CZK", now=NOW)


@fuzz(100)
@given(JSON | OBJECTS, st.none() | st.sampled_from(["orders/create", "orders/updated"]) | ANY_TEXT, REGIONS)
def test_parse_shopify_order_any_value(order, topic, region):
    check_adapter(shopify(order, topic, region))


@pytest.mark.parametrize("path", SHOPIFY_PATHS, ids=path_ids(SHOPIFY_PATHS))
@fuzz(15)
@given(data=st.data(), region=REGIONS)
def test_parse_shopify_order_each_field(path, data, region):
    value = data.draw(replacement(path), label="value")
    check_adapter(shopify(changed(SHOPIFY_ORDER_CONSENT, [(path, value)]), region=region))


@fuzz(100)
@given(mutated(SHOPIFY_ORDER) | mutated(SHOPIFY_ORDER_CONSENT), REGIONS)
def test_parse_shopify_order_mutated(order, region):
    check_adapter(shopify(order, region=region))


@fuzz(100)
@given(JSON | OBJECTS, REGIONS)
def test_parse_stripe_event_any_value(event, region):
    check_adapter(stripe(event, region))


@pytest.mark.parametrize("path", STRIPE_PATHS, ids=path_ids(STRIPE_PATHS))
@fuzz(15)
@given(data=st.data(), region=REGIONS)
def test_parse_stripe_event_each_field(path, data, region):
    value = data.draw(replacement(path), label="value")
    check_adapter(stripe(changed(STRIPE_EVENT, [(path, value)]), region))


@fuzz(100)
@given(UNIX_TIMES | INT64 | SHALLOW, UNIX_TIMES | INT64 | SHALLOW)
def test_parse_stripe_event_times(event_created, session_created):
    """Both of Stripe's Unix times at once (the session's is read when the event's is unusable): seconds or
    milliseconds of times around now, integers of every magnitude, other types."""
    event = changed(STRIPE_EVENT, [(("created",), event_created), (("data", "object", "created"), session_created)])
    check_adapter(stripe(event))


@fuzz(100)
@given(mutated(STRIPE_EVENT), REGIONS)
def test_parse_stripe_event_mutated(event, region):
    check_adapter(stripe(event, region))


# -- normalise_email and normalise_phone -----------------------------------------------------------------------------


@fuzz(150)
@given(EMAILS | TEXT | JSON)
def test_normalise_email(text):
    email = returns_or_raises(lambda: normalise_email(text), IdentityError)
    if email is not None:
        storable(email, "email")


@fuzz(150)
@given(PHONES | TEXT | JSON, REGIONS | JSON)
def test_normalise_phone(text, region):
    phone = returns_or_raises(lambda: normalise_phone(text, region), IdentityError)
    if phone is not None:
        assert phone.startswith("+") and phone[1:].isdigit() and phone.isascii()
