"""The composition root: shared objects under typed keys, one cleanup context per resource, the middlewares in
their order, and each route family registering its own routes. Nothing imports this module but the entry points.

Request flow:
  - under the reserved prefix, a sub-application with its middlewares in one commented order (tenancy, client
    address, error answers), each route family registering its own routes; never forwarded;
  - everything else goes to `edge.site`: admitted (trust boundary, tenant), tracked, streamed from the upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import asyncpg
from aiohttp import web

from . import config as config_mod
from .config import ConfigError, DatabaseSettings, Settings
from .crypto import KeyRing
from .edge import site
from .edge.admission import setup_client_address, setup_tenancy
from .edge.proxy import Proxy
from .edge.upstream import UpstreamPool
from .forwarders.worker import DeliveryMetrics, DeliveryWorker
from .metrics import Metrics
from .routes import browser as browser_routes
from .routes import conversions as conversion_routes
from .routes import dashboard as dashboard_routes
from .routes import health
from .routes import operators as operator_routes
from .routes import reports as report_routes
from .routes.browser import BrowserRoutes, Script
from .routes.common import setup_error_answers, setup_fallback
from .routes.conversions import RateLimits, Routes
from .routes.dashboard import DashboardRoutes
from .routes.operators import Guard, OperatorRoutes
from .routes.reports import ReportRoutes
from .services.browser import BrowserVisits
from .services.conversions import Conversions
from .services.dashboard import DashboardSignIn
from .services.events import Events
from .services.privacy import Privacy
from .services.reports import Reports
from .services.retention import Retention
from .services.rotation import check_readable
from .services.visits import Clock, VisitTracker, utc_now
from .storage import migrations
from .storage.conversion_writer import ConversionWriter
from .storage.db import Database, create_pool
from .storage.errors import StorageError
from .storage.write_queue import VisitWriter
from .tracking.agent import warm_agent_parser

log = logging.getLogger(__name__)


@dataclass
class ConfigHolder:
    """The live settings. A reload swaps `current` in one assignment; requests read it once each."""

    current: Settings
    reloads: int = 0
    last_errors: list[str] = field(default_factory=list)


@dataclass
class Stopping:
    """A stop in progress (SIGTERM, see server.py): readyz answers 503 once `draining`; the cleanup contexts
    finish by `deadline` (the loop's clock) and count here what they had to abandon."""

    draining: bool = False
    deadline: float | None = None
    abandoned: int = 0

    def remaining(self, default: float | None = None) -> float | None:
        if self.deadline is None:
            return default
        return max(self.deadline - asyncio.get_running_loop().time(), 0.5)


CONFIG = web.AppKey("config", ConfigHolder)
STOPPING = web.AppKey("stopping", Stopping)
METRICS = web.AppKey("metrics", Metrics)
CLOCK = web.AppKey("clock", object)
KEYS = web.AppKey("keys", KeyRing)
CLIENT = web.AppKey("client_session", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", Proxy)
DATABASE = web.AppKey("database", Database)
WRITER = web.AppKey("visit_writer", VisitWriter)
TRACKER = web.AppKey("visit_tracker", VisitTracker)
WORKER = web.AppKey("delivery_worker", DeliveryWorker)
ROUTES = web.AppKey("routes", Routes)
BROWSER = web.AppKey("browser_routes", BrowserRoutes)
OPERATORS = web.AppKey("operator_routes", OperatorRoutes)
REPORTS = web.AppKey("report_routes", ReportRoutes)
DASHBOARD = web.AppKey("dashboard_routes", DashboardRoutes)
GUARD = web.AppKey("operator_guard", Guard)  # the operator key check and its failure limits, for the process


# ---------------------------------------------------------------------------------------------------------
# Resources: one cleanup context each. aiohttp runs a context's teardown only if its setup ran, in reverse order.


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """One upstream pool per process (keep-alive, bodies as sent), and one aiohttp session for WebSockets."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60, keepalive_timeout=30,
                                     enable_cleanup_closed=False)
    session = aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None), read_bufsize=64 * 1024,
    )
    pool = UpstreamPool(keepalive_s=30.0)
    app[CLIENT] = session
    app[PROXY] = Proxy(pool, session, app[METRICS], app[CONFIG].current.server.client.body_timeout_s)
    yield
    await pool.close()
    await session.close()


def pool_ctx(dsn: str | None, pool: asyncpg.Pool | None, migrate: bool,  # type: ignore[no-untyped-def]
             database: DatabaseSettings):
    """The database pool: the one given (the caller closes it), or one made from `dsn` and closed here, of
    `database.pool_size` connections at most with its statement cache.

    min_size=0: no connection is needed to start, so a database that is down does not stop the proxy: pages are
    served, writes queue up, readyz says 503."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        the_pool = pool if pool is not None else await create_pool(
            dsn, min_size=0, max_size=database.pool_size, statement_cache_size=database.statement_cache_size)
        app[DATABASE] = Database(the_pool, migrated=not migrate)
        yield
        if pool is None:
            await the_pool.close()

    return ctx


async def migrations_ctx(app: web.Application) -> AsyncIterator[None]:
    """The schema brought up to date at start, or retried in the background until the database answers; then
    one stored value of each older key version decrypted, so a missing previous secret stops the start
    (UnreadableKeyVersion) instead of every old cookie and row silently failing to open."""
    database = app[DATABASE]
    retry: asyncio.Task[None] | None = None
    if not database.migrated and not await _migrate(database):
        retry = asyncio.create_task(_migrate_until_done(database), name="halo-migrate-retry")
    elif app[KEYS].current_version > 1:
        try:
            await check_readable(database.pool, app[KEYS], app[CONFIG].current.tenants)
        except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.error("stored data of older key versions could not be checked (%s)", type(err).__name__)
    yield
    if retry is not None:
        retry.cancel()


async def write_queue_ctx(app: web.Application) -> AsyncIterator[None]:
    """The page-view write queue, and the visit tracking that feeds it; closing flushes what is queued."""
    writer = VisitWriter(app[DATABASE].pool, app[METRICS])
    writer.start()
    app[WRITER] = writer
    app[TRACKER] = VisitTracker(app[KEYS], writer, app[METRICS], app[CONFIG].current.server.reserved_prefix,
                                clock=app[CLOCK])  # type: ignore[arg-type]
    yield
    await writer.close()


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """The retention purge, hourly in the background (one process at a time across replicas: an advisory lock)."""
    holder = app[CONFIG]
    retention = Retention(app[DATABASE].pool, app[CLOCK], app[METRICS])  # type: ignore[arg-type]
    task = asyncio.create_task(retention.run(lambda: holder.current.tenants), name="halo-retention")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def delivery_ctx(app: web.Application) -> AsyncIterator[None]:
    """The delivery worker draining the outbox, with its own HTTP session to the ad platforms; stopping lets the
    sends in flight finish and be recorded."""
    keys = app[KEYS]
    holder = app[CONFIG]
    platforms = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
    worker = DeliveryWorker(
        app[DATABASE].pool, platforms, lambda: holder.current,
        lambda tenant_id, blob: keys.decrypt(tenant_id, "forwards", "payload_enc", blob),
        DeliveryMetrics(app[METRICS].registry), clock=app[CLOCK])  # type: ignore[arg-type]
    worker.start()
    app[WORKER] = worker
    yield
    stopping = app[STOPPING]
    left = stopping.remaining()
    abandoned = await worker.stop(None if left is None else max(left - 1.0, 0.5))
    if abandoned:
        stopping.abandoned += abs(abandoned)
    await platforms.close()


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    """The use cases and their routes' bodies (no resource of their own: nothing to tear down). Browser routes
    share one set of per-IP rate limits. Closing waits for the conversions being committed (group commit)."""
    commits = ConversionWriter(app[DATABASE].pool, app[METRICS])
    conversions = Conversions(app[DATABASE].pool, app[KEYS], app[WRITER], app[METRICS],
                              on_created=app[WORKER].wake, commits=commits)
    limits = RateLimits()
    app[ROUTES] = Routes(conversions, app[KEYS], limits, app[CLOCK])  # type: ignore[arg-type]
    visits = BrowserVisits(app[DATABASE].pool, app[KEYS], app[WRITER], app[TRACKER], app[METRICS],
                           app[CLOCK])  # type: ignore[arg-type]
    app[BROWSER] = BrowserRoutes(Events(app[DATABASE].pool, app[KEYS], app[METRICS]), visits, app[KEYS], limits,
                                 app[CLOCK])  # type: ignore[arg-type]
    app[OPERATORS] = OperatorRoutes(Privacy(app[DATABASE].pool, app[KEYS], app[WRITER], app[CLOCK]),
                                    app[GUARD])  # type: ignore[arg-type]
    reports = Reports(app[DATABASE].pool)
    app[REPORTS] = ReportRoutes(reports, app[GUARD])
    app[DASHBOARD] = DashboardRoutes(DashboardSignIn(app[DATABASE].pool, app[CLOCK]), reports, app[GUARD],
                                     app[CLOCK], app[CONFIG].current.server.reserved_prefix)  # type: ignore[arg-type]
    yield
    await commits.close()


async def credits_ctx(app: web.Application) -> AsyncIterator[None]:
    """Conversions stored without attribution credits (before migration 0009, or by an older process during a
    rolling upgrade) credited in the background once the schema is current; a report credits its own period
    first in any case."""
    database = app[DATABASE]
    task = asyncio.create_task(app[REPORTS].reports.credit_backlog(lambda: database.migrated),
                               name="halo-credit-backlog")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


READY_EVERY_S = 2.0  # halo_ready is at most this old


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    """halo_ready kept to what readyz would answer, so that an alert needs no prober of its own."""
    gauge = app[METRICS].ready

    async def watch() -> None:
        while True:
            reason = await health.unready_reason(app.get(DATABASE), app[STOPPING].draining)
            gauge.set(0 if reason else 1)
            await asyncio.sleep(READY_EVERY_S)

    task = asyncio.create_task(watch(), name="halo-readiness")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    gauge.set(0)


async def _migrate(database: Database) -> bool:
    try:
        applied = await migrations.apply(database.pool)
    except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        log.error("database migrations could not run yet (%s); pages are still served", type(err).__name__)
        return False
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    database.migrated = True
    return True


async def _migrate_until_done(database: Database, every_s: float = 5.0) -> None:
    for attempt in itertools.count(1):
        await asyncio.sleep(min(every_s * attempt, 60.0))
        if await _migrate(database):
            return


async def _warm_parsers(app: web.Application) -> None:
    """Compile the user-agent parser before the first visitor, not during their request."""
    warm_agent_parser()


async def _warm_parsers(app: web.Application) -> None:
    """Compile the user-agent parser before the first visitor, not during their request."""
    warm_agent_parser()


def reload_config(app: web.Application, path: str | None = None) -> bool:
    """Reload the tenant file; an invalid file keeps the old settings and logs every error."""
    holder = app[CONFIG]
    metrics = app[METRICS]
    source = path or holder.current.path
    try:
        new = config_mod.load(source)
    except ConfigError as err:
        holder.last_errors = err.errors
        metrics.config_reloads.labels(outcome="error").inc()
        metrics.config_reload_ok.set(0)
        log.error("config reload failed, keeping the previous config:\n%s", "\n".join(err.errors))
        return False
    if new.server.reserved_prefix != holder.current.server.reserved_prefix:
        log.warning("server.reserved_prefix changed; the new prefix takes effect after a restart")
    holder.current = new
    holder.reloads += 1
    holder.last_errors = []
    metrics.config_reloads.labels(outcome="ok").inc()
    metrics.config_reload_ok.set(1)
    log.info("config reloaded: %s", new.summary())
    return True


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    keys: KeyRing | None = None,
    dsn: str | None = None,
    pool: asyncpg.Pool | None = None,
    migrate: bool = True,
    clock: Clock = utc_now,
    database: DatabaseSettings | None = None,
) -> web.Application:
    """Build the app. Without `keys` and a database (`dsn` or `pool`) it is a plain proxy with no tracking."""
    client = settings.server.client
    # aiohttp server defaults the proxy must not inherit (each tested in tests/edge/):
    # - auto_decompress: a gzip request body would reach the origin decoded under its original Content-Length
    #   and Content-Encoding (a smuggled second request). Bodies stay as sent; HaloTrack's own routes decode
    #   theirs, capped (routes/common.py read_body);
    # - keepalive_timeout 3630 s: an idle visitor connection is closed after idle_timeout_s instead;
    # - lingering_time 10 s: an unread body (a 404 route, a refused request) is drained for body_timeout_s at
    #   most, then the connection is closed;
    # - max_field_size 8190: one header may be 16 KiB (large cookies), as nginx allows with large buffers.
    # The head deadline and the connection cap are edge/connections.py's, on the listener.
    handler_args = {"max_field_size": 16 * 1024, "auto_decompress": False,
                    "keepalive_timeout": client.idle_timeout_s, "lingering_time": min(client.body_timeout_s, 10.0)}
    app = web.Application(handler_args=handler_args, client_max_size=1024**2)
    holder = ConfigHolder(settings)
    the_metrics = metrics if metrics is not None else Metrics()
    app[CONFIG] = holder
    app[STOPPING] = Stopping()
    app[METRICS] = the_metrics
    app[GUARD] = Guard(the_metrics)
    app[CLOCK] = clock
    prefix = settings.server.reserved_prefix  # a changed prefix takes effect at the next start

    # Resources, set up in this order and torn down in reverse.
    app.cleanup_ctx.append(upstream_ctx)
    if keys is not None and (dsn is not None or pool is not None):
        app[KEYS] = keys
        app.cleanup_ctx.extend([pool_ctx(dsn, pool, migrate, database or DatabaseSettings()), migrations_ctx,
                                write_queue_ctx, delivery_ctx, services_ctx, credits_ctx, retention_ctx])
        app.on_startup.append(_warm_parsers)
    app.cleanup_ctx.append(readiness_ctx)

    # HaloTrack's own routes: a sub-application under the reserved prefix, never forwarded. Its middlewares,
    # outermost first:
    # 1. tenancy: Host -> tenant, 400 or 421 before anything else reads the request;
    # 2. client address: who sent it, believed from X-Forwarded-For only from a trusted proxy;
    # 3. error answers: every route's errors as the contract's JSON, counted.
    current: Callable[[], Settings] = lambda: holder.current  # noqa: E731
    reserved = web.Application()  # the connection settings are the parent's (handler_args above)
    setup_tenancy(reserved, current)
    setup_client_address(reserved, current)
    setup_error_answers(reserved, the_metrics)
    health.setup(reserved, "", lambda: app.get(DATABASE), lambda: app[STOPPING].draining)
    conversion_routes.setup(reserved, "", lambda: app.get(ROUTES), current)
    browser_routes.setup(reserved, "", lambda: app.get(BROWSER), current, Script())
    operator_routes.setup(reserved, "", lambda: app.get(OPERATORS), current)
    report_routes.setup(reserved, "", lambda: app.get(REPORTS), current)
    dashboard_routes.setup(reserved, "", lambda: app.get(DASHBOARD), current)
    setup_fallback(reserved)  # after every route of the prefix: 404
    app.add_subapp(prefix, reserved)

    # Everything else is the client's site: admitted (trust boundary, tenant) by a plain call, no middleware
    # (see edge/admission.py), tracked, forwarded.
    site.setup(app, current, lambda: app[PROXY], lambda: app.get(TRACKER), the_metrics, prefix)
    return app


def create_metrics_app(metrics: Metrics) -> web.Application:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def handle_metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle_metrics)
    return app
