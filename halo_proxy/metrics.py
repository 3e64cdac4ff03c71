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
        # 1 while the tenant file last read was valid (the process would not have started otherwise), 0 once a
        # reload failed and the process serves an older config. Over workers: the lowest.
        self.config_reload_ok = Gauge(
            "halo_config_last_reload_successful", "Whether the last tenant file reload succeeded (1) or not (0).",
            registry=r, multiprocess_mode="livemin")
        self.config_reload_ok.set(1)
        # What readyz would answer now (1: 200, 0: 503), kept current in the background. Over workers: the lowest.
        self.ready = Gauge(
            "halo_ready", "Whether this process is ready for traffic (readyz answers 200).", registry=r,
            multiprocess_mode="livemin")
        # Visitor connections and requests refused at the trust boundary.
        self.connections_open = Gauge(
            "halo_connections_open", "Visitor connections open now.", registry=r, multiprocess_mode="livesum")
        self.connections_refused = Counter(
            "halo_connections_refused_total", "Visitor connections refused over server.client.max_connections.",
            registry=r)
        self.connection_timeouts = Counter(
            "halo_connection_timeouts_total", "Visitor connections closed by a deadline, by kind (header, idle, body).",
            ["kind"], registry=r)
        self.bad_requests = Counter(
            "halo_bad_requests_total", "Requests refused before any tenant saw them, by reason.",
            ["reason"], registry=r)
        # Tracking (page views).
        self.visits = Counter(
            "halo_visits_total", "Tracked page views by tenant, consent state and GA4 channel.",
            ["tenant", "consent", "channel"], registry=r)
        self.sessions_created = Counter(
            "halo_sessions_created_total", "New visitor sessions.", ["tenant"], registry=r)
        self.touches = Counter(
            "halo_touches_total", "Campaign touches of returning visitors.", ["tenant"], registry=r)
        self.skipped = Counter(
            "halo_skipped_requests_total", "Proxied requests that are not visits, by reason.",
            ["tenant", "reason"], registry=r)
        self.storage_errors = Counter(
            "halo_storage_errors_total", "Failed database operations by operation.", ["op"], registry=r)
        self.tracking_errors = Counter(
            "halo_tracking_errors_total", "Page views served untracked because tracking failed.", registry=r)
        self.lost_writes = Counter(
            "halo_storage_lost_writes_total", "Writes dropped because the database stayed unavailable.",
            ["kind"], registry=r)
        self.write_queue = Gauge(
            "halo_write_queue_depth", "Page-view writes waiting for the database.", registry=r,
            multiprocess_mode="livesum")
        # Conversions.
        self.conversions = Counter(
            "halo_conversions_total", "Conversions stored, by tenant, kind and match type.",
            ["tenant", "kind", "match_type"], registry=r)
        # Group commit of conversions (storage/conversion_writer.py): how many share each statement, and how many
        # had to be finished on their own (their batch not stored whole: a row refused, a lock waited for).
        self.conversion_batch_size = Histogram(
            "halo_conversion_batch_size", "Conversions stored per statement (group commit).",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200), registry=r)
        self.conversions_alone = Counter(
            "halo_conversions_stored_alone_total", "Conversions finished on their own after their batch, by reason "
            "(repeat: a key stored before; refused: the batch was not stored whole).", ["reason"], registry=r)
        self.rejected = Counter(
            "halo_rejected_requests_total", "Requests to HaloTrack's routes refused, by reason.",
            ["tenant", "reason"], registry=r)
        self.events = Counter(
            "halo_events_total", "Custom browser events stored, by tenant.", ["tenant"], registry=r)
        self.forward_skips = Counter(
            "halo_forward_skips_total", "Forwards not sent, by reason: the consent gate, or no identifiers "
            "the platform could match on.",
            ["tenant", "platform", "reason"], registry=r)
        # The browser side.
        self.injections = Counter(
            "halo_injections_total", "HTML pages given the script tag, by where it went (head, body, start) or why a "
            "page was passed on as it was (already_tagged, charset, decode_error).",
            ["tenant", "outcome"], registry=r)
        self.injection_skipped = Counter(
            "halo_injection_skipped_total", "HTML page views left untouched, by reason (status, range, no_transform, "
            "coding, csp).", ["tenant", "reason"], registry=r)
        self.consent_changes = Counter(
            "halo_consent_changes_total", "Consent changes sent by browsers, by tenant and what changed "
            "(granted, withdrawn, updated, unchanged).", ["tenant", "change"], registry=r)
        self.browser_touches = Counter(
            "halo_browser_touches_total", "POST /touch visits from sites not behind the proxy, by tenant and outcome "
            "(session, anonymous).", ["tenant", "outcome"], registry=r)
        self.purged = Counter(
            "halo_purged_rows_total", "Rows deleted by the retention purge, by tenant and kind (sessions, events, "
            "anon_events, forwards).", ["tenant", "kind"], registry=r)
        # Operators.
        self.operator_auth_failures = Counter(
            "halo_operator_auth_failures_total", "Operator requests refused for their key, by reason (missing_key, "
            "invalid_key, wrong_tenant, missing_scope, rate_limited).", ["reason"], registry=r)
        # Counters with closed label sets are present from the start, at zero, so that an alert can be written
        # on them before their first increment.
        for kind in ("visit", "anon", "invalid"):
            self.lost_writes.labels(kind=kind)
        for kind in ("header", "idle", "body"):
            self.connection_timeouts.labels(kind=kind)
        for outcome in ("ok", "error"):
            self.config_reloads.labels(outcome=outcome)
        for reason in ("repeat", "refused"):
            self.conversions_alone.labels(reason=reason)
        for op in ("visits", "anon_events"):
            self.storage_errors.labels(op=op)
        for reason in ("missing_key", "invalid_key", "wrong_tenant", "missing_scope", "rate_limited"):
            self.operator_auth_failures.labels(reason=reason)
        # Children of labelled metrics used on every request, looked up once per label set. Label values come
        # from closed sets (tenant ids, status classes, reasons), so these stay small.
        self._status_children: dict[tuple[str, int], Counter] = {}
        self._visit_children: dict[tuple[str, str, str], Counter] = {}
        self._request_seconds_children: dict[str, Histogram] = {}
        self._upstream_seconds_children: dict[str, Histogram] = {}
        self._skipped_children: dict[tuple[str, str], Counter] = {}
        self._sessions_created_children: dict[str, Counter] = {}
        self._touches_children: dict[str, Counter] = {}
        self._injection_children: dict[tuple[str, str], Counter] = {}

    def count_request(self, tenant: str, status: int, seconds: float) -> None:
        """Hot path: label lookups are cached per (tenant, class)."""
        cls = status // 100
        key = (tenant, cls)
        child = self._status_children.get(key)
        if child is None:
            child = self.requests.labels(tenant=tenant, status_class=f"{cls}xx")
            self._status_children[key] = child
        child.inc()
        histogram = self._request_seconds_children.get(tenant)
        if histogram is None:
            histogram = self._request_seconds_children[tenant] = self.request_seconds.labels(tenant=tenant)
        histogram.observe(seconds)

    def upstream_time(self, tenant: str, seconds: float) -> None:
        histogram = self._upstream_seconds_children.get(tenant)
        if histogram is None:
            histogram = self._upstream_seconds_children[tenant] = self.upstream_seconds.labels(tenant=tenant)
        histogram.observe(seconds)

    def skip(self, tenant: str, reason: str) -> None:
        key = (tenant, reason)
        child = self._skipped_children.get(key)
        if child is None:
            child = self._skipped_children[key] = self.skipped.labels(tenant=tenant, reason=reason)
        child.inc()

    def session_created(self, tenant: str) -> None:
        child = self._sessions_created_children.get(tenant)
        if child is None:
            child = self._sessions_created_children[tenant] = self.sessions_created.labels(tenant=tenant)
        child.inc()

    def touch(self, tenant: str) -> None:
        child = self._touches_children.get(tenant)
        if child is None:
            child = self._touches_children[tenant] = self.touches.labels(tenant=tenant)
        child.inc()

    def visit(self, tenant: str, consent: str, channel: str) -> None:
        key = (tenant, consent, channel)
        child = self._visit_children.get(key)
        if child is None:
            child = self.visits.labels(tenant=tenant, consent=consent, channel=channel)
            self._visit_children[key] = child
        child.inc()

    def injection(self, tenant: str, outcome: str, skipped: bool = False) -> None:
        key = (tenant, outcome if not skipped else "skip:" + outcome)
        child = self._injection_children.get(key)
        if child is None:
            child = (self.injection_skipped.labels(tenant=tenant, reason=outcome) if skipped
                     else self.injections.labels(tenant=tenant, outcome=outcome))
            self._injection_children[key] = child
        child.inc()
