"""Group commit for conversions: the leads and orders that arrive together are stored in one statement.

A conversion is answered only once it is committed (the contract), so each one used to cost its own statement and
its own commit (a WAL flush). `ConversionWriter.insert` hands the conversion to a batch instead and waits for that
batch's commit: while one batch is in the database, the conversions arriving behind it gather into the next, so
the batch grows with the load and costs nothing at low load (a lone lead is stored at once, as before). Each
caller gets what `conversions.insert_conversion` would have given it: the created row, or the first delivery's
row for a repeated idempotency key. A batch the database does not store (one row refused for its content, a row
lock waited for past `lock_timeout`, a deadlock with another process) is written again one conversion at a time,
beside the next batches, so one bad or contended row fails or waits only for its own request; the database being
unreachable fails every request of the batch (503, nothing half-written: one transaction).

Hand-written: asyncpg pipelines only `executemany`, which returns no rows, and no library batches awaited
inserts behind one commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from ..metrics import Metrics
from . import conversions as conversion_store
from .conversions import ConversionRecord, ConversionWrite, LinkWrite
from .db import translate_errors
from .errors import StorageUnavailable
from .outbox import ForwardWrite

log = logging.getLogger(__name__)

MAX_BATCH = 200  # conversions per statement: a few hundred kilobytes of arguments at most


@dataclass(slots=True)
class _Pending:
    write: ConversionWrite
    forwards: Sequence[ForwardWrite]
    links: Sequence[LinkWrite]
    done: asyncio.Future[tuple[ConversionRecord, bool]] = field(repr=False)


class ConversionWriter:
    """Stores conversions in batches, each caller waiting for the commit of its own.

    One batch is in the database at a time, and it never waits long for a row lock (`insert_conversions`'
    `lock_timeout`): a conversion whose idempotency key another transaction holds, a batch refused for one bad
    row, and the repeats of keys stored before are each finished on their own, beside the next batches, so no
    one conversion holds up the others.
    """

    def __init__(self, pool: asyncpg.Pool, metrics: Metrics | None = None, *, max_batch: int = MAX_BATCH):
        self.pool = pool
        self.metrics = metrics
        self.max_batch = max_batch
        self._queue: list[_Pending] = []
        self._running: asyncio.Task[None] | None = None
        self._alone: set[asyncio.Task[None]] = set()  # conversions being finished one by one
        # at most half the pool's connections for them: a repeat waiting for a row lock does not take them all
        self._alone_slots = asyncio.Semaphore(max(1, pool.get_max_size() // 2))
        self.batches = 0  # statements sent (for tests and the benchmark's notes)

    async def insert(self, write: ConversionWrite, forwards: Sequence[ForwardWrite] = (),
                     links: Sequence[LinkWrite] = ()) -> tuple[ConversionRecord, bool]:
        """(the row, True) when this conversion was created, (the stored row, False) for a repeated idempotency
        key; the links are written only with a created conversion. Raises as `insert_conversion` does."""
        if len({f.platform for f in forwards}) != len(forwards):
            raise ValueError("one forward per platform")
        loop = asyncio.get_running_loop()
        pending = _Pending(write, forwards, links, loop.create_future())
        self._queue.append(pending)
        if self._running is None:
            self._running = loop.create_task(self._run())
        # Shielded: a caller that goes away (its client disconnected) does not take the batch down with it; its
        # conversion is stored like the others, as a statement in flight would have been.
        return await asyncio.shield(pending.done)

    async def close(self) -> None:
        """Wait for everything queued so far to be stored (or to fail)."""
        while self._running is not None or self._alone:
            await asyncio.gather(*(t for t in (self._running, *self._alone) if t is not None),
                                 return_exceptions=True)

    async def _run(self) -> None:
        batch: list[_Pending] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                await self._write(batch)
        except BaseException as err:  # cancelled (shutdown): nobody is left waiting for ever
            failure = StorageUnavailable("storage is shutting down") if not isinstance(err, Exception) else err
            for p in (*batch, *self._queue):
                _fail(p, failure)
            self._queue = []
            raise
        finally:
            self._running = None

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            self.batches += 1
            if self.metrics is not None:
                self.metrics.conversion_batch_size.observe(len(batch))
            records = await conversion_store.insert_conversions(
                self.pool, [(p.write, p.forwards, p.links) for p in batch])
        except StorageUnavailable as err:
            for p in batch:
                _fail(p, err)
            return
        except Exception as err:  # noqa: BLE001 - refused for one row's content, a lock waited for, a bug
            if len(batch) > 1:
                log.info("a batch of %d conversions was not stored (%s); storing them one by one", len(batch),
                         type(err).__name__)
            for p in batch:
                self._finish_alone(p, "refused")
            return
        for p, record in zip(batch, records, strict=True):
            if record is not None:
                _succeed(p, (record, True))
        for p, record in zip(batch, records, strict=True):
            if record is None:  # a repeated idempotency key: the first delivery's row (rarely: stored since)
                self._finish_alone(p, "repeat")

    def _finish_alone(self, p: _Pending, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.conversions_alone.labels(reason=reason).inc()
        task = asyncio.get_running_loop().create_task(self._write_one(p))
        self._alone.add(task)
        task.add_done_callback(self._alone.discard)

    async def _write_one(self, p: _Pending) -> None:
        try:
            async with self._alone_slots:
                with translate_errors():  # the acquire's own timeout is "unavailable", as in the batch
                    async with self.pool.acquire() as conn:
                        record, created = await conversion_store.insert_conversion(conn, p.write, p.forwards,
                                                                                   p.links)
        except Exception as err:  # noqa: BLE001 - handed to the one caller it belongs to
            _fail(p, err)
        except BaseException:
            _fail(p, StorageUnavailable("storage is shutting down"))
            raise
        else:
            _succeed(p, (record, created))


def _succeed(p: _Pending, result: tuple[ConversionRecord, bool]) -> None:
    if not p.done.done():
        p.done.set_result(result)


def _fail(p: _Pending, err: BaseException) -> None:
    if not p.done.done():
        p.done.set_exception(err)
