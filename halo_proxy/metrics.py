"""Prometheus metrics. One `Metrics` object per process, built on a registry passed in.

Labels come only from small closed sets: tenant ids from the config, status classes, error kinds and
reasons defined in code. Never a raw path or a user value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

UNKNOWN_TENANT = "_unknown"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "halo_requests_total", "Requests answered, by tenant and status class.",
            ["tenant", "status_class"], registry=r)
        self.request_seconds = Histogram(
            "halo_request_duration_seconds", "Time from request to the end of the response.",
            ["tenant"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_seconds = Histogram(
            "halo_upstream_duration_seconds", "Time from sending upstream to the upstream's response headers.",
            ["tenant"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "halo_requests_in_flight", "Requests being handled now.", registry=r, multiprocess_mode="livesum")
        self.upstream_errors = Counter(
            "halo_upstream_errors_total", "Upstream failures by kind.", ["tenant", "kind"], registry=r)
        self.config_reloads = Counter(
            "halo_config_reloads_total", "Tenant file reloads by outcome.", ["outcome"], registry=r)
        self._status_children: dict[tuple[str, int], Counter] = {}

    def count_request(self, tenant: str, status: int, seconds: float) -> None:
        """Hot path: label lookups are cached per (tenant, class)."""
        cls = status // 100
        key = (tenant, cls)
        child = self._status_children.get(key)
        if child is None:
            child = self.requests.labels(tenant=tenant, status_class=f"{cls}xx")
            self._status_children[key] = child
        child.inc()
        self.request_seconds.labels(tenant=tenant).observe(seconds)
