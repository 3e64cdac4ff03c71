"""Tenant YAML -> validated, frozen settings.

This module is the only home of defaults. Every error names the file, the tenant and the field, as
`PATH:tenant[ID].field: message`, so an operator can fix a whole file in one pass. `${VAR}` in string values
is read from the environment passed in (never at import time), or from the file `VAR_FILE` names (a mounted
secret); a missing variable is an error naming it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from .edge.boundary import parse_host

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TENANT_ID_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
HOST_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
REGION_RE = re.compile(r"^[A-Z]{2}$")
SCOPES = frozenset({"report", "privacy"})


class ConfigError(Exception):
    """The tenant file is invalid. `errors` holds every problem, each already formatted for an operator."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


# ---------------------------------------------------------------------------------------------------------
# Settings types. Defaults live here and nowhere else.


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 30.0


@dataclass(frozen=True, slots=True)
class CookieSettings:
    name: str = "_halo"
    max_age_days: int = 365
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentSettings:
    unknown: str = "granted"  # granted | denied
    onetrust_analytics_groups: tuple[str, ...] = ("C0002",)
    onetrust_marketing_groups: tuple[str, ...] = ("C0004",)


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class MetaSettings:
    pixel_id: str
    access_token: str
    base_url: str = "https://graph.facebook.com"
    api_version: str = "v27.0"  # released 2026-11-04; older versions stay available for about two years
    test_event_code: str | None = None


@dataclass(frozen=True, slots=True)
class Ga4Settings:
    measurement_id: str
    api_secret: str
    base_url: str = "https://www.google-analytics.com"


@dataclass(frozen=True, slots=True)
class GoogleAdsSettings:
    account_id: str
    conversion_action_id: str
    access_token: str
    base_url: str = "https://datamanager.googleapis.com"
    login_account_id: str | None = None


@dataclass(frozen=True, slots=True)
class TikTokSettings:
    pixel_code: str
    access_token: str
    base_url: str = "https://business-api.tiktok.com"
    test_event_code: str | None = None


@dataclass(frozen=True, slots=True)
class Forwarders:
    meta: MetaSettings | None = None
    ga4: Ga4Settings | None = None
    google_ads: GoogleAdsSettings | None = None
    tiktok: TikTokSettings | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: float = 5.0
    burst: int = 20


@dataclass(frozen=True, slots=True)
class Retention:
    sessions: int = 395  # sessions inactive this long go, with their touches, events and consent history
    anon_events: int = 90
    forwards: int = 90  # finished forwards (sent, dead, skipped, cancelled) and their ledger
    events: int = 395  # custom events, also of sessions still active


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    hosts: tuple[str, ...]
    upstream: str
    currency: str = "EUR"
    default_phone_region: str | None = None
    cookie: CookieSettings = field(default_factory=CookieSettings)
    consent: ConsentSettings = field(default_factory=ConsentSettings)
    webhook_secret: str | None = None
    api_keys: tuple[ApiKey, ...] = ()
    forwarders: Forwarders = field(default_factory=Forwarders)
    timeouts: Timeouts = field(default_factory=Timeouts)
    upstream_host: str = "original"  # original | upstream
    timezone: str = "UTC"
    lookback_days: int = 90
    shopify_secret: str | None = None
    stripe_secret: str | None = None
    external_origins: tuple[str, ...] = ()
    # When set, the dashboard answers only on these of the tenant's hosts (a host of its own: the site's scripts
    # on the other hosts cannot read it).
    dashboard_hosts: tuple[str, ...] = ()
    inject_script: bool = True
    retention: Retention = field(default_factory=Retention)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    max_body_bytes: int = 64 * 1024

    @property
    def upstream_origin(self) -> str:
        return self.upstream.rstrip("/")


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """The delivery worker that every proxy process runs."""

    batch: int = 500  # rows claimed per round, per platform lane
    concurrency: int = 16  # requests in flight at once per platform lane
    lease_s: float = 60.0  # a claimed row is someone else's after this unless renewed; must outlast a send
    poll_s: float = 1.0  # how often an idle worker looks for due rows
    send_timeout_s: float = 10.0
    backoff_base_s: float = 5.0
    backoff_cap_s: float = 3600.0
    max_attempts: int = 20


