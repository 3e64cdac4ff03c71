"""Visitor country, region and city from the geolocation headers that CDNs and edge platforms add.

These headers are only trustworthy when the origin is reachable solely through that edge; otherwise a client can
send them itself. `edges` lets the caller restrict reading to the edge actually deployed.

Edges, in order of precedence (the first one that gives a valid country or any value wins, and all three fields come
from that one edge, never mixed):

| edge       | country                     | region                                 | city                        |
|------------|-----------------------------|----------------------------------------|-----------------------------|
| cloudflare | cf-ipcountry (not XX/T1)    | cf-region-code, else cf-region         | cf-ipcity                   |
| akamai     | x-akamai-edgescape country_code | region_code                        | city                        |
| fastly     | fastly-geo-country          | fastly-geo-region                      | fastly-geo-city             |
| cloudfront | cloudfront-viewer-country   | cloudfront-viewer-country-region       | cloudfront-viewer-city      |
| vercel     | x-vercel-ip-country         | x-vercel-ip-country-region             | x-vercel-ip-city (%-encoded)|
| generic    | x-geo-country               | x-geo-region                           | x-geo-city                  |

Fastly sends no geo headers by default; the `fastly-geo-*` names are what a VCL snippet sets from
`client.geo.country_code`, `client.geo.region` and `client.geo.city`. `x-geo-*` is the same convention for any other
edge or load balancer. Edges that usually sit outermost (Cloudflare, Akamai, Fastly) come before platforms that are
often placed behind them (CloudFront, Vercel).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from urllib.parse import unquote

from halo_proxy.tracking.models import Geo
from halo_proxy.tracking.text import clean

REGION_MAX_LENGTH = 64
CITY_MAX_LENGTH = 100
_UNKNOWN_COUNTRIES = frozenset({"XX", "T1", "ZZ"})

Headers = Mapping[str, str]


def _country(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().upper()
    if len(value) != 2 or not value.isascii() or not value.isalpha() or value in _UNKNOWN_COUNTRIES:
        return None
    return value


def _percent_decoded(value: str | None) -> str | None:
    """`decodeURIComponent` semantics: a value that does not decode to UTF-8 is kept as sent."""
    if not value:
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return value


def _geo(country: str | None, region: str | None, city: str | None, *, decode: bool = False) -> Geo | None:
    if decode:
        region = _percent_decoded(region)
        city = _percent_decoded(city)
    geo = Geo(
        country=_country(country),
        region=clean(region, REGION_MAX_LENGTH),
        city=clean(city, CITY_MAX_LENGTH),
    )
    if geo.country is None and geo.region is None and geo.city is None:
        return None
    return geo


def _cloudflare(headers: Headers) -> Geo | None:
    return _geo(
        headers.get("cf-ipcountry"),
        headers.get("cf-region-code") or headers.get("cf-region"),
        headers.get("cf-ipcity"),
    )


def _akamai(headers: Headers) -> Geo | None:
    raw = headers.get("x-akamai-edgescape")
    if not raw:
        return None
    fields: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return _geo(fields.get("country_code"), fields.get("region_code"), fields.get("city"))


def _fastly(headers: Headers) -> Geo | None:
    return _geo(headers.get("fastly-geo-country"), headers.get("fastly-geo-region"), headers.get("fastly-geo-city"))


def _cloudfront(headers: Headers) -> Geo | None:
    return _geo(
        headers.get("cloudfront-viewer-country"),
        headers.get("cloudfront-viewer-country-region"),
        headers.get("cloudfront-viewer-city"),
    )


def _vercel(headers: Headers) -> Geo | None:
    return _geo(
        headers.get("x-vercel-ip-country"),
        headers.get("x-vercel-ip-country-region"),
        headers.get("x-vercel-ip-city"),
        decode=True,
    )


def _generic(headers: Headers) -> Geo | None:
    return _geo(headers.get("x-geo-country"), headers.get("x-geo-region"), headers.get("x-geo-city"))


EDGE_READERS: dict[str, Callable[[Headers], Geo | None]] = {
    "cloudflare": _cloudflare,
    "akamai": _akamai,
    "fastly": _fastly,
    "cloudfront": _cloudfront,
    "vercel": _vercel,
    "generic": _generic,
}
EDGES: tuple[str, ...] = tuple(EDGE_READERS)

NO_GEO = Geo()

# Every header a reader looks at: when none is present (most requests), no reader needs to run.
GEO_HEADERS: tuple[str, ...] = (
    "cf-ipcountry", "cf-region-code", "cf-region", "cf-ipcity",
    "x-akamai-edgescape",
    "fastly-geo-country", "fastly-geo-region", "fastly-geo-city",
    "cloudfront-viewer-country", "cloudfront-viewer-country-region", "cloudfront-viewer-city",
    "x-vercel-ip-country", "x-vercel-ip-country-region", "x-vercel-ip-city",
    "x-geo-country", "x-geo-region", "x-geo-city",
)


def geo_from_headers(headers: Headers, edges: Iterable[str] = EDGES) -> Geo:
    """Country (ISO alpha-2, uppercase), region and city from the first edge in `edges` that provides them."""
    for name in GEO_HEADERS:
        if name in headers:
            break
    else:
        return NO_GEO
    for edge in edges:
        reader = EDGE_READERS.get(edge)
        if reader is None:
            continue
        found = reader(headers)
        if found is not None:
            return found
    return NO_GEO
