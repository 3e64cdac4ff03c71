"""The page-view write queue: what the proxy's hot path hands over, written in batches in the background.

`submit` never waits and says whether it accepted; batches close on count or age; the database being down keeps
writes queued (up to `max_queue`, the oldest dropped and counted beyond that) and retried; a write refused for
its content is dropped on its own, counted and logged. The encryption of a new visit's IP and user agent
(`PendingVisit`) happens here, just before a batch is stored, so the page waits only for decisions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from ..crypto import KeyRing
from ..metrics import Metrics
from ..tracking.models import AnonEvent, ConsentUpdate, SessionWrite
from . import sessions as session_store
from .errors import StorageError, StorageUnavailable

log = logging.getLogger(__name__)

UA_MAX_STORED = 512
HOLDS_SCAN_MAX = 2_000  # queued writes `holds` looks through (many flush intervals at a busy worker's rate)


@dataclass(frozen=True, slots=True)
class PendingVisit:
    """A page view of a visitor with marketing consent whose IP and user agent still need encrypting.

    `write` holds every other field; `sealed` gives the `SessionWrite` to store. The writer calls it just before
    the batch goes to the database, so the AES-GCM work is off the request path.
    """

    write: SessionWrite
    keys: KeyRing
    client_ip: str | None
    user_agent: str | None

    def sealed(self) -> SessionWrite:
        tenant_id = self.write.tenant_id
        ip_enc = ua_enc = None
        if self.client_ip:
            ip_enc = self.keys.encrypt(tenant_id, "sessions", "ip_enc", self.client_ip)
        if self.user_agent:
            ua_enc = self.keys.encrypt(tenant_id, "sessions", "user_agent_enc", self.user_agent[:UA_MAX_STORED])
        w = self.write  # built field by field: dataclasses.replace costs more than both encryptions
        return SessionWrite(tenant_id=w.tenant_id, session_id=w.session_id, is_new=w.is_new, touch=w.touch,
                            device=w.device, geo=w.geo, consent=w.consent, ip_hash=w.ip_hash, ip_enc=ip_enc,
                            user_agent_enc=ua_enc, fbp=w.fbp, fbc=w.fbc, at=w.at)


# Failures after which a write is kept and retried: the database is unreachable, not the data wrong.
_UNAVAILABLE = (StorageUnavailable, OSError, asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError,
                asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.TooManyConnectionsError)

# ---------------------------------------------------------------------------------------------------------


class VisitWriter:
    """Queues page-view writes without blocking and writes them in batches in the background.

    `submit` never waits and says whether it accepted. When the database is down, writes stay queued (up to
    `max_queue`) and are retried; beyond that the oldest are dropped and counted as lost. Anonymous
    aggregates are summed in memory and added in one statement per flush.
    """

    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, *, max_queue: int = 50_000, batch_size: int = 500,
                 interval_s: float = 0.05, retry_s: float = 1.0):
        self.pool = pool
        self.metrics = metrics
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.retry_s = retry_s
        self._visits: deque[SessionWrite | PendingVisit | ConsentUpdate] = deque()
        self._anon: dict[tuple, int] = {}
        self._wake = asyncio.Event()
        self._writing: list[SessionWrite | PendingVisit | ConsentUpdate] = []  # the batch in the database now
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.healthy = True

    # -- hot path ------------------------------------------------------------------------------------------

    def submit(self, write: SessionWrite | PendingVisit | ConsentUpdate) -> bool:
        accepted = True
        if len(self._visits) >= self.max_queue:
            self._visits.popleft()
            self.metrics.lost_writes.labels(kind="visit").inc()
            accepted = False
        self._visits.append(write)  # the queue-depth gauge is set at each flush, not on every page view
        if len(self._visits) >= self.batch_size:
            self._wake.set()
        return accepted

    def holds(self, tenant_id: str, session_id: UUID) -> bool:
        """Whether a write of this session is queued or being written here (a scan of at most one interval's
        page views): a conversion matched to it flushes first, so that the touch that just brought the visitor
        counts. A queue longer than `HOLDS_SCAN_MAX` means the database is behind: not scanned, False (a
        conversion does not wait for a backlog; it is matched on what is stored, as before the check)."""
        if len(self._visits) > HOLDS_SCAN_MAX:
            return False
        for queued in (self._visits, self._writing):
            for w in queued:
                target = w.write if isinstance(w, PendingVisit) else w
                if target.session_id == session_id and target.tenant_id == tenant_id:
                    return True
        return False

    def count_anon(self, event: AnonEvent) -> None:
        key = event.key
        self._anon[key] = self._anon.get(key, 0) + 1

    # -- background --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="halo-visit-writer")

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            ok = await self.flush()
            if not ok:
                await asyncio.sleep(self.retry_s)

    async def flush(self) -> bool:
        """Write everything queued now. True when the database took it all."""
        async with self._lock:
            ok = True
            if self._anon:
                anon, self._anon = self._anon, {}
                rows = [AnonEvent(*key, count=count) for key, count in anon.items()]
                try:
                    await session_store.add_anon_events(self.pool, rows)
                except (StorageError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                    ok = False
                    self._storage_failed("anon_events", err)
                    for key, count in anon.items():  # keep them for the next try
                        self._anon[key] = self._anon.get(key, 0) + count
            while ok and self._visits:
                batch = [self._visits.popleft() for _ in range(min(self.batch_size, len(self._visits)))]
                self._writing = batch
                try:
                    await self._write(batch)
                except _UNAVAILABLE as err:
                    ok = False
                    self._storage_failed("visits", err)
                    room = self.max_queue - len(self._visits)
                    keep = batch[:max(room, 0)]
                    self._visits.extendleft(reversed(keep))
                    if len(keep) < len(batch):
                        self.metrics.lost_writes.labels(kind="visit").inc(len(batch) - len(keep))
                except Exception as err:  # noqa: BLE001 - a bad row must not stop every later page view
                    self._storage_failed("visits", err)
                    await self._write_one_by_one(batch)
            self._writing = []
            self.metrics.write_queue.set(len(self._visits))
            if ok:
                self.healthy = True
            return ok

    async def _write(self, batch: list[SessionWrite | PendingVisit | ConsentUpdate]) -> None:
        visits = [w.sealed() if isinstance(w, PendingVisit) else w
                  for w in batch if not isinstance(w, ConsentUpdate)]
        if visits:
            await session_store.write_visits(self.pool, visits)
        for update in batch:
            if isinstance(update, ConsentUpdate):
                await session_store.update_consent(self.pool, update.tenant_id, update.session_id,
                                                   update.consent, update.at)

    async def _write_one_by_one(self, batch: list[SessionWrite | PendingVisit | ConsentUpdate]) -> None:
        """A batch refused for its content (not for an outage): each write on its own, so that only the bad
        one is dropped (and counted, and logged) and the rest are stored. An outage meanwhile requeues the
        writes not yet stored."""
        for index, write in enumerate(batch):
            try:
                await self._write([write])
            except _UNAVAILABLE:
                self._visits.extendleft(reversed(batch[index:]))
                return
            except Exception as err:  # noqa: BLE001
                self.metrics.lost_writes.labels(kind="invalid").inc()
                log.error("a page-view write was refused and dropped (%s: %s)", type(err).__name__, err)

    def _storage_failed(self, op: str, err: BaseException) -> None:
        self.healthy = False
        self.metrics.storage_errors.labels(op=op).inc()
        log.warning("storage write failed (%s): %s; will retry", op, type(err).__name__)

    async def close(self) -> None:
        """Stop the loop and make a last attempt to write what is queued; what cannot be written is counted."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()
        if self._visits:
            self.metrics.lost_writes.labels(kind="visit").inc(len(self._visits))
            log.error("%d page-view writes could not be stored before shutdown", len(self._visits))
            self._visits.clear()
        if self._anon:
            self.metrics.lost_writes.labels(kind="anon").inc(sum(self._anon.values()))
            self._anon.clear()
