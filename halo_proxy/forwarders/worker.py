"""The delivery worker: drains the outbox to the ad platforms, at least once, with stable event ids.

Every proxy process runs one. It leases due rows (`FOR UPDATE SKIP LOCKED`, no lock held across the HTTP call),
sends them in platform-sized batches, and records the outcome: sent; retry later (capped exponential backoff with
full jitter, the platform's Retry-After as a floor); or dead letter with the platform's reason. An event older
than the platform accepts is dead-lettered without being sent. A worker killed between the send and the database
update leaves its lease to expire; the row is claimed again and sent again with the same event id, which the
platforms deduplicate on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..config import OutboxSettings, Settings
from ..storage import outbox
from ..storage.errors import StorageError
from ..storage.outbox import ForwardRow
from . import PLATFORMS
from .models import ForwardEvent, SendResult

log = logging.getLogger(__name__)

Decrypt = Callable[[str, bytes], str]  # (tenant id, payload_enc) -> event JSON


GAUGE_EVERY_S = 10.0


class DeliveryMetrics:
    """The worker's metrics: attempts and outcomes by platform and reason, outbox depth and age."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.attempts = Counter("halo_forward_attempts_total", "Requests to ad platforms by outcome and reason.",
                                ["platform", "outcome", "reason"], registry=r)
        self.sent = Counter("halo_forwards_sent_total", "Events accepted by ad platforms.", ["platform"],
                            registry=r)
        self.dead = Counter("halo_forwards_dead_total", "Events dead-lettered, by reason.", ["platform", "reason"],
                            registry=r)
        self.depth = Gauge("halo_outbox_depth", "Events waiting to be sent.", ["platform"], registry=r,
                           multiprocess_mode="max")
        self.oldest = Gauge("halo_outbox_oldest_pending_seconds", "Age of the oldest event waiting to be sent.",
                            registry=r, multiprocess_mode="max")
        self.storage_errors = Counter("halo_outbox_errors_total", "Outbox rounds that failed on the database.",
                                      registry=r)


def backoff(attempts: int, retry_after: float | None, settings: OutboxSettings, rng: random.Random) -> float:
    """Seconds until the next attempt: full jitter over a capped exponential, never below Retry-After."""
    ceiling = min(settings.backoff_cap_s, settings.backoff_base_s * 2 ** max(attempts - 1, 0))
    delay = rng.uniform(0, ceiling)
    return max(delay, retry_after or 0.0)


