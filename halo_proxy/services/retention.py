"""Retention as a use case: each tenant's `retention_days` applied, inside the proxy (a background task, hourly)
and from the command line (`halo-proxy purge --config PATH [--dry-run]`).

One purge at a time across replicas: the sweep runs in one transaction holding an advisory lock; a process that
cannot take it skips the round (another one is purging). Purged rows are counted in
`halo_purged_rows_total{tenant,kind}`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import asyncpg

from ..config import Tenant
from ..metrics import Metrics
from ..storage import retention as store
from ..storage.errors import StorageError

log = logging.getLogger(__name__)

EVERY_S = 3600.0
FIRST_AFTER_S = 60.0


class Retention:
    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], datetime], metrics: Metrics | None = None):
        self.pool = pool
        self.clock = clock
        self.metrics = metrics
        self.rounds = 0  # background rounds finished (`round_done` is set after each)
        self.round_done = asyncio.Event()

    async def purge(self, tenants: Iterable[Tenant], *, dry_run: bool = False) -> dict[str, dict[str, int]] | None:
        """What each tenant's retention lets go (deleted, or only counted with `dry_run`), by tenant and kind; None
        when another process holds the purge lock."""
        now = self.clock()
        found: dict[str, dict[str, int]] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            if not await store.try_lock(conn):
                return None
            for tenant in tenants:
                days = tenant.retention
                found[tenant.id] = await store.sweep(
                    conn, tenant.id, sessions_before=now - timedelta(days=days.sessions),
                    events_before=now - timedelta(days=days.events),
                    anon_before=(now - timedelta(days=days.anon_events)).date(),
                    forwards_before=now - timedelta(days=days.forwards), dry_run=dry_run)
        if not dry_run and self.metrics is not None:
            for tenant_id, counts in found.items():
                for kind, n in counts.items():
                    if n:
                        self.metrics.purged.labels(tenant=tenant_id, kind=kind).inc(n)
        return found

    async def run(self, tenants: Callable[[], Iterable[Tenant]], every_s: float = EVERY_S,
                  first_after_s: float = FIRST_AFTER_S) -> None:
        """Purge every `every_s` (with a little jitter, so replicas do not all try at once) until cancelled."""
        delay = first_after_s
        while True:
            await asyncio.sleep(delay * random.uniform(0.9, 1.1))
            delay = every_s
            try:
                found = await self.purge(tenants())
            except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("retention purge failed (%s); next try in %.0f s", type(err).__name__, every_s)
                continue
            if found is None:
                log.info("retention purge skipped: another process holds the purge lock")
            elif any(any(c.values()) for c in found.values()):
                log.info("retention purge: %s", {t: {k: n for k, n in c.items() if n} for t, c in found.items()})
            self.rounds += 1
            self.round_done.set()
