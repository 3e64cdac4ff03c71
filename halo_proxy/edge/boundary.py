"""The trust boundary's rules as pure functions: the Host header, URLs a visitor hands us, the reserved path,
and which request header names never pass. Strings in, decisions out; no I/O.

Written here rather than taken from urllib or yarl because those are lenient where a proxy must be strict:
`urlsplit("http://a.test:1@evil.com").hostname` is `evil.com` while a naive split sees `a.test`, yarl resolves
dot segments before routing, and neither knows how origin servers (Tomcat's `;params`, IIS's backslashes and
trailing dots, double percent-decoding) turn an odd path into a reserved one.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import NamedTuple

# RFC 9110 7.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ]. HaloTrack serves DNS names, so a reg-name is
# letters, digits, "-", "." and "_" (no sub-delims, no percent-encoding), or a bracketed IPv6 literal.
_HOST_RE = re.compile(r"(?:\[([0-9A-Fa-f:.]{2,45})\]|([A-Za-z0-9_.-]{1,253}))(?::([0-9]{0,5}))?")
# An absolute URL a visitor gave us (Referer, Origin, `_redirect`): scheme, authority, the rest.
_URL_RE = re.compile(r"(https?)://([^/?#]*)([/?#].*)?", re.IGNORECASE | re.DOTALL)
# Characters that browsers strip or reinterpret inside URLs (tabs, newlines), or that no URL may hold.
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class Host(NamedTuple):
    name: str  # lowercased, no trailing dot; an IPv6 literal keeps its brackets
    port: int | None


def parse_host(value: str | None) -> Host | None:
    """A Host header (or URL authority) as RFC 9110 allows it, or None when it is anything else.
    Cached: a proxy sees the same few Host values over and over.

    `shop.example`, `SHOP.example.:8080`, `[::1]:80`, `127.0.0.1` parse; `a.test:1@evil.com`, `a.test:abc`,
    `a.test:99999`, `a b`, an empty value and userinfo do not.
    """
    if not value:
        return None
    return _parse_host(value)


@functools.lru_cache(maxsize=4096)
def _parse_host(value: str) -> Host | None:
    match = _HOST_RE.fullmatch(value)
    if match is None:
        return None
    literal, name, port_text = match.groups()
    if literal is not None:
        try:
            address = ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        name = f"[{address.compressed}]"
    else:
        name = name.lower()
        if name.endswith("."):
            name = name[:-1]
        if not name or name.startswith(".") or ".." in name:
            return None
    port = None
    if port_text:
        port = int(port_text)
        if port > 65535:
            return None
    return Host(name, port)


class Url(NamedTuple):
    scheme: str  # http | https
    host: Host
    rest: str  # path, query and fragment as given ("" when none)


def parse_url(value: str | None) -> Url | None:
    """An absolute http(s) URL with a host and no userinfo, or None. Strict on purpose: anything a browser
    would read differently from this parser (backslashes, tabs, `@`) is refused rather than guessed."""
    if not value or _UNSAFE_URL_CHARS.search(value):
        return None
    match = _URL_RE.fullmatch(value)
    if match is None:
        return None
    scheme, authority, rest = match.groups()
    host = parse_host(authority)
    if host is None:
        return None
    return Url(scheme.lower(), host, rest or "")


def local_path(value: str | None) -> bool:
    """A same-site relative target (`/thanks?x=1`): starts with one `/`, and no browser reads it as another
    host (`//evil.com`, `/\\evil.com`, a tab or newline inside)."""
    return bool(value) and value[0] == "/" and (len(value) == 1 or value[1] not in "/\\") \
        and _UNSAFE_URL_CHARS.search(value) is None  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------------
# The reserved prefix, on the path as origin servers may read it.

_PCT_RE = re.compile(r"%([0-9A-Fa-f]{2})")
# Only paths holding one of these can normalise into something other than their lowercase form.
_ODD = re.compile(r"[%\\;]|\./|//|\.$")


def _percent_decode(text: str) -> str:
    return _PCT_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def normalise_path(path: str) -> str:
    """The path as a lenient origin might resolve it: percent-decoded (twice, for double-encoding), `\\` as
    `/`, `;params` and trailing dots or spaces of segments dropped, repeated slashes folded, dot segments
    removed (RFC 3986 5.2.4), lowercased. Used only to decide; the path forwarded is always the raw one."""
    for _ in range(2):
        decoded = _percent_decode(path)
        if decoded == path:
            break
        path = decoded
    path = path.replace("\\", "/")
    out: list[str] = []
    for segment in path.split("/"):
        segment = segment.split(";", 1)[0]
        core = segment.rstrip(". ")
        if core:
            segment = core
        else:  # only dots and spaces: `..;`, `.. `, `...` are `..` to Tomcat, Jetty or IIS
            dots = segment.count(".")
            segment = ".." if dots >= 2 else ("." if dots else "")
        if segment == "" or segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    trailing = "/" if path.endswith("/") and out else ""
    return ("/" + "/".join(out) + trailing).lower()


def reaches_prefix(raw_path: str, prefix: str) -> bool:
    """Whether a request path (without query) is, or could be read by an origin as, under `prefix`.

    The common path (no `%`, `\\`, `./`, `//` or `;`, not ending in `.`) costs a few substring checks.
    """
    n = len(prefix)
    if _ODD.search(raw_path) is None:
        return raw_path[:n].lower() == prefix.lower() and (len(raw_path) == n or raw_path[n] == "/")
    normal = normalise_path(raw_path)
    low = prefix.lower()
    return normal == low or normal.startswith(low + "/")


# ---------------------------------------------------------------------------------------------------------
# Request header names.

# Headers whose meaning HaloTrack sets or strips on the way upstream. A name with `_` whose dashed form is one
# of these is dropped: CGI/WSGI origins (and PHP, Rails behind them) read `X_Forwarded_For` as the real header.
# What origins and frameworks read as the visitor's scheme, port, path prefix, URL or address (Rack reads
# X-Forwarded-Ssl before X-Forwarded-Proto; IIS and Symfony route on X-Original-URL; CDNs' client-IP headers):
# believed only from `trusted_proxies`, so dropped from anyone else.
TRUSTED_ONLY_HEADERS = frozenset((
    "x-forwarded-ssl", "x-forwarded-scheme", "front-end-https", "x-url-scheme", "x-forwarded-port",
    "x-forwarded-prefix", "x-forwarded-server", "x-original-url", "x-rewrite-url", "true-client-ip",
    "cf-connecting-ip", "x-client-ip", "x-cluster-client-ip", "fastly-client-ip", "x-original-forwarded-for",
))
GUARDED_REQUEST_HEADERS = frozenset((
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade", "via",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip",
)) | TRUSTED_ONLY_HEADERS


def underscore_alias(lname: str) -> bool:
    """`lname` (lowercased) spells a guarded header with `_` in place of `-`."""
    return "_" in lname and lname.replace("_", "-") in GUARDED_REQUEST_HEADERS


def content_length(value: str) -> int | None:
    """A Content-Length value as a number (leading zeros allowed, as RFC 9110 8.6 does), or None when it is
    not one decimal number of at most 15 digits (9 PB: nothing larger is a real request body)."""
    value = value.strip(" \t")
    if not value or len(value) > 15 or not value.isdigit() or not value.isascii():
        return None
    return int(value)
