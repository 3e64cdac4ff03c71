"""The forwarding outbox: one row per conversion and ad platform, drained by delivery workers.

Rows are written in the conversion's own transaction (`conversions.insert_conversion`), so a committed
conversion always has its forwards. Workers in any number of processes claim due rows with
`FOR UPDATE SKIP LOCKED` and lease them (`locked_until`, `locked_by`) instead of holding a lock across the
platform call; a worker killed mid-send leaves a lease that expires, and the row is claimed again with the same
`event_id` (delivery is at least once; platforms deduplicate on the event id). Every mark_* call only touches
rows still pending and leased by the calling worker, so a worker whose lease was taken over cannot overwrite
the newer claim.

Statuses: ``pending`` (to send, possibly later), ``sent``, ``dead`` (permanent failure or too many attempts:
the dead letters, requeued by `requeue`), ``skipped`` (the consent gate, or no one to match on; never sent),
``cancelled`` (erasure).

Plain functions taking a pool (or a connection, to join its transaction) and returning plain dataclasses.
Times are passed in by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from .db import translate_errors
from .errors import StorageError, StorageUnavailable

log = logging.getLogger(__name__)

__all__ = [
    "ATTEMPT_OUTCOMES",
    "FORWARD_STATUSES",
    "PLATFORMS",
    "Attempt",
    "ForwardRow",
    "Ledger",
    "ForwardWrite",
    "attempts_for",
    "begin_send",
    "cancel_for_conversions",
    "claim",
    "count_by_status",
    "depth",
    "forwards_for_conversions",
    "get_forward",
    "list_forwards",
    "mark_dead",
    "mark_retry",
    "mark_sent",
    "mark_skipped",
    "oldest_pending_age",
    "purge_finished",
    "record_attempts",
    "release",
    "release_process",
    "renew_leases",
    "requeue",
]

Executor = asyncpg.Pool | asyncpg.Connection

PLATFORMS: tuple[str, ...] = ("meta", "ga4", "google_ads", "tiktok")
FORWARD_STATUSES: tuple[str, ...] = ("pending", "sent", "dead", "skipped", "cancelled")
_REQUEUEABLE = ("dead", "pending")
_FINISHED = ["sent", "dead", "skipped", "cancelled"]


@dataclass(frozen=True, slots=True)
class ForwardWrite:
    """One forward to write with its conversion (see `conversions.insert_conversion`).

    `status` is ``pending`` (the default) or ``skipped`` when it is known never to be sent (the consent gate, or
    no customer information the platform could match on), with `reason`. `next_attempt_at` defaults to the
    conversion's `created_at` (due at once).
    """

    platform: str
    event_id: str
    payload_enc: bytes | None
    status: str = "pending"
    reason: str | None = None
    next_attempt_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}, not {self.platform!r}")
        if self.status not in ("pending", "skipped"):
            raise ValueError(f"a new forward is pending or skipped, not {self.status!r}")
        if self.status == "pending" and self.payload_enc is None:
            raise ValueError("a pending forward needs its payload")


@dataclass(frozen=True, slots=True)
class ForwardRow:
    id: int
    tenant_id: str
    conversion_id: UUID
    platform: str
    event_id: str
    status: str
    reason: str | None
    attempts: int  # claims so far, including the current one
    next_attempt_at: datetime
    locked_until: datetime | None
    locked_by: str | None
    last_error: str | None
    payload_enc: bytes | None
    created_at: datetime
    sent_at: datetime | None
    updated_at: datetime
    send_started_at: datetime | None = None  # a send began and no outcome was recorded since (see begin_send)

    @property
    def in_doubt(self) -> bool:
        """An earlier send of this row may have reached the platform: it began, and nothing recorded its end."""
        return self.send_started_at is not None


_COLUMNS = (
    "id, tenant_id, conversion_id, platform, event_id, status, reason, attempts, next_attempt_at, "
    "locked_until, locked_by, last_error, payload_enc, created_at, sent_at, updated_at, send_started_at"
)


def _row(record: asyncpg.Record) -> ForwardRow:
    return ForwardRow(**dict(record))


def _ids(ids: int | Sequence[int]) -> list[int]:
    return [ids] if isinstance(ids, int) else list(ids)


def _count(status: str) -> int:
    return int(status.split()[-1])


def _check_platform(platform: str | None) -> None:
    if platform is not None and platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, not {platform!r}")


# -- claiming -----------------------------------------------------------------------------------------------------

# $1 now, $2 lease end, $3 worker, $4 limit[, $5 platform]. The inner SELECT walks a pending-only index in
# claim order; SKIP LOCKED passes over rows another claimer is taking right now, and the lease conditions are
# re-checked on the latest row version once locked, so a row is never handed to two workers at once.
_CLAIM = """
UPDATE forwards f SET locked_until = $2, locked_by = $3, attempts = f.attempts + 1, updated_at = $1
WHERE f.id IN (
    SELECT id FROM forwards
    WHERE status = 'pending' AND next_attempt_at <= $1 AND (locked_until IS NULL OR locked_until < $1)
          {platform}
    ORDER BY {order}
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
RETURNING {columns}
"""
_CLAIM_ANY = _CLAIM.format(platform="", order="next_attempt_at, id", columns=_COLUMNS)
_CLAIM_PLATFORM = _CLAIM.format(
    platform="AND platform = $5 AND NOT (tenant_id = ANY($6::text[]))", order="platform, next_attempt_at, id",
    columns=_COLUMNS,
)


async def claim(
    db: Executor,
    worker_id: str,
    limit: int,
    lease_s: float,
    now: datetime,
    *,
    platform: str | None = None,
    exclude_tenants: Sequence[str] = (),
) -> list[ForwardRow]:
    """Lease up to `limit` due pending rows (of one platform when given, then not of `exclude_tenants`: those a
    platform asked to wait) to `worker_id` until `now + lease_s`, counting an attempt on each; oldest due first.
    No lock outlives this call: the lease is the claim. Rows whose lease expired (a killed worker) are due
    again."""
    if limit <= 0:
        return []
    if lease_s <= 0:
        raise ValueError("the lease must be positive")
    _check_platform(platform)
    until = now + timedelta(seconds=lease_s)
    with translate_errors():
        if platform is None:
            rows = await db.fetch(_CLAIM_ANY, now, until, worker_id, limit)
        else:
            rows = await db.fetch(_CLAIM_PLATFORM, now, until, worker_id, limit, platform, list(exclude_tenants))
    return sorted((_row(r) for r in rows), key=lambda r: (r.next_attempt_at, r.id))


# -- outcomes -----------------------------------------------------------------------------------------------------

_LEASED = "id = ANY($1::bigint[]) AND status = 'pending' AND locked_by = $2"


async def begin_send(db: Executor, ids: Sequence[int], worker_id: str, until: datetime, now: datetime) -> set[int]:
    """Just before these rows' request leaves: renew their lease to `until` (it must outlast the send) and mark
    the send begun. Returns the ids still leased by `worker_id`: only those may be sent."""
    with translate_errors():
        rows = await db.fetch(
            f"""UPDATE forwards SET locked_until = greatest(locked_until, $3), send_started_at = $4, updated_at = $4
                WHERE {_LEASED} RETURNING id""",
            _ids(ids),
            worker_id,
            until,
            now,
        )
    return {r["id"] for r in rows}


@dataclass(frozen=True, slots=True)
class Release:
    """The ledger entry a release writes in the same statement, for each row it gives back: outcome `released`
    with `reason`, and `cut` or `clean` as the detail (a send under way, or not begun)."""

    reason: str
    cut: str
    clean: str
    worker: str | None = None


async def _release(db: Executor, where: str, who: str, now: datetime,
                   ledger: Release | None) -> list[ForwardRow]:
    update = f"""UPDATE forwards SET locked_until = NULL, locked_by = NULL, updated_at = $2
                 WHERE status = 'pending' AND {where} RETURNING {_COLUMNS}"""
    if ledger is None:
        with translate_errors():
            rows = await db.fetch(update, who, now)
        return [_row(r) for r in rows]
    try:
        with translate_errors():  # one statement: the ledger commits with the release, before any new claim
            rows = await db.fetch(
                f"""WITH done AS ({update}),
                    ledger AS (INSERT INTO forward_attempts ({_ATTEMPT_COLUMNS})
                               SELECT id, tenant_id, platform, attempts, $2, 'released', $3::text,
                                      CASE WHEN send_started_at IS NULL THEN $5::text ELSE $4::text END,
                                      NULL, NULL, $6::text
                               FROM done)
                    SELECT * FROM done""",
                who, now, ledger.reason, ledger.cut, ledger.clean, ledger.worker)
    except StorageUnavailable:
        raise
    except StorageError as err:  # the ledger is a record, not a gate: the rows are released without it
        log.error("the ledger entries of a release were refused (%s); releasing without them", err)
        with translate_errors():
            rows = await db.fetch(update, who, now)
    return [_row(r) for r in rows]


async def release_process(db: Executor, host: str, pid: int, now: datetime, *,
                          ledger: Release | None = None) -> list[ForwardRow]:
    """`release` for every worker of a process that died (ids `<host>:<pid>:...`, see the delivery worker)."""
    return await _release(db, "starts_with(locked_by, $1)", f"{host}:{pid}:", now, ledger)


async def renew_leases(db: Executor, worker_id: str, until: datetime, ids: Sequence[int]) -> int:
    """The worker's heartbeat: these rows, still pending and its own, stay its own until `until`. Returns how
    many."""
    with translate_errors():
        status = await db.execute(
            f"UPDATE forwards SET locked_until = greatest(locked_until, $3) WHERE {_LEASED}",
            _ids(ids),
            worker_id,
            until,
        )
    return _count(status)


async def release(db: Executor, worker_id: str, now: datetime, *,
                  ledger: Release | None = None) -> list[ForwardRow]:
    """Give up every pending row `worker_id` holds (a stop that cannot wait, a worker that died): due at once
    for any other worker. With a `ledger`, each row released gets its ledger entry in the same statement.
    Returns the rows released."""
    return await _release(db, "locked_by = $1", worker_id, now, ledger)


@dataclass(frozen=True, slots=True)
class Ledger:
    """The ledger entry an outcome writes in the same statement, for each row it changes (see `Attempt`).
    `consents` gives each row's marketing consent by id."""

    at: datetime
    outcome: str
    reason: str | None = None
    detail: str | None = None
    http_status: int | None = None
    worker: str | None = None
    consents: dict[int, bool | None] | None = None


async def _outcome(db: Executor, update: str, ids: int | Sequence[int], params: list[Any],
                   ledger: Ledger | None) -> int:
    """Run `update` (its $1 the ids, $2 the worker), and with a `ledger` add one attempt per row it changed, in
    one statement: the ledger holds exactly the outcomes that took effect."""
    id_list = _ids(ids)
    with translate_errors():
        if ledger is None:
            return _count(await db.execute(update, id_list, *params))
        if ledger.outcome not in ATTEMPT_OUTCOMES:
            raise ValueError(f"outcome must be one of {ATTEMPT_OUTCOMES}, not {ledger.outcome!r}")
        n = 1 + len(params)
        consents = [(ledger.consents or {}).get(i) for i in id_list]
        sql = f"""WITH done AS ({update} RETURNING id, tenant_id, platform, attempts)
            INSERT INTO forward_attempts ({_ATTEMPT_COLUMNS})
            SELECT d.id, d.tenant_id, d.platform, d.attempts, ${n + 1}, ${n + 2}, ${n + 3}, ${n + 4}, ${n + 5},
                   c.consent, ${n + 6}
            FROM done d LEFT JOIN unnest($1::bigint[], ${n + 7}::boolean[]) AS c(id, consent) ON c.id = d.id"""
        status = await db.execute(sql, id_list, *params, ledger.at, ledger.outcome, ledger.reason, ledger.detail,
                                  ledger.http_status, ledger.worker, consents)
    return _count(status)


async def mark_sent(db: Executor, ids: int | Sequence[int], worker_id: str, now: datetime, *,
                    reason: str | None = None, ledger: Ledger | None = None) -> int:
    """The platform accepted these rows: sent (`reason` "unconfirmed": may have arrived, not sent again). Only
    rows still pending and leased by `worker_id` change (an expired lease nobody took over still counts: the send
    happened). Returns how many changed."""
    return await _outcome(
        db,
        f"""UPDATE forwards SET status = 'sent', sent_at = $3, updated_at = $3, send_started_at = NULL,
                locked_until = NULL, locked_by = NULL, reason = $4, last_error = NULL
            WHERE {_LEASED}""",
        ids, [worker_id, now, reason], ledger,
    )


async def mark_retry(
    db: Executor,
    ids: int | Sequence[int],
    worker_id: str,
    next_attempt_at: datetime,
    error: str | None,
    *,
    reason: str | None = None,
    now: datetime | None = None,
    ledger: Ledger | None = None,
) -> int:
    """A transient failure: release the lease and make the rows due again at `next_attempt_at`, keeping the
    error (and a short `reason` label) for operators. Returns how many rows changed."""
    return await _outcome(
        db,
        f"""UPDATE forwards SET next_attempt_at = $3, last_error = $4, reason = $5, send_started_at = NULL,
                locked_until = NULL, locked_by = NULL, updated_at = coalesce($6::timestamptz, now())
            WHERE {_LEASED}""",
        ids, [worker_id, next_attempt_at, error, reason, now], ledger,
    )


async def _finish(
    db: Executor,
    ids: int | Sequence[int],
    worker_id: str,
    new_status: str,
    reason: str,
    error: str | None,
    now: datetime | None,
    ledger: Ledger | None = None,
) -> int:
    return await _outcome(
        db,
        f"""UPDATE forwards SET status = $3, reason = $4, last_error = $5, send_started_at = NULL,
                locked_until = NULL, locked_by = NULL, updated_at = coalesce($6::timestamptz, now())
            WHERE {_LEASED}""",
        ids, [worker_id, new_status, reason, error, now], ledger,
    )


async def mark_dead(
    db: Executor,
    ids: int | Sequence[int],
    worker_id: str,
    reason: str,
    error: str | None = None,
    *,
    now: datetime | None = None,
    ledger: Ledger | None = None,
) -> int:
    """A permanent failure (or too many attempts, or too old to send): dead letter with the reason."""
    return await _finish(db, ids, worker_id, "dead", reason, error, now, ledger)


async def mark_skipped(
    db: Executor,
    ids: int | Sequence[int],
    worker_id: str,
    reason: str,
    *,
    now: datetime | None = None,
) -> int:
    """Not to be sent (the consent gate refused it, say): skipped with the reason."""
    return await _finish(db, ids, worker_id, "skipped", reason, None, now)


# -- operators and privacy ----------------------------------------------------------------------------------------


async def cancel_for_conversions(
    db: Executor, tenant_id: str, conversion_ids: Sequence[UUID], *, now: datetime | None = None
) -> int:
    """Erasure: pending and dead forwards of these conversions are cancelled (never sent, never requeued),
    and every forward of them loses its payload. Returns how many were cancelled; repeating it is safe."""
    if not conversion_ids:
        return 0
    with translate_errors():
        rows = await db.fetch(
            """UPDATE forwards SET
                   status = CASE WHEN status IN ('pending', 'dead') THEN 'cancelled' ELSE status END,
                   reason = CASE WHEN status IN ('pending', 'dead') THEN 'erased' ELSE reason END,
                   payload_enc = NULL, locked_until = NULL, locked_by = NULL,
                   updated_at = coalesce($3, now())
               WHERE tenant_id = $1 AND conversion_id = ANY($2::uuid[])
                 AND (status IN ('pending', 'dead') OR payload_enc IS NOT NULL)
               RETURNING reason = 'erased' AND status = 'cancelled' AS cancelled""",
            tenant_id,
            list(conversion_ids),
            now,
        )
    return sum(1 for r in rows if r["cancelled"])


async def requeue(
    db: Executor,
    tenant_id: str | None,
    *,
    ids: Sequence[int] | None = None,
    status: str = "dead",
    platform: str | None = None,
    now: datetime | None = None,
) -> int:
    """`halo-proxy outbox retry`: make rows with `status` (``dead``, or ``pending`` to skip their backoff) due
    now with attempts reset, optionally only these ids, one tenant (None: all) or one platform. Rows leased
    right now are left alone. Returns how many were requeued."""
    if status not in _REQUEUEABLE:
        raise ValueError(f"only {_REQUEUEABLE} rows can be requeued, not {status!r}")
    _check_platform(platform)
    conditions = [
        "status = $1",
        "payload_enc IS NOT NULL",
        "(locked_until IS NULL OR locked_until < coalesce($2::timestamptz, now()))",
    ]
    args: list[Any] = [status, now]
    _filters(conditions, args, tenant_id=tenant_id, platform=platform, ids=ids)
    with translate_errors():
        result = await db.execute(
            f"""UPDATE forwards SET status = 'pending', attempts = 0, next_attempt_at = coalesce($2::timestamptz, now()),
                    locked_until = NULL, locked_by = NULL, reason = NULL,
                    updated_at = coalesce($2::timestamptz, now())
                WHERE {" AND ".join(conditions)}""",
            *args,
        )
    return _count(result)


def _filters(
    conditions: list[str],
    args: list[Any],
    *,
    tenant_id: str | None = None,
    platform: str | None = None,
    ids: Sequence[int] | None = None,
) -> None:
    if tenant_id is not None:
        args.append(tenant_id)
        conditions.append(f"tenant_id = ${len(args)}")
    if platform is not None:
        args.append(platform)
        conditions.append(f"platform = ${len(args)}")
    if ids is not None:
        args.append(list(ids))
        conditions.append(f"id = ANY(${len(args)}::bigint[])")


async def purge_finished(db: Executor, tenant_id: str, before: datetime) -> int:
    """Retention: delete sent, dead, skipped and cancelled rows last changed before `before`."""
    with translate_errors():
        status = await db.execute(
            """DELETE FROM forwards
               WHERE status = ANY($3::text[]) AND tenant_id = $1 AND updated_at < $2""",
            tenant_id,
            before,
            _FINISHED,
        )
    return _count(status)


# -- reads --------------------------------------------------------------------------------------------------------


async def get_forward(db: Executor, id: int, *, tenant_id: str | None = None) -> ForwardRow | None:
    with translate_errors():
        row = await db.fetchrow(
            f"SELECT {_COLUMNS} FROM forwards WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
            id,
            tenant_id,
        )
    return None if row is None else _row(row)


async def list_forwards(
    db: Executor,
    status: str | None = None,
    tenant_id: str | None = None,
    limit: int = 100,
    *,
    platform: str | None = None,
) -> list[ForwardRow]:
    """Rows with `status` (None: any), of one tenant (None: all) and platform: dead letters first, then pending
    rows oldest first, then the others newest first."""
    sql, args = _list_query(status, tenant_id, platform, limit)
    with translate_errors():
        rows = await db.fetch(sql, *args)
    return [_row(r) for r in rows]


def _list_query(
    status: str | None, tenant_id: str | None, platform: str | None, limit: int
) -> tuple[str, list[Any]]:
    if status is not None and status not in FORWARD_STATUSES:
        raise ValueError(f"status must be one of {FORWARD_STATUSES}, not {status!r}")
    _check_platform(platform)
    conditions: list[str] = []
    args: list[Any] = [limit]
    if status is not None:
        args.append(status)
        conditions.append("status = $2")
    _filters(conditions, args, tenant_id=tenant_id, platform=platform)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    # What needs attention first: dead letters, then pending rows oldest first, then the rest newest first.
    order = ("CASE status WHEN 'dead' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END, "
             "CASE WHEN status IN ('dead', 'pending') THEN created_at END, id DESC")
    return f"SELECT {_COLUMNS} FROM forwards {where} ORDER BY {order} LIMIT $1", args


_FOR_CONVERSIONS = f"""
SELECT {_COLUMNS} FROM forwards WHERE tenant_id = $1 AND conversion_id = ANY($2::uuid[])
ORDER BY conversion_id, platform
"""


async def forwards_for_conversions(
    db: Executor, tenant_id: str, conversion_ids: Sequence[UUID]
) -> list[ForwardRow]:
    """The forwards of these conversions (for `outbox show` and export), by conversion then platform."""
    if not conversion_ids:
        return []
    with translate_errors():
        rows = await db.fetch(_FOR_CONVERSIONS, tenant_id, list(conversion_ids))
    return [_row(r) for r in rows]


async def depth(db: Executor) -> dict[str, int]:
    """Pending rows per platform (platforms with none are absent), for the outbox depth metric."""
    with translate_errors():
        rows = await db.fetch(
            "SELECT platform, count(*) AS n FROM forwards WHERE status = 'pending' GROUP BY platform"
        )
    return {r["platform"]: r["n"] for r in rows}


async def oldest_pending_age(db: Executor, now: datetime) -> float:
    """Seconds since the oldest pending row was written (0.0 when none is pending)."""
    with translate_errors():
        oldest = await db.fetchval("SELECT min(created_at) FROM forwards WHERE status = 'pending'")
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())


