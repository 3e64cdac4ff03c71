"""The tenant file's validation as tables: a good file gives the documented defaults, and each mistake gives
one error naming its file, tenant and field."""

from __future__ import annotations

import pytest

from halo_proxy.config import (
    ClientSettings,
    ConfigError,
    CookieSettings,
    OutboxSettings,
    RateLimit,
    Retention,
    Tenant,
    Timeouts,
    load,
    parse,
)

MINIMAL = """
tenants:
  - id: shop
    hosts: [shop.example]
    upstream: https://origin.shop.example
"""


def test_a_minimal_file_gets_every_default():
    settings = parse(MINIMAL, "t.yaml", {})
    tenant = settings.tenants[0]
    assert tenant == Tenant(id="shop", hosts=("shop.example",), upstream="https://origin.shop.example")
    assert tenant.cookie == CookieSettings() and tenant.timeouts == Timeouts()
    assert tenant.retention == Retention() and tenant.rate_limit == RateLimit()
    assert tenant.consent.unknown == "granted" and tenant.max_body_bytes == 64 * 1024
    assert settings.server.client == ClientSettings() and settings.server.outbox == OutboxSettings()
    assert settings.server.reserved_prefix == "/_halo"


def test_the_example_file_is_valid():
    settings = load("config/tenants.yaml", {"ACME_WEBHOOK_SECRET": "x" * 32})
    assert [t.id for t in settings.tenants] == ["acme", "blog"]


def tenant_with(extra: str) -> str:
    return MINIMAL + "".join(f"    {line}\n" for line in extra.splitlines())


@pytest.mark.parametrize(("text", "error"), [
    (tenant_with("cookie: {max_age_days: 0}"), "t.yaml:tenant[shop].cookie.max_age_days: must be between 1 and 400"),
    (tenant_with("cookie: {name: 'a b'}"), "t.yaml:tenant[shop].cookie.name: must be a cookie name"),
    (tenant_with("consent: {unknown: maybe}"), "t.yaml:tenant[shop].consent.unknown: must be 'granted' or 'denied'"),
    (tenant_with("timeouts: {read_s: 0}"), "t.yaml:tenant[shop].timeouts.read_s: must be greater than 0"),
    (tenant_with("currency: euro"), "t.yaml:tenant[shop].currency: must be an ISO 4217 code such as EUR"),
    (tenant_with("webhook_secret: short"), "t.yaml:tenant[shop].webhook_secret: must be at least 16 characters"),
    (tenant_with("upstream_host: both"), "t.yaml:tenant[shop].upstream_host: must be 'original' or 'upstream'"),
    (tenant_with("timezone: Mars/Olympus"), "t.yaml:tenant[shop].timezone: unknown time zone 'Mars/Olympus'"),
    (tenant_with("max_body_kb: 0"), "t.yaml:tenant[shop].max_body_kb: must be between 1 and 10240"),
    (tenant_with("rate_limit: {burst: 0}"), "t.yaml:tenant[shop].rate_limit.burst: must be greater than 0"),
    (tenant_with("retention_days: {sessions: 0}"),
     "t.yaml:tenant[shop].retention_days.sessions: must be between 1 and 3650"),
    (tenant_with("cookei: {}"), "t.yaml:tenant[shop].cookei: unknown key (did you mean 'cookie'?)"),
    (tenant_with("forwarders: {meta: {pixel_id: '1'}}"), "t.yaml:tenant[shop].forwarders.meta.access_token: is required"),
    (tenant_with("forwarders: {ga4: {measurement_id: G-1, api_secret: s, base_url: ftp://x}}"),
     "t.yaml:tenant[shop].forwarders.ga4.base_url: must be an http:// or https:// URL with a host"),
    (tenant_with("webhook_secret: ${MISSING_SECRET}"),
     "t.yaml:tenant[shop].webhook_secret: environment variable MISSING_SECRET is not set"),
    ("server: {client: {max_connections: 0}}\n" + MINIMAL,
     "t.yaml:server.client.max_connections: must be between 1 and 1000000"),
    ("server: {client: {header_timeout_s: -1}}\n" + MINIMAL,
     "t.yaml:server.client.header_timeout_s: must be greater than 0"),
    ("server: {outbox: {lease_s: 5, send_timeout_s: 10}}\n" + MINIMAL,
     "t.yaml:server.outbox.lease_s: must be longer than send_timeout_s, or a slow send is sent twice"),
    ("server: {reserved_prefix: _halo}\n" + MINIMAL,
     "t.yaml:server.reserved_prefix: must be one path segment starting with '/', such as /_halo"),
    ("server: {trusted_proxies: [nonsense]}\n" + MINIMAL,
     "t.yaml:server.trusted_proxies[0]: 'nonsense' is not an IP address or CIDR"),
    (MINIMAL.replace("upstream: https://origin.shop.example", "upstream: https://origin.example/path"),
     "t.yaml:tenant[shop].upstream: must be an origin (scheme, host and optional port) without a path or query"),
    (MINIMAL.replace("[shop.example]", "['shop example']"),
     "t.yaml:tenant[shop].hosts[0]: 'shop example' is not a host name or a '*.' wildcard host"),
    (MINIMAL + MINIMAL.split("tenants:\n")[1], "t.yaml:tenant[shop].id: is used by more than one tenant"),
    ("tenants: []\n", "t.yaml:tenants: must list at least one tenant"),
    (tenant_with("api_keys: [{name: ops, sha256: abc, scopes: [report]}]"),
     "t.yaml:tenant[shop].api_keys[0].sha256: must be 64 hex characters"),
    (tenant_with("api_keys: [{name: ops, sha256: " + "a" * 64 + ", scopes: [admin]}]"),
     "t.yaml:tenant[shop].api_keys[0].scopes: unknown scope(s) ['admin']; known: ['privacy', 'report']"),
    (tenant_with("external_origins: [shop.example]"),
     "t.yaml:tenant[shop].external_origins[0]: 'shop.example' must be an origin such as https://shop.example"),
    (tenant_with("attribution: {lookback_days: 0}"),
     "t.yaml:tenant[shop].attribution.lookback_days: must be between 1 and 730"),
    (tenant_with("consent: {onetrust: {ads: [C0004]}}"), "t.yaml:tenant[shop].consent.onetrust.ads: unknown key"),
])
def test_each_mistake_is_named(text, error):
    with pytest.raises(ConfigError) as raised:
        parse(text, "t.yaml", {})
    assert error in raised.value.errors, raised.value.errors
