"""The composition root: shared objects under typed keys, one cleanup context per resource, the routes.

Request flow on a tenant host:
  1. routes under the reserved prefix are answered here and never forwarded;
  2. everything else goes to `handle_proxied`: host -> tenant (unknown host: 421), client IP, proxy.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import orjson
from aiohttp import web

from . import config as config_mod
from .config import ConfigError, Settings, Tenant
from .crypto import KeyRing
from .edge.proxy import Proxy, Refusal, check_request, error_page
from .edge.tenancy import client_address, tenant_for
from .edge.upstream import UpstreamPool
from .forwarders.worker import DeliveryMetrics, DeliveryWorker
from .metrics import UNKNOWN_TENANT, Metrics
from .routes.common import call as call_route
from .routes.conversions import RateLimits, Routes
from .services.conversions import Conversions
from .storage import migrations
from .storage.db import create_pool, ping
from .storage.errors import StorageError
from .storage.write_queue import VisitWriter
from .tracking.agent import warm_agent_parser
from .visits import Clock, VisitTracker, utc_now

log = logging.getLogger(__name__)


@dataclass
class ConfigHolder:
    """The live settings. A reload swaps `current` in one assignment; requests read it once each."""

    current: Settings
    reloads: int = 0
    last_errors: list[str] = field(default_factory=list)


@dataclass
class Database:
    """The database as the app sees it: a pool, and whether the schema is known to be current."""

    pool: asyncpg.Pool
    migrated: bool = False


CONFIG = web.AppKey("config", ConfigHolder)
METRICS = web.AppKey("metrics", Metrics)
CLIENT = web.AppKey("client_session", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", Proxy)
KEYS = web.AppKey("keys", KeyRing)
CLOCK = web.AppKey("clock", object)
DATABASE = web.AppKey("database", Database)
WRITER = web.AppKey("visit_writer", VisitWriter)
TRACKER = web.AppKey("visit_tracker", VisitTracker)
ROUTES = web.AppKey("routes", Routes)
WORKER = web.AppKey("delivery_worker", DeliveryWorker)


def json_response(status: int, payload: dict, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json",
                        headers=headers)


def json_error(status: int, code: str, detail: str, field_name: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
    payload = {"error": code, "detail": detail}
    if field_name:
        payload["field"] = field_name
    return json_response(status, payload, headers)


# ---------------------------------------------------------------------------------------------------------
# Handlers.


REFUSAL_TITLES = {501: "Not Implemented", 505: "HTTP Version Not Supported"}


async def handle_proxied(request: web.Request) -> web.StreamResponse:
    app = request.app
    metrics = app[METRICS]
    settings = app[CONFIG].current
    started = time.perf_counter()
    checked = check_request(request, settings.server.reserved_prefix)
    if type(checked) is Refusal:
        metrics.bad_requests.labels(reason=checked.reason).inc()
        metrics.count_request(UNKNOWN_TENANT, checked.status, time.perf_counter() - started)
        refused = error_page(checked.status, REFUSAL_TITLES.get(checked.status, "Bad Request"), checked.detail)
        refused.force_close()  # what follows on the connection cannot be trusted to be a request
        return refused
    tenant = settings.tenant_for_name(checked.name)  # type: ignore[union-attr]
    if tenant is None:
        metrics.count_request(UNKNOWN_TENANT, 421, time.perf_counter() - started)
        return error_page(421, "Misdirected Request", "This host is not served here.")
    metrics.in_flight.inc()
    try:
        client = client_address(request, settings.server.trusted_proxies)
        tracker = app.get(TRACKER)
        cookies: list[str] | tuple[()] = ()
        if tracker is not None:
            try:
                cookies = tracker.observe(request, tenant, client.ip, client.https)
            except Exception:  # tracking must never break the client's site: the page is served untracked
                metrics.tracking_errors.inc()
                log.exception("tracking failed for a request of tenant %s; serving it untracked", tenant.id)
        response = await app[PROXY].forward(request, tenant, client,
                                            [("Set-Cookie", value) for value in cookies])
    finally:
        metrics.in_flight.dec()
    metrics.count_request(tenant.id, response.status, time.perf_counter() - started)
    return response


async def handle_healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    database = request.app.get(DATABASE)
    if database is None:
        return json_response(200, {"status": "ready"})
    if database.migrated and await ping(database.pool):
        return json_response(200, {"status": "ready"})
    return json_error(503, "database_unavailable", "The database is not answering.",
                      headers={"Retry-After": "5"})


def route_tenant(request: web.Request, settings: Settings) -> Tenant | web.Response:
    """The tenant of a request to HaloTrack's own routes, or its JSON refusal."""
    found = tenant_for(request, settings)
    if found == 400:
        return json_error(400, "bad_host", "The Host header is missing, repeated or not a host name.")
    if found == 421:
        return json_error(421, "misdirected", "This host is not served here.")
    return found  # type: ignore[return-value]


async def handle_reserved_unknown(request: web.Request) -> web.Response:
    found = route_tenant(request, request.app[CONFIG].current)
    if isinstance(found, web.Response):
        return found
    return json_error(404, "not_found", f"No route {request.method} {request.path}.")


