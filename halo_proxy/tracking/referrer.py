"""The Referer header: which external site sent the visitor, and what kind of site it is."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from halo_proxy.tracking.sources import classify_host
from halo_proxy.tracking.text import has_control, redact

REFERRER_URL_MAX_LENGTH = 1024
REFERRER_DOMAIN_MAX_LENGTH = 253

# Hostnames, IP literals and Android package ids; unicode letters are allowed for IDN hosts.
_HOST = re.compile(r"[\w.-]+|[0-9a-f:.]+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Referrer:
    """An external referrer. `domain` is the lowercased host without `www.`; `category` is one of
    search | social | video | email | shopping | other; `name` the engine or network name when known ("google")."""

    domain: str
    url: str
    category: str
    name: str | None = None


def strip_port(host: str) -> str:
    """Lowercased host without port or trailing dot; IPv6 brackets are kept (`[::1]:8080` -> `[::1]`)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _bare(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


def matches_host_pattern(host: str, pattern: str) -> bool:
    """`host` (lowercased, no port) against a tenant host pattern: exact, or `*.example.com` for any subdomain."""
    pattern = strip_port(pattern)
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def is_self_referral(host: str, request_host: str | None, tenant_hosts: Iterable[str]) -> bool:
    """True when `host` is the request's own host or one of the tenant's hosts (`www.` ignored on both sides)."""
    bare = _bare(host)
    if request_host and bare == _bare(strip_port(request_host)):
        return True
    return any(matches_host_pattern(host, p) or matches_host_pattern(bare, p) for p in tenant_hosts)


def _host_of(referer: str) -> tuple[str, str] | None:
    """(host, url) of a Referer value, or None when it is not an http(s) or android-app URL with a host."""
    try:
        parts = urlsplit(referer)
        host = parts.hostname
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "android-app") or not host:
        return None
    host = host.rstrip(".")
    if not host or not _HOST.fullmatch(host):
        return None
    # Kept: scheme, host and path, which attribution needs. Not kept: the query and fragment (search terms,
    # emails and tokens in other sites' URLs), userinfo and port; personal data in the path is redacted.
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}{redact(unquote(parts.path))}"
    return host, url


def parse_referrer(
    referer: str | None,
    request_host: str | None = None,
    tenant_hosts: Iterable[str] = (),
) -> Referrer | None:
    """The external referrer of a request, or None for no header, garbage, or a self-referral.

    `request_host` is the request's Host header (port ignored); `tenant_hosts` the tenant's host patterns.
    """
    if not referer:
        return None
    referer = referer.strip()
    if not referer or has_control(referer):
        return None
    found = _host_of(referer)
    if found is None:
        return None
    host, url = found
    if is_self_referral(host, request_host, tenant_hosts):
        return None
    domain = _bare(host)[:REFERRER_DOMAIN_MAX_LENGTH]
    category, name = classify_host(domain)
    return Referrer(domain=domain, url=url[:REFERRER_URL_MAX_LENGTH], category=category, name=name)