async def count_by_status(db: Executor, tenant_id: str | None = None) -> dict[str, int]:
    """Rows per status (statuses with none are absent), of one tenant or all."""
    with translate_errors():
        rows = await db.fetch(
            """SELECT status, count(*) AS n FROM forwards WHERE ($1::text IS NULL OR tenant_id = $1)
               GROUP BY status""",
            tenant_id,
        )
    return {r["status"]: r["n"] for r in rows}


# -- the ledger ---------------------------------------------------------------------------------------------------

ATTEMPT_OUTCOMES: tuple[str, ...] = ("sent", "retry", "dead", "unconfirmed", "released")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt to deliver a forward, as the ledger keeps it."""

    forward_id: int
    tenant_id: str
    platform: str
    attempt: int
    at: datetime
    outcome: str  # ATTEMPT_OUTCOMES
    reason: str | None = None
    detail: str | None = None
    http_status: int | None = None
    consent_marketing: bool | None = None
    worker: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in ATTEMPT_OUTCOMES:
            raise ValueError(f"outcome must be one of {ATTEMPT_OUTCOMES}, not {self.outcome!r}")


_ATTEMPT_COLUMNS = ("forward_id, tenant_id, platform, attempt, at, outcome, reason, detail, http_status, "
                    "consent_marketing, worker")


async def record_attempts(db: Executor, attempts: Sequence[Attempt]) -> None:
    """Add these attempts to the ledger."""
    if not attempts:
        return
    with translate_errors():
        await db.executemany(
            f"INSERT INTO forward_attempts ({_ATTEMPT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            [(a.forward_id, a.tenant_id, a.platform, a.attempt, a.at, a.outcome, a.reason, a.detail, a.http_status,
              a.consent_marketing, a.worker) for a in attempts],
        )


async def attempts_for(db: Executor, forward_ids: Sequence[int]) -> list[Attempt]:
    """The ledger of these forwards, oldest attempt first."""
    with translate_errors():
        rows = await db.fetch(
            f"SELECT {_ATTEMPT_COLUMNS} FROM forward_attempts WHERE forward_id = ANY($1::bigint[]) "
            "ORDER BY forward_id, id",
            list(forward_ids),
        )
    return [Attempt(**dict(r)) for r in rows]
