"""Health under the reserved prefix, on the proxy's port and for any Host: `healthz` while the process runs,
`readyz` while the database answers, its schema is current and the process is not stopping (from SIGTERM on it
answers 503, so that a load balancer sends no more traffic before the listener closes)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..edge.admission import tenant_free
from ..storage.db import Database, ping
from .common import RETRY_AFTER_DB_S, ApiError, json_ok


async def unready_reason(database: Database | None, draining: bool) -> str | None:
    """Why readyz would answer 503 now ("stopping", "database_unavailable"), or None when it would answer 200."""
    if draining:
        return "stopping"
    if database is None or (database.migrated and await ping(database.pool)):
        return None
    return "database_unavailable"


def setup(app: web.Application, prefix: str, database: Callable[[], Database | None],
          draining: Callable[[], bool] = lambda: False) -> None:

    @tenant_free
    async def handle_healthz(request: web.Request) -> web.Response:
        return json_ok(200, {"status": "ok"})

    @tenant_free
    async def handle_readyz(request: web.Request) -> web.Response:
        reason = await unready_reason(database(), draining())
        if reason is None:
            return json_ok(200, {"status": "ready"})
        if reason == "stopping":
            return ApiError(503, "stopping", "This process is stopping; send requests elsewhere.",
                            headers={"Retry-After": RETRY_AFTER_DB_S, "Connection": "close"}).response()
        return ApiError(503, "database_unavailable", "The database is not answering.",
                        headers={"Retry-After": RETRY_AFTER_DB_S}).response()

    app.router.add_get(f"{prefix}/healthz", handle_healthz, allow_head=True)
    app.router.add_get(f"{prefix}/readyz", handle_readyz, allow_head=True)
