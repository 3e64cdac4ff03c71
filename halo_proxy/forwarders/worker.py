"""The delivery worker: drains the outbox to the ad platforms, at least once, with stable event ids.

Every proxy process runs one, with one lane per platform: a lane claims only its platform's due rows
(`FOR UPDATE SKIP LOCKED`, no lock held across the HTTP call), sends them with at most `concurrency` requests in
flight, and records the outcome: sent; retry later (capped exponential backoff with full jitter, the platform's
Retry-After as a floor); or dead letter with the platform's reason. A slow, hanging or rate-limited platform
delays only its own lane, and a 429 or Retry-After pauses only that tenant's rows on that platform until the
given time (as sentry-python's transport does per destination).

Leases cannot run out under a send: just before a request leaves, its rows' lease is renewed past the send
timeout and the send is marked begun (`outbox.begin_send`, which also says which rows are still this worker's:
no other is sent); a heartbeat renews every row the worker holds. A stop releases what it could not finish, and
the supervisor releases the rows of a worker that died, so another worker takes them at once.

A row whose earlier send began and never recorded an outcome (a killed worker, a timeout after the request left)
is "in doubt": platforms that deduplicate the event (`deduplicates`: Meta, TikTok and Google Ads on the event id,
GA4 purchases on `transaction_id`) get it again with the same id; any other GA4 event is not sent twice and is
recorded `unconfirmed` in the ledger. Every attempt goes to the ledger (`outbox.record_attempts`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
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


GAUGE_EVERY_S = 2.0  # the outbox depth and age gauges are at most this old
LEASE_MARGIN_S = 5.0  # a lease outlasts the send timeout by this much
# Failures after which the request may have reached the platform (no connection made is `connect`; an HTTP
# answer is a verdict): an event the platform does not deduplicate is then not sent again.
MAY_HAVE_ARRIVED = frozenset({"timeout", "network"})
# Shared with the supervisor, which counts the rows of a worker that died under the same name.
RELEASED_HELP = "Leased events given back unsent (a stop that could not wait, a worker that died)."


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
        # Every worker reads the same table: the most recent reading of a live process is the truth (a dead
        # process's last reading is not, as "max" would keep it).
        self.depth = Gauge("halo_outbox_depth", "Events waiting to be sent.", ["platform"], registry=r,
                           multiprocess_mode="livemostrecent")
        self.oldest = Gauge("halo_outbox_oldest_pending_seconds", "Age of the oldest event waiting to be sent.",
                            registry=r, multiprocess_mode="livemostrecent")
        self.storage_errors = Counter("halo_outbox_errors_total", "Outbox rounds that failed on the database.",
                                      registry=r)
        self.paused = Counter("halo_forward_pauses_total", "Times a platform asked a tenant's lane to wait.",
                              ["platform"], registry=r)
        self.released = Counter("halo_forwards_released_total", RELEASED_HELP, ["platform"], registry=r)
        self.unconfirmed = Counter("halo_forwards_unconfirmed_total",
                                   "Events that may have arrived and are not sent again (no dedup key).",
                                   ["platform"], registry=r)
        for platform in PLATFORMS:  # present from the start, at zero
            self.sent.labels(platform=platform)
            self.depth.labels(platform=platform)
            self.paused.labels(platform=platform)
            self.released.labels(platform=platform)
            self.unconfirmed.labels(platform=platform)
            self.attempts.labels(platform=platform, outcome="ok", reason="ok")


def backoff(attempts: int, retry_after: float | None, settings: OutboxSettings, rng: random.Random) -> float:
    """Seconds until the next attempt: full jitter over a capped exponential, never below Retry-After."""
    ceiling = min(settings.backoff_cap_s, settings.backoff_base_s * 2 ** max(attempts - 1, 0))
    delay = rng.uniform(0, ceiling)
    return max(delay, retry_after or 0.0)


class DeliveryWorker:
    """Drains the outbox, one lane per platform. `settings_now()` gives the live tenant settings (credentials
    may be reloaded)."""

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
        self.worker_id = worker_id or process_worker_id()
        self._wake = {platform: asyncio.Event() for platform in PLATFORMS}
        self._stopping = False
        self._lanes: list[asyncio.Task[None]] = []
        self._helpers: list[asyncio.Task[None]] = []
        self._paused: dict[tuple[str, str], datetime] = {}  # (tenant, platform) -> asked to wait until
        self._held: set[int] = set()  # rows of rounds in progress: the only ones the heartbeat renews

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def cfg(self) -> OutboxSettings:
        return self.settings_now().server.outbox

    def start(self) -> None:
        self._lanes = [asyncio.create_task(self._lane(platform), name=f"halo-delivery-{platform}")
                       for platform in PLATFORMS]
        self._helpers = [asyncio.create_task(self._heartbeat(), name="halo-delivery-heartbeat"),
                         asyncio.create_task(self._gauges(), name="halo-delivery-gauges")]

    def wake(self) -> None:
        """A conversion was just stored: look at the outbox now rather than at the next poll."""
        for event in self._wake.values():
            event.set()

    def stop_claiming(self) -> None:
        """A stop has begun: claim nothing more and start no new send; the sends in flight go on."""
        self._stopping = True
        self.wake()

    async def stop(self, timeout_s: float | None = None) -> int:
        """Let the rounds in flight finish (their sends complete and are recorded), for at most `timeout_s`;
        then cancel what is left and release every row still leased, so that another worker takes it at once.
        Returns how many sends were cut off mid-way (released in doubt): 0 when nothing was abandoned, -1 when
        the rows could not be released. Rows whose send had not begun are handed back without counting."""
        self._stopping = True
        self.wake()
        if self._lanes:
            _, pending = await asyncio.wait(self._lanes, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self._helpers:
            task.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        try:
            released = await outbox.release(self.pool, self.worker_id, self.clock(), ledger=outbox.Release(
                "stopping", cut="the process stopped during its send", clean="the process stopped before sending it",
                worker=self.worker_id))
        except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.error("could not release the outbox rows of %s (%s): they wait for their lease to run out",
                      self.worker_id, type(err).__name__)
            return -1
        cut = [r for r in released if r.in_doubt]
        if released:
            for row in released:
                self.metrics.released.labels(platform=row.platform).inc()
            log.warning("stopped with %d forward(s) unsent (%d cut off mid-send), released for another worker: %s",
                        len(released), len(cut), ", ".join(f"{r.platform}#{r.id}" for r in released[:20]))
        return len(cut)

    async def _lane(self, platform: str) -> None:
        event = self._wake[platform]
        while not self._stopping:
            done = 0
            try:
                done = await self.run_lane_once(platform)
            except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                self.metrics.storage_errors.inc()
                log.warning("outbox round for %s failed: %s", platform, type(err).__name__)
            except Exception:  # a bug must not stop deliveries for good
                log.exception("outbox round for %s failed unexpectedly", platform)
            if done == 0 and not self._stopping:
                try:
                    await asyncio.wait_for(event.wait(), timeout=self._idle_wait(platform))
                except TimeoutError:
                    pass
                event.clear()

    def _idle_wait(self, platform: str) -> float:
        """Until the next poll, or sooner when a pause on this platform ends."""
        wait = self.cfg.poll_s
        now = self.clock()
        for (_, paused_platform), until in self._paused.items():
            if paused_platform == platform and until > now:
                wait = min(wait, max((until - now).total_seconds(), 0.01))
        return wait

    async def _heartbeat(self) -> None:
        """Renew the leases of the rounds in progress, a third of a lease apart: a long round never loses its
        rows, and a row whose outcome could not be written is not held forever."""
        while True:
            lease = self.lease_s
            await asyncio.sleep(lease / 3)
            try:
                if self._held:
                    await outbox.renew_leases(self.pool, self.worker_id, self.clock() + timedelta(seconds=lease),
                                              list(self._held))
            except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("outbox lease renewal failed: %s", type(err).__name__)

    async def _gauges(self) -> None:
        while True:
            try:
                await self.update_gauges()
            except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.debug("outbox gauges not refreshed: %s", type(err).__name__)
            await asyncio.sleep(GAUGE_EVERY_S)

    async def update_gauges(self) -> None:
        depth = await outbox.depth(self.pool)
        for platform in PLATFORMS:
            self.metrics.depth.labels(platform=platform).set(depth.get(platform, 0))
        self.metrics.oldest.set(await outbox.oldest_pending_age(self.pool, self.clock()))

    @property
    def lease_s(self) -> float:
        cfg = self.cfg
        return max(cfg.lease_s, cfg.send_timeout_s + LEASE_MARGIN_S)

    # -- one round -----------------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """One round of every lane. Returns how many rows were handled."""
        return sum(await asyncio.gather(*(self.run_lane_once(platform) for platform in PLATFORMS)))

    async def run_lane_once(self, platform: str) -> int:
        """Claim this platform's due rows (not of tenants it asked to wait) and deliver them."""
        now = self.clock()
        paused = [tenant for (tenant, p), until in self._paused.items() if p == platform and until > now]
        cfg = self.cfg
        rows = await outbox.claim(self.pool, self.worker_id, cfg.batch, self.lease_s, now, platform=platform,
                                  exclude_tenants=paused)
        if not rows:
            return 0
        groups: dict[str, list[ForwardRow]] = defaultdict(list)
        for row in rows:
            groups[row.tenant_id].append(row)
        slots = asyncio.Semaphore(cfg.concurrency)
        ids = {row.id for row in rows}
        self._held |= ids
        try:
            # Every group runs to its end even when another fails: no send of this round outlives it.
            results = await asyncio.gather(*(self._deliver(tenant_id, platform, group, slots)
                                             for tenant_id, group in groups.items()), return_exceptions=True)
        finally:
            # A row whose outcome could not be written is no longer renewed: its lease runs out and any worker
            # takes it again.
            self._held -= ids
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                if isinstance(result, (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                    self.metrics.storage_errors.inc()
                    log.warning("outbox round for %s: an outcome was not recorded (%s); its rows are retried once "
                                "their lease runs out", platform, type(result).__name__)
                else:
                    log.error("outbox round for %s failed", platform, exc_info=result)
        return len(rows)

    async def _deliver(self, tenant_id: str, platform: str, rows: list[ForwardRow],
                       slots: asyncio.Semaphore) -> None:
        tenant = self.settings_now().tenant(tenant_id)
        platform_settings = getattr(tenant.forwarders, platform, None) if tenant is not None else None
        if platform_settings is None:
            # Perhaps only this process's tenant file lacks it (a rolling deploy that adds a tenant or a platform):
            # a process that has it sends it. Retried with backoff, dead only once its attempts run out.
            detail = f"{platform} is not configured for tenant {tenant_id} in this process"
            if max(r.attempts for r in rows) >= self.cfg.max_attempts:
                await self._dead(platform, rows, "not_configured", detail)
                return
            now = self.clock()
            delay = backoff(max(r.attempts for r in rows), None, self.cfg, self.rng)
            await outbox.mark_retry(self.pool, [r.id for r in rows], self.worker_id, now + timedelta(seconds=delay),
                                    detail, reason="not_configured", now=now,
                                    ledger=self._ledger("retry", rows, None, None, now, reason="not_configured",
                                                        detail=detail))
            log.warning("%s: %d event(s) of tenant %s wait for a process that has it configured", platform,
                        len(rows), tenant_id)
            return
        module = PLATFORMS[platform]
        now = self.clock()
        ready: list[tuple[ForwardRow, ForwardEvent]] = []
        for row in rows:
            try:
                event = ForwardEvent.from_json(self.decrypt(tenant_id, row.payload_enc or b""))
            except Exception as err:  # noqa: BLE001 - an unreadable payload can never be sent
                await self._dead(platform, [row], "invalid", f"unreadable payload: {type(err).__name__}")
                continue
            if row.in_doubt and not module.deduplicates(event):
                await self._unconfirmed(platform, [(row, event)], "an earlier send began and its outcome is unknown")
                continue
            refused = module.check(event, now)
            if refused is not None:
                await self._dead(platform, [row], refused.reason, refused.detail)
                continue
            if row.attempts > self.cfg.max_attempts:
                await self._dead(platform, [row], "retries_exhausted",
                                 f"gave up after {row.attempts - 1} attempts: {row.last_error or ''}")
                continue
            ready.append((row, event))
        by_event = {id(event): row for row, event in ready}

        async def one(batch: list[ForwardEvent]) -> None:
            async with slots:
                await self._send(tenant_id, platform, module, platform_settings, batch,
                                 [by_event[id(e)] for e in batch])

        results = await asyncio.gather(*(one(batch) for batch in module.batches([event for _, event in ready])),
                                       return_exceptions=True)
        for result in results:  # after every batch has ended: the round's caller logs it
            if isinstance(result, BaseException):
                raise result

    async def _send(self, tenant_id: str, platform: str, module, settings,  # type: ignore[no-untyped-def]
                    events: Sequence[ForwardEvent], rows: Sequence[ForwardRow]) -> None:
        now = self.clock()
        paused = self._paused.get((tenant_id, platform))
        if paused is not None and paused > now:  # asked to wait by an earlier request of this round
            await outbox.mark_retry(self.pool, [r.id for r in rows], self.worker_id, paused, "waiting as asked",
                                    reason="http_429", now=now,
                                    ledger=self._ledger("retry", rows, events, None, now, reason="paused",
                                                        detail="the platform asked this tenant to wait"))
            return
        if self._stopping:  # not begun: released clean at the stop, another process sends it at once
            return
        timeout = self.cfg.send_timeout_s
        ours = await outbox.begin_send(self.pool, [r.id for r in rows], self.worker_id,
                                       now + timedelta(seconds=timeout + LEASE_MARGIN_S), now)
        if len(ours) < len(rows):  # another worker holds them now: not ours to send
            log.warning("%s: %d row(s) no longer leased to %s, not sent", platform, len(rows) - len(ours),
                        self.worker_id)
            pairs = [(e, r) for e, r in zip(events, rows, strict=True) if r.id in ours]
            events, rows = [e for e, _ in pairs], [r for _, r in pairs]
            if not rows:
                return
        result: SendResult = await module.send(self.session, settings, events, timeout)
        self.metrics.attempts.labels(platform=platform, outcome=result.outcome, reason=result.reason).inc()
        now = self.clock()
        if result.outcome == "ok":
            await outbox.mark_sent(self.pool, [r.id for r in rows], self.worker_id, now,
                                   ledger=self._ledger("sent", rows, events, result, now))
            self.metrics.sent.labels(platform=platform).inc(len(rows))
            return
        if result.outcome == "permanent" and len(events) > 1:
            # One bad event makes Meta, Data Manager and TikTok refuse the whole batch: find it alone.
            for event, row in zip(events, rows, strict=True):
                await self._send(tenant_id, platform, module, settings, [event], [row])
            return
        if result.outcome == "permanent":
            await self._dead(platform, rows, result.reason, result.detail, events, result)
            return
        if result.reason in MAY_HAVE_ARRIVED:
            doubtful = [(r, e) for r, e in zip(rows, events, strict=True) if not module.deduplicates(e)]
            if doubtful:
                await self._unconfirmed(platform, doubtful, f"the request may have arrived ({result.reason})")
                kept = {r.id for r, _ in doubtful}
                pairs = [(e, r) for e, r in zip(events, rows, strict=True) if r.id not in kept]
                events, rows = [e for e, _ in pairs], [r for _, r in pairs]
                if not rows:
                    return
        if result.reason in ("http_429",) or result.retry_after:
            wait = result.retry_after if result.retry_after else backoff(1, None, self.cfg, self.rng)
            self._paused[(tenant_id, platform)] = now + timedelta(seconds=wait)
            self.metrics.paused.labels(platform=platform).inc()
            log.info("%s asked tenant %s to wait %.0f s", platform, tenant_id, wait)
        attempts = max(r.attempts for r in rows)
        delay = backoff(attempts, result.retry_after, self.cfg, self.rng)
        await outbox.mark_retry(self.pool, [r.id for r in rows], self.worker_id, now + timedelta(seconds=delay),
                                result.detail, reason=result.reason, now=now,
                                ledger=self._ledger("retry", rows, events, result, now))
        log.info("%s: %d event(s) to retry in %.0f s (%s)", platform, len(rows), delay, result.reason)

    def _ledger(self, outcome: str, rows: Sequence[ForwardRow], events: Sequence[ForwardEvent] | None,
                result: SendResult | None, now: datetime, reason: str | None = None,
                detail: str | None = None) -> outbox.Ledger:
        """The ledger entry written with an outcome (`outbox.Ledger`: same statement, rows that changed)."""
        consents = ({r.id: e.ad_user_data for r, e in zip(rows, events, strict=True)} if events is not None
                    else None)
        return outbox.Ledger(
            at=now, outcome=outcome,
            reason=reason if reason is not None else (result.reason if result else None),
            detail=(detail if detail is not None else (result.detail if result else None)) or None,
            http_status=result.status if result else None, worker=self.worker_id, consents=consents,
        )

    async def _record(self, attempts: list[outbox.Attempt]) -> None:
        """The ledger is a record, not a gate: a failure to write it is logged, the outcome stands."""
        try:
            await outbox.record_attempts(self.pool, attempts)
        except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("delivery ledger not written (%s)", type(err).__name__)

    async def _unconfirmed(self, platform: str, pairs: Sequence[tuple[ForwardRow, ForwardEvent]], detail: str) -> None:
        rows = [r for r, _ in pairs]
        now = self.clock()
        await outbox.mark_sent(self.pool, [r.id for r in rows], self.worker_id, now, reason="unconfirmed",
                               ledger=self._ledger("unconfirmed", rows, [e for _, e in pairs], None, now,
                                                   reason="unconfirmed", detail=detail))
        self.metrics.unconfirmed.labels(platform=platform).inc(len(rows))
        log.warning("%s: %d event(s) not sent again: %s", platform, len(rows), detail)

    async def _dead(self, platform: str, rows: Sequence[ForwardRow], reason: str, detail: str | None,
                    events: Sequence[ForwardEvent] | None = None, result: SendResult | None = None) -> None:
        now = self.clock()
        await outbox.mark_dead(self.pool, [r.id for r in rows], self.worker_id, reason, detail, now=now,
                               ledger=self._ledger("dead", rows, events, result, now, reason=reason, detail=detail))
        self.metrics.dead.labels(platform=platform, reason=reason).inc(len(rows))
        log.warning("%s: %d event(s) dead-lettered (%s)", platform, len(rows), reason)


def process_worker_id(pid: int | None = None) -> str:
    """`<host>:<pid>:<random>`: unique per worker, and findable by process (`outbox.release_process`)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}:{uuid.uuid4().hex[:8]}"