@dataclass(frozen=True, slots=True)
class StopSettings:
    """What SIGTERM does: readyz answers 503 for `drain_s` (the load balancer stops sending), then the listener
    closes, requests in flight finish and the delivery worker stops, all within `timeout_s`."""

    drain_s: float = 2.0
    timeout_s: float = 25.0


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Visitor connections to the proxy. Read when the listener starts: a change takes effect at restart."""

    header_timeout_s: float = 20.0  # a request head not complete by then: the connection is closed
    idle_timeout_s: float = 60.0  # a keep-alive connection idle this long is closed
    body_timeout_s: float = 30.0  # no progress on a request body for this long: 408 and close
    max_connections: int = 10000  # per process; past it a new connection gets 503 and is closed


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """How each process uses PostgreSQL (HALO_DATABASE_URL). Read from the environment at start
    (`database_settings`), not from the tenant file: the admin commands, which take no tenant file, need it too."""

    pool_size: int = 32  # connections one process opens at most (HALO_DATABASE_POOL_SIZE)
    # Prepared statements kept per connection (HALO_DATABASE_STATEMENT_CACHE). 0 behind PgBouncer in transaction
    # mode, whose server connections change between transactions: a statement prepared on one is missing on the
    # next.
    statement_cache_size: int = 100


@dataclass(frozen=True, slots=True)
class ServerSettings:
    reserved_prefix: str = "/_halo"
    trusted_proxies: tuple[IPNetwork, ...] = ()
    client: ClientSettings = field(default_factory=ClientSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    stop: StopSettings = field(default_factory=StopSettings)


@dataclass(frozen=True)
class Settings:
    """A whole validated tenant file. Immutable: a reload builds a new one and swaps it in."""

    path: str
    server: ServerSettings
    tenants: tuple[Tenant, ...]
    _exact: Mapping[str, Tenant] = field(repr=False, compare=False, default_factory=lambda: MappingProxyType({}))
    _wildcards: tuple[tuple[str, Tenant], ...] = field(repr=False, compare=False, default=())

    def tenant_for_host(self, host: str | None) -> Tenant | None:
        """The tenant serving a Host header value (port ignored, case-insensitive), or None, also for a value
        that is not a valid Host (`a.test:1@evil.com`)."""
        parsed = parse_host(host)
        return None if parsed is None else self.tenant_for_name(parsed.name)

    def tenant_for_name(self, name: str) -> Tenant | None:
        """The tenant serving a host name already parsed by `edge.boundary.parse_host` (lowercase, no port)."""
        tenant = self._exact.get(name)
        if tenant is not None:
            return tenant
        for suffix, candidate in self._wildcards:
            if name.endswith(suffix):
                return candidate
        return None

    def tenant(self, tenant_id: str) -> Tenant | None:
        for tenant in self.tenants:
            if tenant.id == tenant_id:
                return tenant
        return None

    def summary(self) -> str:
        hosts = sum(len(t.hosts) for t in self.tenants)
        return f"{self.path}: ok, {len(self.tenants)} tenant(s), {hosts} host(s), reserved prefix {self.server.reserved_prefix}"


# ---------------------------------------------------------------------------------------------------------
# Validation machinery: a field reader that collects errors instead of stopping at the first.


class _Missing:
    """A value whose ${VAR} was not set: already reported, so no further checks run on it."""


_MISSING = _Missing()


class _Reader:
    def __init__(self, path: str, env: Mapping[str, str]):
        self.path = path
        self.env = env
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.path}:{where}: {message}")

    def expand(self, where: str, value: Any) -> Any:
        if not isinstance(value, str) or "${" not in value:
            return value

        found: dict[str, str] = {}
        for name in ENV_RE.findall(value):
            text = self._variable(where, name)
            if text is not None:
                found[name] = text
        if len(found) < len(set(ENV_RE.findall(value))):
            return _MISSING
        return ENV_RE.sub(lambda match: found[match.group(1)], value)

    def _variable(self, where: str, name: str) -> str | None:
        """`${NAME}`: the variable NAME, else the contents of the file that NAME_FILE names (a mounted secret)."""
        if name in self.env:
            return self.env[name]
        path = self.env.get(f"{name}_FILE")
        if not path:
            self.error(where, f"environment variable {name} is not set")
            return None
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            self.error(where, f"{name}_FILE={path} cannot be read: {reason}")
            return None

    def section(self, where: str, raw: Any, known: set[str]) -> dict[str, Any] | None:
        """A mapping with only known keys (unknown keys are errors), values with ${VAR} expanded."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.error(where, f"must be a mapping, got {_kind(raw)}")
            return None
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str) or key not in known:
                hint = _closest(str(key), known)
                self.error(f"{where}.{key}", "unknown key" + (f" (did you mean '{hint}'?)" if hint else ""))
                continue
            out[key] = self.expand(f"{where}.{key}", value)
        return out

    def get(
        self,
        where: str,
        data: dict[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        *,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        if key not in data or data[key] is None:
            if required:
                self.error(f"{where}.{key}", "is required")
            return default
        value = data[key]
        if value is _MISSING:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if bool not in kinds and isinstance(value, bool):
            self.error(f"{where}.{key}", f"must be {_names(kinds)}, got a boolean")
            return default
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if str in kinds and isinstance(value, (int, float)) and not isinstance(value, bool) and len(kinds) == 1:
            value = str(value)  # ids such as pixel_id: 123 are written unquoted
        if not isinstance(value, kinds):
            self.error(f"{where}.{key}", f"must be {_names(kinds)}, got {_kind(value)}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.error(f"{where}.{key}", problem)
                return default
        return value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _names(kinds: tuple[type, ...]) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a mapping"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)


def _closest(key: str, known: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
    return match[0] if match else None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _https_or_http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return None


def _upstream_url(value: str) -> str | None:
    problem = _https_or_http_url(value)
    if problem:
        return problem
    parts = urlsplit(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be an origin (scheme, host and optional port) without a path or query"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "has an invalid port"
    return None


def _timezone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone '{value}'"
    return None


# ---------------------------------------------------------------------------------------------------------
# Sections.

_TOP_KEYS = {"server", "tenants"}
_SERVER_KEYS = {"reserved_prefix", "trusted_proxies", "client", "outbox", "stop"}
_STOP_KEYS = {"drain_s", "timeout_s"}
_CLIENT_KEYS = {"header_timeout_s", "idle_timeout_s", "body_timeout_s", "max_connections"}
_OUTBOX_KEYS = {"batch", "concurrency", "lease_s", "poll_s", "send_timeout_s", "backoff_base_s", "backoff_cap_s",
                "max_attempts"}
_TENANT_KEYS = {
    "id", "hosts", "upstream", "currency", "default_phone_region", "cookie", "consent", "webhook_secret",
    "api_keys", "forwarders", "timeouts", "upstream_host", "timezone", "attribution", "shopify_secret",
    "stripe_secret", "external_origins", "inject", "retention_days", "rate_limit", "max_body_kb",
    "dashboard_hosts",
}


def _server(r: _Reader, raw: Any) -> ServerSettings:
    data = r.section("server", raw, _SERVER_KEYS)
    if data is None:
        return ServerSettings()
    prefix = r.get("server", data, "reserved_prefix", str, "/_halo",
                   check=lambda v: None if re.fullmatch(r"/[A-Za-z0-9_.~-]+", v)
                   else "must be one path segment starting with '/', such as /_halo")
    networks: list[IPNetwork] = []
    proxies = r.get("server", data, "trusted_proxies", list, [])
    for i, item in enumerate(proxies):
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            r.error(f"server.trusted_proxies[{i}]", f"'{item}' is not an IP address or CIDR")
    outbox = OutboxSettings()
    odata = r.section("server.outbox", data.get("outbox"), _OUTBOX_KEYS)
    if odata:
        w = "server.outbox"
        d = OutboxSettings()
        outbox = OutboxSettings(
            batch=r.get(w, odata, "batch", int, d.batch, check=lambda v: None if 1 <= v <= 5000
                        else "must be between 1 and 5000"),
            concurrency=r.get(w, odata, "concurrency", int, d.concurrency, check=lambda v: None if 1 <= v <= 64
                              else "must be between 1 and 64"),
            lease_s=r.get(w, odata, "lease_s", float, d.lease_s, check=_positive),
            poll_s=r.get(w, odata, "poll_s", float, d.poll_s, check=_positive),
            send_timeout_s=r.get(w, odata, "send_timeout_s", float, d.send_timeout_s, check=_positive),
            backoff_base_s=r.get(w, odata, "backoff_base_s", float, d.backoff_base_s, check=_positive),
            backoff_cap_s=r.get(w, odata, "backoff_cap_s", float, d.backoff_cap_s, check=_positive),
            max_attempts=r.get(w, odata, "max_attempts", int, d.max_attempts, check=_positive),
        )
        if outbox.lease_s <= outbox.send_timeout_s:
            r.error("server.outbox.lease_s", "must be longer than send_timeout_s, or a slow send is sent twice")
    client = ClientSettings()
    cdata = r.section("server.client", data.get("client"), _CLIENT_KEYS)
    if cdata:
        w = "server.client"
        d = ClientSettings()
        client = ClientSettings(
            header_timeout_s=r.get(w, cdata, "header_timeout_s", float, d.header_timeout_s, check=_positive),
            idle_timeout_s=r.get(w, cdata, "idle_timeout_s", float, d.idle_timeout_s, check=_positive),
            body_timeout_s=r.get(w, cdata, "body_timeout_s", float, d.body_timeout_s, check=_positive),
            max_connections=r.get(w, cdata, "max_connections", int, d.max_connections,
                                  check=lambda v: None if 1 <= v <= 1_000_000 else "must be between 1 and 1000000"),
        )
    stop = StopSettings()
    sdata = r.section("server.stop", data.get("stop"), _STOP_KEYS)
    if sdata:
        w = "server.stop"
        d = StopSettings()
        stop = StopSettings(
            drain_s=r.get(w, sdata, "drain_s", float, d.drain_s,
                          check=lambda v: None if 0 <= v <= 300 else "must be between 0 and 300"),
            timeout_s=r.get(w, sdata, "timeout_s", float, d.timeout_s,
                            check=lambda v: None if 1 <= v <= 3600 else "must be between 1 and 3600"),
        )
        # Shorter than drain_s + outbox.send_timeout_s is allowed (a fast stop): a send in flight may then be
        # cut off, released in doubt, and the process exits 3.
        if stop.timeout_s <= stop.drain_s:
            r.error("server.stop.timeout_s", "must be longer than drain_s, or nothing in flight can finish")
    return ServerSettings(reserved_prefix=prefix, trusted_proxies=tuple(networks), client=client, outbox=outbox,
                          stop=stop)


# A tenant with every default, read for the defaults of the keys `_tenant` validates (never written twice).
_TENANT_DEFAULTS = Tenant(id="", hosts=(), upstream="")


def _tenant(r: _Reader, raw: Any, index: int) -> Tenant | None:
    label = f"tenant[{index}]"
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        label = f"tenant[{raw['id']}]"
    data = r.section(label, raw, _TENANT_KEYS)
    if data is None:
        return None
    before = len(r.errors)
    tid = r.get(label, data, "id", str, required=True,
                check=lambda v: None if TENANT_ID_RE.match(v) else "must match [a-z0-9_-]{1,64}")
    hosts_raw = r.get(label, data, "hosts", list, [], required=True)
    hosts: list[str] = []
    for i, host in enumerate(hosts_raw):
        if not isinstance(host, str) or not HOST_RE.match(host.lower().rstrip(".")):
            r.error(f"{label}.hosts[{i}]", f"'{host}' is not a host name or a '*.' wildcard host")
        else:
            hosts.append(host.lower().rstrip("."))
    if "hosts" in data and not hosts_raw:
        r.error(f"{label}.hosts", "must list at least one host")
    upstream = r.get(label, data, "upstream", str, required=True, check=_upstream_url)
    base = _TENANT_DEFAULTS
    currency = r.get(label, data, "currency", str, base.currency,
                     check=lambda v: None if CURRENCY_RE.match(v) else "must be an ISO 4217 code such as EUR")
    region = r.get(label, data, "default_phone_region", str, None,
                   check=lambda v: None if REGION_RE.match(v) else "must be an ISO 3166 alpha-2 code such as CZ")

    cookie = _cookie(r, label, data.get("cookie"))
    consent = _consent(r, label, data.get("consent"))
    api_keys = _api_keys(r, label, data)
    forwarders = _forwarders(r, f"{label}.forwarders", data.get("forwarders"))
    timeouts = _timeouts(r, label, data.get("timeouts"))
    attribution = r.section(f"{label}.attribution", data.get("attribution"), {"lookback_days"}) or {}
    lookback = r.get(f"{label}.attribution", attribution, "lookback_days", int, base.lookback_days,
                     check=lambda v: None if 1 <= v <= 730 else "must be between 1 and 730")
    inject = r.section(f"{label}.inject", data.get("inject"), {"script"}) or {}
    retention = _retention(r, label, data.get("retention_days"))
    rate = _rate_limit(r, label, data.get("rate_limit"))
    origins = _origins(r, label, data)
    dashboard_hosts = _dashboard_hosts(r, label, data, hosts)

    tenant = Tenant(
        id=tid or "",
        hosts=tuple(hosts),
        upstream=upstream or "",
        currency=currency,
        default_phone_region=region,
        cookie=cookie,
        consent=consent,
        webhook_secret=r.get(label, data, "webhook_secret", str, None,
                             check=lambda v: None if len(v) >= 16 else "must be at least 16 characters"),
        api_keys=api_keys,
        forwarders=forwarders,
        timeouts=timeouts,
        upstream_host=r.get(label, data, "upstream_host", str, base.upstream_host,
                            check=lambda v: None if v in ("original", "upstream") else "must be 'original' or 'upstream'"),
        timezone=r.get(label, data, "timezone", str, base.timezone, check=_timezone),
        lookback_days=lookback,
        shopify_secret=r.get(label, data, "shopify_secret", str, None),
        stripe_secret=r.get(label, data, "stripe_secret", str, None),
        external_origins=tuple(origins),
        dashboard_hosts=tuple(dashboard_hosts),
        inject_script=r.get(f"{label}.inject", inject, "script", bool, base.inject_script),
        retention=retention,
        rate_limit=rate,
        max_body_bytes=1024 * r.get(label, data, "max_body_kb", int, base.max_body_bytes // 1024,
                                    check=lambda v: None if 1 <= v <= 10240 else "must be between 1 and 10240"),
    )
    return tenant if len(r.errors) == before else None


# Tenant sections: each reads one mapping of the tenant, defaults from its dataclass.


def _cookie(r: _Reader, label: str, raw: Any) -> CookieSettings:
    cookie = CookieSettings()
    cdata = r.section(f"{label}.cookie", raw, {"name", "max_age_days", "domain"})
    if not cdata:
        return cookie
    w = f"{label}.cookie"
    return CookieSettings(
        name=r.get(w, cdata, "name", str, cookie.name,
                   check=lambda v: None if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v) else "must be a cookie name"),
        max_age_days=r.get(w, cdata, "max_age_days", int, cookie.max_age_days,
                           check=lambda v: None if 1 <= v <= 400 else "must be between 1 and 400"),
        domain=r.get(w, cdata, "domain", str, cookie.domain),
    )


def _consent(r: _Reader, label: str, raw: Any) -> ConsentSettings:
    consent = ConsentSettings()
    kdata = r.section(f"{label}.consent", raw, {"unknown", "onetrust"})
    if not kdata:
        return consent
    w = f"{label}.consent"
    unknown = r.get(w, kdata, "unknown", str, consent.unknown,
                    check=lambda v: None if v in ("granted", "denied") else "must be 'granted' or 'denied'")
    ot = r.section(f"{w}.onetrust", kdata.get("onetrust"), {"analytics", "marketing"}) or {}
    return ConsentSettings(
        unknown=unknown,
        onetrust_analytics_groups=tuple(str(g) for g in r.get(f"{w}.onetrust", ot, "analytics", list,
                                                              list(consent.onetrust_analytics_groups))),
        onetrust_marketing_groups=tuple(str(g) for g in r.get(f"{w}.onetrust", ot, "marketing", list,
                                                              list(consent.onetrust_marketing_groups))),
    )


def _api_keys(r: _Reader, label: str, data: dict[str, Any]) -> tuple[ApiKey, ...]:
    api_keys: list[ApiKey] = []
    for i, item in enumerate(r.get(label, data, "api_keys", list, [])):
        w = f"{label}.api_keys[{i}]"
        kd = r.section(w, item, {"name", "sha256", "scopes"})
        if kd is None:
            continue
        scopes = r.get(w, kd, "scopes", list, [], required=True)
        bad = [s for s in scopes if s not in SCOPES]
        if bad:
            r.error(f"{w}.scopes", f"unknown scope(s) {bad}; known: {sorted(SCOPES)}")
        api_keys.append(ApiKey(
            name=r.get(w, kd, "name", str, f"key{i}", required=True),
            sha256=r.get(w, kd, "sha256", str, "", required=True,
                         check=lambda v: None if SHA256_RE.match(v.lower()) else "must be 64 hex characters").lower(),
            scopes=frozenset(s for s in scopes if s in SCOPES),
        ))
    return tuple(api_keys)


def _timeouts(r: _Reader, label: str, raw: Any) -> Timeouts:
    timeouts = Timeouts()
    tdata = r.section(f"{label}.timeouts", raw, {"connect_s", "read_s"})
    if not tdata:
        return timeouts
    w = f"{label}.timeouts"
    return Timeouts(connect_s=r.get(w, tdata, "connect_s", float, timeouts.connect_s, check=_positive),
                    read_s=r.get(w, tdata, "read_s", float, timeouts.read_s, check=_positive))


def _retention(r: _Reader, label: str, raw: Any) -> Retention:
    retention = Retention()
    rdata = r.section(f"{label}.retention_days", raw, {"sessions", "anon_events", "forwards", "events"})
    if not rdata:
        return retention
    w = f"{label}.retention_days"

    def days(v: int) -> str | None:
        return None if 1 <= v <= 3650 else "must be between 1 and 3650"

    return Retention(sessions=r.get(w, rdata, "sessions", int, retention.sessions, check=days),
                     anon_events=r.get(w, rdata, "anon_events", int, retention.anon_events, check=days),
                     forwards=r.get(w, rdata, "forwards", int, retention.forwards, check=days),
                     events=r.get(w, rdata, "events", int, retention.events, check=days))


def _rate_limit(r: _Reader, label: str, raw: Any) -> RateLimit:
    rate = RateLimit()
    rl = r.section(f"{label}.rate_limit", raw, {"per_second", "burst"})
    if not rl:
        return rate
    w = f"{label}.rate_limit"
    return RateLimit(per_second=r.get(w, rl, "per_second", float, rate.per_second, check=_positive),
                     burst=r.get(w, rl, "burst", int, rate.burst, check=_positive))


def _origins(r: _Reader, label: str, data: dict[str, Any]) -> list[str]:
    origins = []
    for i, origin in enumerate(r.get(label, data, "external_origins", list, [])):
        if not isinstance(origin, str) or _https_or_http_url(origin):
            r.error(f"{label}.external_origins[{i}]", f"'{origin}' must be an origin such as https://shop.example")
        else:
            origins.append(origin.rstrip("/").lower())
    return origins


def _dashboard_hosts(r: _Reader, label: str, data: dict[str, Any], hosts: list[str]) -> list[str]:
    found = []
    for i, host in enumerate(r.get(label, data, "dashboard_hosts", list, [])):
        name = host.lower().rstrip(".") if isinstance(host, str) else ""
        served = name in hosts or any(h.startswith("*.") and name.endswith(h[1:]) and name != h[2:] for h in hosts)
        if not name or name.startswith("*") or not HOST_RE.match(name) or not served:
            r.error(f"{label}.dashboard_hosts[{i}]", f"'{host}' must be one of this tenant's hosts (no wildcard)")
        else:
            found.append(name)
    return found


def _forwarders(r: _Reader, where: str, raw: Any) -> Forwarders:
    data = r.section(where, raw, {"meta", "ga4", "google_ads", "tiktok"})
    if not data:
        return Forwarders()
    out: dict[str, Any] = {}
    specs: dict[str, tuple[type, dict[str, bool]]] = {
        # name: (settings type, {field: required})
        "meta": (MetaSettings, {"pixel_id": True, "access_token": True, "base_url": False, "api_version": False,
                                "test_event_code": False}),
        "ga4": (Ga4Settings, {"measurement_id": True, "api_secret": True, "base_url": False}),
        "google_ads": (GoogleAdsSettings, {"account_id": True, "conversion_action_id": True, "access_token": True,
                                           "base_url": False, "login_account_id": False}),
        "tiktok": (TikTokSettings, {"pixel_code": True, "access_token": True, "base_url": False,
                                    "test_event_code": False}),
    }
    for name, (cls, fields_) in specs.items():
        if name not in data or data[name] is None:
            continue
        w = f"{where}.{name}"
        sdata = r.section(w, data[name], set(fields_))
        if sdata is None:
            continue
        before = len(r.errors)
        kwargs = {}
        for fname, required in fields_.items():
            check = _https_or_http_url if fname == "base_url" else None
            value = r.get(w, sdata, fname, str, None, required=required, check=check)
            if value is not None:
                kwargs[fname] = value.rstrip("/") if fname == "base_url" else value
        if len(r.errors) == before:
            out[name] = cls(**kwargs)
    return Forwarders(**out)


def parse(text: str, path: str, env: Mapping[str, str]) -> Settings:
    """Validate YAML text. Raises ConfigError listing every problem."""
    r = _Reader(path, env)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"{path}:{where}: invalid YAML: {problem}"]) from err
    if raw is None:
        raw = {}
    top = r.section("file", raw, _TOP_KEYS)
    if top is None:
        raise ConfigError(r.errors)
    server = _server(r, top.get("server"))
    tenants_raw = top.get("tenants")
    tenants: list[Tenant] = []
    if not isinstance(tenants_raw, list) or not tenants_raw:
        r.error("tenants", "must list at least one tenant")
    else:
        for i, item in enumerate(tenants_raw):
            tenant = _tenant(r, item, i)
            if tenant is not None:
                tenants.append(tenant)

    exact: dict[str, Tenant] = {}
    wildcards: list[tuple[str, Tenant]] = []
    seen_ids: set[str] = set()
    owners: dict[str, str] = {}
    key_owners: dict[str, str] = {}
    for tenant in tenants:
        if tenant.id in seen_ids:
            r.error(f"tenant[{tenant.id}].id", "is used by more than one tenant")
        seen_ids.add(tenant.id)
        names: set[str] = set()
        for key in tenant.api_keys:  # one key acts for one tenant, and its name is what the audit trail records
            if key.sha256 in key_owners:
                r.error(f"tenant[{tenant.id}].api_keys", f"key '{key.name}' is also listed under tenant "
                        f"{key_owners[key.sha256]}: issue each tenant its own (halo-proxy hash-key)")
            key_owners.setdefault(key.sha256, tenant.id)
            if key.name in names:
                r.error(f"tenant[{tenant.id}].api_keys", f"two keys are named '{key.name}'")
            names.add(key.name)
        for host in tenant.hosts:
            if host in owners and owners[host] != tenant.id:
                r.error(f"tenant[{tenant.id}].hosts", f"'{host}' is already served by tenant {owners[host]}")
            owners[host] = tenant.id
            if host.startswith("*."):
                wildcards.append((host[1:], tenant))
            else:
                exact[host] = tenant
    if r.errors:
        raise ConfigError(r.errors)
    # Longest wildcard suffix first, so *.shop.acme.example beats *.acme.example.
    wildcards.sort(key=lambda item: len(item[0]), reverse=True)
    return Settings(path=path, server=server, tenants=tuple(tenants), _exact=MappingProxyType(exact),
                    _wildcards=tuple(wildcards))


_DATABASE_ENV = (("HALO_DATABASE_POOL_SIZE", "pool_size", 1, 1000),
                 ("HALO_DATABASE_STATEMENT_CACHE", "statement_cache_size", 0, 100_000))


def database_settings(env: Mapping[str, str]) -> DatabaseSettings:
    """The database settings from `env` (HALO_DATABASE_POOL_SIZE, HALO_DATABASE_STATEMENT_CACHE); unset or empty
    keeps the default. Raises ConfigError naming each bad variable."""
    values: dict[str, int] = {}
    errors: list[str] = []
    for name, attr, low, high in _DATABASE_ENV:
        text = env.get(name, "").strip()
        if not text:
            continue
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            errors.append(f"{name}: must be a whole number from {low} to {high}, not {text!r}")
            continue
        values[attr] = value
    if errors:
        raise ConfigError(errors)
    return DatabaseSettings(**values)


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a tenant file. `env` defaults to the process environment at call time."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"{name}: cannot read file: {err.strerror or err}"]) from err
    except UnicodeDecodeError as err:
        raise ConfigError([f"{name}: file is not UTF-8 text"]) from err
    return parse(text, name, os.environ if env is None else env)