class DeliveryWorker:
    """Drains the outbox. `settings_now()` gives the live tenant settings (credentials may be reloaded)."""

    def __init__(self, pool: asyncpg.Pool, session: aiohttp.ClientSession, settings_now: Callable[[], Settings],
                 decrypt: Decrypt, metrics: DeliveryMetrics, *, clock: Callable[[], datetime] | None = None,
                 rng: random.Random | None = None, worker_id: str | None = None):
        self.pool = pool
        self.session = session
        self.settings_now = settings_now
        self.decrypt = decrypt
        self.metrics = metrics
        self.clock = clock or (lambda: datetime.now(UTC))
        self.rng = rng or random.Random()
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_gauges = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def cfg(self) -> OutboxSettings:
        return self.settings_now().server.outbox

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="halo-delivery-worker")

    def wake(self) -> None:
        """A conversion was just stored: look at the outbox now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Finish the round in flight (its sends complete and are recorded), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            done = 0
            try:
                done = await self.run_once()
                if loop.time() >= self._next_gauges:
                    self._next_gauges = loop.time() + GAUGE_EVERY_S
                    await self.update_gauges()
            except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                self.metrics.storage_errors.inc()
                log.warning("outbox round failed: %s", type(err).__name__)
            except Exception:  # a bug must not stop deliveries for good
                log.exception("outbox round failed unexpectedly")
            if done == 0 and not self._stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.poll_s)
                except TimeoutError:
                    pass
                self._wake.clear()

    async def update_gauges(self) -> None:
        depth = await outbox.depth(self.pool)
        for platform in PLATFORMS:
            self.metrics.depth.labels(platform=platform).set(depth.get(platform, 0))
        self.metrics.oldest.set(await outbox.oldest_pending_age(self.pool, self.clock()))

    # -- one round -----------------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim due rows and deliver them. Returns how many rows were handled."""
        now = self.clock()
        rows = await outbox.claim(self.pool, self.worker_id, self.cfg.batch, self.cfg.lease_s, now)
        if not rows:
            return 0
        groups: dict[tuple[str, str], list[ForwardRow]] = defaultdict(list)
        for row in rows:
            groups[(row.tenant_id, row.platform)].append(row)
        await asyncio.gather(*(self._deliver(tenant_id, platform, group)
                               for (tenant_id, platform), group in groups.items()))
        return len(rows)

    async def _deliver(self, tenant_id: str, platform: str, rows: list[ForwardRow]) -> None:
        tenant = self.settings_now().tenant(tenant_id)
        platform_settings = getattr(tenant.forwarders, platform, None) if tenant is not None else None
        if platform_settings is None:
            await self._dead(platform, [r.id for r in rows], "not_configured",
                             f"{platform} is not configured for tenant {tenant_id}")
            return
        module = PLATFORMS[platform]
        now = self.clock()
        ready: list[tuple[ForwardRow, ForwardEvent]] = []
        for row in rows:
            try:
                event = ForwardEvent.from_json(self.decrypt(tenant_id, row.payload_enc or b""))
            except Exception as err:  # noqa: BLE001 - an unreadable payload can never be sent
                await self._dead(platform, [row.id], "invalid", f"unreadable payload: {type(err).__name__}")
                continue
            refused = module.check(event, now)
            if refused is not None:
                await self._dead(platform, [row.id], refused.reason, refused.detail)
                continue
            if row.attempts > self.cfg.max_attempts:
                await self._dead(platform, [row.id], "retries_exhausted",
                                 f"gave up after {row.attempts - 1} attempts: {row.last_error or ''}")
                continue
            ready.append((row, event))
        by_event = {id(event): row for row, event in ready}
        for batch in module.batches([event for _, event in ready]):
            await self._send(platform, module, platform_settings, batch, [by_event[id(e)] for e in batch])

    async def _send(self, platform: str, module, settings, events: Sequence[ForwardEvent],  # type: ignore[no-untyped-def]
                    rows: Sequence[ForwardRow]) -> None:
        result: SendResult = await module.send(self.session, settings, events, self.cfg.send_timeout_s)
        self.metrics.attempts.labels(platform=platform, outcome=result.outcome, reason=result.reason).inc()
        ids = [r.id for r in rows]
        now = self.clock()
        if result.outcome == "ok":
            await outbox.mark_sent(self.pool, ids, self.worker_id, now)
            self.metrics.sent.labels(platform=platform).inc(len(ids))
            return
        if result.outcome == "permanent" and len(events) > 1:
            # One bad event makes Meta, Data Manager and TikTok refuse the whole batch: find it alone.
            for event, row in zip(events, rows, strict=True):
                await self._send(platform, module, settings, [event], [row])
            return
        if result.outcome == "permanent":
            await self._dead(platform, ids, result.reason, result.detail)
            return
        attempts = max(r.attempts for r in rows)
        delay = backoff(attempts, result.retry_after, self.cfg, self.rng)
        await outbox.mark_retry(self.pool, ids, self.worker_id, now + timedelta(seconds=delay), result.detail,
                                reason=result.reason, now=now)
        log.info("%s: %d event(s) to retry in %.0f s (%s)", platform, len(ids), delay, result.reason)

    async def _dead(self, platform: str, ids: list[int], reason: str, detail: str | None) -> None:
        await outbox.mark_dead(self.pool, ids, self.worker_id, reason, detail, now=self.clock())
        self.metrics.dead.labels(platform=platform, reason=reason).inc(len(ids))
        log.warning("%s: %d event(s) dead-lettered (%s)", platform, len(ids), reason)