def api_route(name: str):  # type: ignore[no-untyped-def]
    """A handler for one of `Routes`' methods: tenant from Host, client IP, errors as the contract's JSON."""

    async def handler(request: web.Request) -> web.StreamResponse:
        app = request.app
        settings = app[CONFIG].current
        tenant = route_tenant(request, settings)
        if isinstance(tenant, web.Response):
            return tenant
        routes = app.get(ROUTES)
        if routes is None:
            return json_error(404, "not_found", "This route needs HaloTrack's database, which is not configured.")
        ip = client_address(request, settings.server.trusted_proxies).ip
        method = getattr(routes, name)
        rejected = app[METRICS].rejected

        def count(code: str) -> None:
            rejected.labels(tenant=tenant.id, reason=code).inc()

        return await call_route(lambda: method(request, tenant, settings, ip), count, request.path)

    handler.__name__ = f"handle_{name}"
    return handler


# ---------------------------------------------------------------------------------------------------------
# Resources.


async def client_session_ctx(app: web.Application) -> AsyncIterator[None]:
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


def storage_ctx(dsn: str | None, pool: asyncpg.Pool | None, migrate: bool):  # type: ignore[no-untyped-def]
    """The pool (given, or made from `dsn`), migrations, and the background page-view writer.

    A database that is down at start does not stop the proxy: pages are served, writes queue up, readyz says
    503, and migrations are retried until they succeed.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        owned = pool is None
        # min_size=0: no connection is needed to start, so a database that is down does not stop the proxy.
        the_pool = pool if pool is not None else await create_pool(dsn, min_size=0, max_size=32)
        database = Database(the_pool, migrated=not migrate)
        app[DATABASE] = database
        retry: asyncio.Task[None] | None = None
        if migrate:
            if not await _migrate(database):
                retry = asyncio.create_task(_migrate_until_done(database), name="halo-migrate-retry")
        writer = VisitWriter(the_pool, app[METRICS])
        writer.start()
        app[WRITER] = writer
        app[TRACKER] = VisitTracker(app[KEYS], writer, app[METRICS], app[CONFIG].current.server.reserved_prefix,
                                    clock=app[CLOCK])  # type: ignore[arg-type]
        keys = app[KEYS]
        holder = app[CONFIG]
        platforms = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        worker = DeliveryWorker(
            the_pool, platforms, lambda: holder.current,
            lambda tenant_id, blob: keys.decrypt(tenant_id, "forwards", "payload_enc", blob),
            DeliveryMetrics(app[METRICS].registry), clock=app[CLOCK])  # type: ignore[arg-type]
        worker.start()
        app[WORKER] = worker
        conversions = Conversions(the_pool, keys, writer, app[METRICS], on_created=worker.wake)
        app[ROUTES] = Routes(conversions, keys, RateLimits(), app[CLOCK])  # type: ignore[arg-type]
        yield
        if retry is not None:
            retry.cancel()
        await worker.stop()  # sends in flight finish and are recorded
        await platforms.close()
        await writer.close()
        if owned:
            await the_pool.close()

    return ctx


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
        log.error("config reload failed, keeping the previous config:\n%s", "\n".join(err.errors))
        return False
    if new.server.reserved_prefix != holder.current.server.reserved_prefix:
        log.warning("server.reserved_prefix changed; the new prefix takes effect after a restart")
    holder.current = new
    holder.reloads += 1
    holder.last_errors = []
    metrics.config_reloads.labels(outcome="ok").inc()
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
) -> web.Application:
    """Build the app. Without `keys` and a database (`dsn` or `pool`) it is a plain proxy with no tracking."""
    client = settings.server.client
    # aiohttp server defaults the proxy must not inherit (each tested in tests/test_boundary.py):
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
    app[CONFIG] = ConfigHolder(settings)
    app[METRICS] = metrics if metrics is not None else Metrics()
    app[CLOCK] = clock
    # Cleanup contexts start in this order and stop in reverse: the upstream client, then storage.
    app.cleanup_ctx.append(client_session_ctx)
    if keys is not None and (dsn is not None or pool is not None):
        app[KEYS] = keys
        app.cleanup_ctx.append(storage_ctx(dsn, pool, migrate))
        app.on_startup.append(_warm_parsers)

    prefix = settings.server.reserved_prefix
    # Reserved routes first: they are matched before the catch-all and never reach the proxy.
    app.router.add_get(f"{prefix}/healthz", handle_healthz, allow_head=True)
    app.router.add_get(f"{prefix}/readyz", handle_readyz, allow_head=True)
    app.router.add_post(f"{prefix}/identify", api_route("identify"))
    app.router.add_post(f"{prefix}/webhook/lead", api_route("lead"))
    app.router.add_post(f"{prefix}/webhook/order", api_route("order"))
    app.router.add_post(f"{prefix}/webhook/shopify", api_route("shopify"))
    app.router.add_post(f"{prefix}/webhook/stripe", api_route("stripe"))
    app.router.add_route("*", prefix + "{tail:(/.*)?}", handle_reserved_unknown)
    app.router.add_route("*", "/{tail:.*}", handle_proxied)
    return app


def create_metrics_app(metrics: Metrics) -> web.Application:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def handle_metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle_metrics)
    return app
