"""Visitor sessions, their touch history and anonymous aggregates.

Plain functions taking a pool (or a connection, to join its transaction) and returning plain dataclasses.

Writes are order-independent by design, so that batches from several proxy processes may land in any order:
the first touch is the earliest touch seen, the last touch the latest non-first touch, each click id keeps its
latest value, and device, geo, consent and identifiers follow the latest write.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from halo_proxy.tracking.models import (
    CLICK_ID_PARAMS,
    TOUCH_TEXT_FIELDS,
    AnonEvent,
    Consent,
    Device,
    Geo,
    SessionWrite,
    Touch,
)

from .db import translate_errors
from .errors import StorageError

__all__ = [
    "AnonEvent",
    "ClickId",
    "SessionRecord",
    "SessionWrite",
    "add_anon_events",
    "count_sessions",
    "count_touches",
    "delete_sessions",
    "get_session",
    "list_anon_events",
    "list_touches",
    "purge_expired",
    "update_consent",
    "delete_sessions_counted",
    "write_visits",
]

Executor = asyncpg.Pool | asyncpg.Connection

_DEADLOCK_RETRIES = 3
_CLICK_ID_ORDER = {name: i for i, name in enumerate(CLICK_ID_PARAMS)}


# -- models -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClickId:
    value: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored session. `first_touch` / `last_touch` carry no click ids: see `click_ids` (latest of each
    name over all touches) and `list_touches` (per touch)."""

    tenant_id: str
    id: UUID
    created_at: datetime
    updated_at: datetime
    first_touch: Touch
    last_touch: Touch
    click_ids: dict[str, ClickId]
    device: Device
    geo: Geo
    consent: Consent
    ip_hash: bytes | None
    ip_enc: bytes | None
    user_agent_enc: bytes | None
    fbp: str | None
    fbc: str | None

    @property
    def click_id_values(self) -> dict[str, str]:
        return {name: click.value for name, click in self.click_ids.items()}


# -- visits -----------------------------------------------------------------------------------------------------

_TOUCH_COLUMNS = (*TOUCH_TEXT_FIELDS, "at")


def _first_touch_updates() -> str:
    return ",\n        ".join(
        f"ft_{c} = CASE WHEN EXCLUDED.ft_at < s.ft_at THEN EXCLUDED.ft_{c} ELSE s.ft_{c} END"
        for c in _TOUCH_COLUMNS
    )


def _last_touch_updates(is_new: bool) -> str:
    if is_new:  # a page view that created its session never moves the last touch of a row that exists already
        return ",\n        ".join(f"lt_{c} = s.lt_{c}" for c in _TOUCH_COLUMNS)
    return ",\n        ".join(
        f"lt_{c} = CASE WHEN EXCLUDED.lt_at >= s.lt_at THEN EXCLUDED.lt_{c} ELSE s.lt_{c} END"
        for c in _TOUCH_COLUMNS
    )


# The fields of one page view, in the order `_visit_args` gives them, and their PostgreSQL types.
_VISIT_PARAMS: tuple[tuple[str, str], ...] = (
    ("tenant_id", "text"), ("session_id", "uuid"), ("is_new", "boolean"), ("written_at", "timestamptz"),
    *((f"t_{c}", "text") for c in TOUCH_TEXT_FIELDS), ("t_at", "timestamptz"),
    ("session_click_ids", "jsonb"), ("touch_click_ids", "jsonb"),
    ("device_type", "text"), ("browser", "text"), ("os", "text"),
    ("country", "text"), ("region", "text"), ("city", "text"),
    ("consent_analytics", "boolean"), ("consent_marketing", "boolean"), ("gpc", "boolean"),
    ("consent_source", "text"),
    ("ip_hash", "bytea"), ("ip_enc", "bytea"), ("user_agent_enc", "bytea"), ("fbp", "text"), ("fbc", "text"),
)
_TOUCH_VALUES = ", ".join(f"v.t_{c}" for c in _TOUCH_COLUMNS)


def _write_visits_sql(is_new: bool) -> str:
    """One statement for a whole set of page views, all new sessions or all returning ones, each session at
    most once. Row for row it does what writing each page view alone does.

    The page views arrive as one JSON array of objects (`_rows_json`): one orjson call in the proxy instead of
    encoding 32 parameters per page view, for a JSON parse in PostgreSQL that costs less than that encoding.
    """
    columns = ", ".join(f"{name} {kind}" for name, kind in _VISIT_PARAMS)
    return f"""
WITH v AS (
    SELECT * FROM json_to_recordset($1::json) AS v({columns})
), upsert AS (
    INSERT INTO sessions AS s (
        tenant_id, id, created_at, updated_at,
        ft_source, ft_medium, ft_campaign, ft_term, ft_content, ft_utm_id, ft_channel,
        ft_referrer_domain, ft_referrer_url, ft_landing_path, ft_at,
        lt_source, lt_medium, lt_campaign, lt_term, lt_content, lt_utm_id, lt_channel,
        lt_referrer_domain, lt_referrer_url, lt_landing_path, lt_at,
        click_ids, device_type, browser, os, country, region, city,
        consent_analytics, consent_marketing, gpc, consent_source,
        ip_hash, ip_enc, user_agent_enc, fbp, fbc
    )
    SELECT
        v.tenant_id, v.session_id, v.written_at, v.written_at,
        {_TOUCH_VALUES},
        {_TOUCH_VALUES},
        v.session_click_ids, v.device_type, v.browser, v.os, v.country, v.region, v.city,
        v.consent_analytics, v.consent_marketing, v.gpc, v.consent_source,
        v.ip_hash, v.ip_enc, v.user_agent_enc, v.fbp, v.fbc
    FROM v
    ON CONFLICT (tenant_id, id) DO UPDATE SET
        created_at = least(s.created_at, EXCLUDED.created_at),
        updated_at = greatest(s.updated_at, EXCLUDED.updated_at),
        {_first_touch_updates()},
        {_last_touch_updates(is_new)},
        click_ids = halo_merge_click_ids(s.click_ids, EXCLUDED.click_ids),
        device_type = CASE WHEN EXCLUDED.updated_at >= s.updated_at THEN EXCLUDED.device_type ELSE s.device_type END,
        browser = CASE WHEN EXCLUDED.updated_at >= s.updated_at THEN EXCLUDED.browser ELSE s.browser END,
        os = CASE WHEN EXCLUDED.updated_at >= s.updated_at THEN EXCLUDED.os ELSE s.os END,
        country = CASE WHEN EXCLUDED.updated_at >= s.updated_at AND num_nonnulls(EXCLUDED.country, EXCLUDED.region, EXCLUDED.city) > 0
                       THEN EXCLUDED.country ELSE s.country END,
        region = CASE WHEN EXCLUDED.updated_at >= s.updated_at AND num_nonnulls(EXCLUDED.country, EXCLUDED.region, EXCLUDED.city) > 0
                      THEN EXCLUDED.region ELSE s.region END,
        city = CASE WHEN EXCLUDED.updated_at >= s.updated_at AND num_nonnulls(EXCLUDED.country, EXCLUDED.region, EXCLUDED.city) > 0
                    THEN EXCLUDED.city ELSE s.city END,
        consent_analytics = CASE WHEN EXCLUDED.updated_at >= s.updated_at THEN EXCLUDED.consent_analytics ELSE s.consent_analytics END,
        consent_marketing = CASE WHEN EXCLUDED.updated_at >= s.updated_at THEN EXCLUDED.consent_marketing ELSE s.consent_marketing END,
        gpc = CASE WHEN EXCLUDED.updated_at >= s.updated_at THEN EXCLUDED.gpc ELSE s.gpc END,
        consent_source = CASE WHEN EXCLUDED.updated_at >= s.updated_at THEN EXCLUDED.consent_source ELSE s.consent_source END,
        ip_hash = CASE WHEN EXCLUDED.updated_at >= s.updated_at THEN coalesce(EXCLUDED.ip_hash, s.ip_hash) ELSE s.ip_hash END,
        ip_enc = CASE WHEN EXCLUDED.updated_at < s.updated_at THEN s.ip_enc
                      WHEN EXCLUDED.consent_marketing THEN coalesce(EXCLUDED.ip_enc, s.ip_enc) END,
        user_agent_enc = CASE WHEN EXCLUDED.updated_at < s.updated_at THEN s.user_agent_enc
                              WHEN EXCLUDED.consent_marketing THEN coalesce(EXCLUDED.user_agent_enc, s.user_agent_enc) END,
        fbp = CASE WHEN EXCLUDED.updated_at < s.updated_at THEN s.fbp
                   WHEN EXCLUDED.consent_marketing THEN coalesce(EXCLUDED.fbp, s.fbp) END,
        fbc = CASE WHEN EXCLUDED.updated_at < s.updated_at THEN s.fbc
                   WHEN EXCLUDED.consent_marketing THEN coalesce(EXCLUDED.fbc, s.fbc) END
)
INSERT INTO touches (
    tenant_id, session_id, source, medium, campaign, term, content, utm_id, channel,
    referrer_domain, referrer_url, landing_path, at, click_ids
)
SELECT v.tenant_id, v.session_id, {_TOUCH_VALUES}, v.touch_click_ids FROM v
ON CONFLICT (tenant_id, session_id, at) DO NOTHING
"""


_WRITE_NEW_VISITS = _write_visits_sql(is_new=True)
_WRITE_RETURNING_VISITS = _write_visits_sql(is_new=False)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _visit_args(write: SessionWrite) -> tuple[Any, ...]:
    touch = write.touch
    touch_at = _utc(touch.at)
    at = _utc(write.at) if write.at is not None else touch_at
    at_iso = touch_at.isoformat()
    marketing = write.consent.marketing
    return (
        write.tenant_id,
        write.session_id,
        write.is_new,
        at,
        touch.source,
        touch.medium,
        touch.campaign,
        touch.term,
        touch.content,
        touch.utm_id,
        touch.channel,
        touch.referrer_domain,
        touch.referrer_url,
        touch.landing_path,
        touch_at,
        {name: {"value": value, "at": at_iso} for name, value in touch.click_ids},
        dict(touch.click_ids),
        write.device.device_type,
        write.device.browser,
        write.device.os,
        write.geo.country,
        write.geo.region,
        write.geo.city,
        write.consent.analytics,
        marketing,
        write.consent.gpc,
        write.consent.source,
        write.ip_hash,
        write.ip_enc if marketing else None,
        write.user_agent_enc if marketing else None,
        write.fbp if marketing else None,
        write.fbc if marketing else None,
    )


async def write_visits(db: Executor, batch: Sequence[SessionWrite]) -> None:
    """Record a batch of page views in one transaction, a statement per round rather than per page view.

    A new session gets its row (first touch = last touch = the touch) and a touch row; a session that already
    exists keeps its first touch. A returning visitor's touch updates the last touch, merges click ids, updates
    device, geo, consent and identifiers, and adds a touch row; a missing session row is created from it.
    A statement may touch each session once, so the batch is cut into rounds: the first page view of every
    session, then the second, and so on (almost always one round). Within a round, new and returning page
    views are two statements. Sessions are written in a fixed order so that concurrent writers take row locks
    in the same order.
    """
    if not batch:
        return
    ordered = sorted(batch, key=lambda w: (w.tenant_id, w.session_id.int))  # stable: keeps order per session
    statements = [(sql, columns) for rnd in _rounds(ordered)
                  for sql, columns in _round_statements(rnd)]
    # Inside a caller's transaction a deadlock aborts that transaction: nothing to retry here.
    in_transaction = isinstance(db, asyncpg.Connection) and db.is_in_transaction()
    attempts = 1 if in_transaction else _DEADLOCK_RETRIES
    with translate_errors():
        for attempt in range(1, attempts + 1):
            try:
                if len(statements) == 1 or in_transaction:
                    for sql, columns in statements:
                        await db.execute(sql, *columns)
                elif isinstance(db, asyncpg.Connection):
                    async with db.transaction():
                        for sql, columns in statements:
                            await db.execute(sql, *columns)
                else:
                    async with db.acquire() as conn, conn.transaction():
                        for sql, columns in statements:
                            await conn.execute(sql, *columns)
                return
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == attempts:
                    raise
                await asyncio.sleep(0.01 * attempt)


def _rounds(ordered: Sequence[SessionWrite]) -> list[list[SessionWrite]]:
    """The k-th page view of every session in round k, in the given order."""
    rounds: list[list[SessionWrite]] = []
    seen: dict[tuple[str, UUID], int] = {}
    for write in ordered:
        key = (write.tenant_id, write.session_id)
        index = seen.get(key, 0)
        seen[key] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(write)
    return rounds


def _round_statements(writes: list[SessionWrite]) -> list[tuple[str, list[str]]]:
    out = []
    for is_new, sql in ((True, _WRITE_NEW_VISITS), (False, _WRITE_RETURNING_VISITS)):
        rows = [w for w in writes if w.is_new is is_new]
        if rows:
            out.append((sql, [_rows_json(rows)]))
    return out


_PARAM_NAMES = tuple(name for name, _ in _VISIT_PARAMS)


def _rows_json(writes: list[SessionWrite]) -> str:
    """The page views as the JSON array `json_to_recordset` reads: bytea as PostgreSQL's hex text (\\x...),
    times as RFC 3339, ids as UUID text."""
    try:
        return orjson.dumps([dict(zip(_PARAM_NAMES, _visit_args(w), strict=True)) for w in writes],
                            default=_json_bytes).decode()
    except TypeError as err:  # orjson.JSONEncodeError: a value with no JSON form (a lone surrogate, say)
        raise StorageError(f"invalid value for the database: {err}") from err


def _json_bytes(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    raise TypeError(f"{type(value).__name__} is not stored as JSON")


_UPDATE_CONSENT = """
WITH updated AS (
    UPDATE sessions SET
        consent_analytics = $3, consent_marketing = $4, gpc = $5, consent_source = $6,
        updated_at = $7,
        ip_enc = CASE WHEN $4 THEN ip_enc END,
        user_agent_enc = CASE WHEN $4 THEN user_agent_enc END,
        fbp = CASE WHEN $4 THEN fbp END,
        fbc = CASE WHEN $4 THEN fbc END,
        ip_hash = CASE WHEN $3 OR $4 THEN ip_hash END
    WHERE tenant_id = $1 AND id = $2 AND updated_at <= $7
    RETURNING id
), unlinked AS (
    DELETE FROM identities
    WHERE tenant_id = $1 AND session_id = $2 AND NOT ($3 OR $4) AND EXISTS (SELECT 1 FROM updated)
), history AS (
    INSERT INTO consent_changes (tenant_id, session_id, at, analytics, marketing, gpc, change)
    SELECT $1, $2, $7, $3, $4, $5, CASE WHEN $3 OR $4 THEN 'updated' ELSE 'withdrawn' END
    FROM updated WHERE $8
)
SELECT count(*) FROM updated
"""


async def update_consent(db: Executor, tenant_id: str, session_id: UUID, consent: Consent, at: datetime,
                         history: bool = True) -> bool:
    """A returning visitor's consent changed without a new touch. Losing marketing consent clears the
    identifiers kept for ad platforms; losing all consent (the banner's withdrawal seen on a page view) also
    unlinks the session's email and phone and drops its IP hash. Kept in the consent history (`history`). A
    write older than the row's last update is ignored. True when a row was updated (a missing session is not
    created: it has no touch to start from)."""
    with translate_errors():
        updated = await db.fetchval(
            _UPDATE_CONSENT, tenant_id, session_id, consent.analytics, consent.marketing, consent.gpc,
            consent.source, _utc(at), history,
        )
    return bool(updated)


# -- anonymous aggregates -----------------------------------------------------------------------------------------

_ADD_ANON_EVENTS = """
INSERT INTO anon_events AS a
    (tenant_id, day, utm_source, utm_medium, utm_campaign, referrer_domain, path, channel, count)
SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::bigint[])
ON CONFLICT ON CONSTRAINT anon_events_key DO UPDATE SET count = a.count + EXCLUDED.count
"""


async def add_anon_events(db: Executor, rows: Iterable[AnonEvent]) -> None:
    """Add counts to the anonymous aggregates (count += n), in one statement. Rows with the same key are
    summed first; NULL dimensions are stored as ''."""
    totals: Counter[tuple[str, date, str, str, str, str, str, str]] = Counter()
    for row in rows:
        if row.count < 0:
            raise ValueError("anonymous event counts cannot be negative")
        totals[row.key] += row.count
    if not totals:
        return
    keys = sorted(totals)  # a fixed order, so concurrent upserts lock rows in the same order
    columns: list[list[Any]] = [[key[i] for key in keys] for i in range(8)]
    columns.append([totals[key] for key in keys])
    with translate_errors():
        await db.execute(_ADD_ANON_EVENTS, *columns)


async def list_anon_events(db: Executor, tenant_id: str, since: date, until: date) -> list[AnonEvent]:
    """Aggregates of one tenant for days `since` ≤ day ≤ `until`."""
    with translate_errors():
        rows = await db.fetch(
            """SELECT tenant_id, day, utm_source, utm_medium, utm_campaign, referrer_domain, path, channel, count
               FROM anon_events WHERE tenant_id = $1 AND day BETWEEN $2 AND $3
               ORDER BY day, utm_source, utm_medium, utm_campaign, referrer_domain, path, channel""",
            tenant_id,
            since,
            until,
        )
    return [AnonEvent(**dict(r)) for r in rows]


# -- reads --------------------------------------------------------------------------------------------------------


def _touch_from(row: asyncpg.Record, prefix: str) -> Touch:
    return Touch(
        at=row[f"{prefix}at"],
        source=row[f"{prefix}source"],
        medium=row[f"{prefix}medium"],
        campaign=row[f"{prefix}campaign"],
        term=row[f"{prefix}term"],
        content=row[f"{prefix}content"],
        utm_id=row[f"{prefix}utm_id"],
        channel=row[f"{prefix}channel"],
        referrer_domain=row[f"{prefix}referrer_domain"],
        referrer_url=row[f"{prefix}referrer_url"],
        landing_path=row[f"{prefix}landing_path"],
    )


def _ordered_names(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: (_CLICK_ID_ORDER.get(n, len(_CLICK_ID_ORDER)), n))


async def get_session(db: Executor, tenant_id: str, session_id: UUID) -> SessionRecord | None:
    with translate_errors():
        row = await db.fetchrow(
            "SELECT * FROM sessions WHERE tenant_id = $1 AND id = $2", tenant_id, session_id
        )
    if row is None:
        return None
    raw_ids: dict[str, dict[str, str]] = row["click_ids"] or {}
    return SessionRecord(
        tenant_id=row["tenant_id"],
        id=row["id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        first_touch=_touch_from(row, "ft_"),
        last_touch=_touch_from(row, "lt_"),
        click_ids={
            name: ClickId(raw_ids[name]["value"], datetime.fromisoformat(raw_ids[name]["at"]))
            for name in _ordered_names(raw_ids)
        },
        device=Device(device_type=row["device_type"], browser=row["browser"], os=row["os"]),
        geo=Geo(country=row["country"], region=row["region"], city=row["city"]),
        consent=Consent(
            analytics=row["consent_analytics"],
            marketing=row["consent_marketing"],
            gpc=row["gpc"],
            source=row["consent_source"] or "unknown",
        ),
        ip_hash=row["ip_hash"],
        ip_enc=row["ip_enc"],
        user_agent_enc=row["user_agent_enc"],
        fbp=row["fbp"],
        fbc=row["fbc"],
    )


async def list_touches(
    db: Executor,
    tenant_id: str,
    session_id: UUID,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Touch]:
    """The session's touches, oldest first, optionally within `since` ≤ at ≤ `until`."""
    with translate_errors():
        rows = await db.fetch(
            """SELECT at, source, medium, campaign, term, content, utm_id, channel,
                      referrer_domain, referrer_url, landing_path, click_ids
               FROM touches
               WHERE tenant_id = $1 AND session_id = $2
                 AND ($3::timestamptz IS NULL OR at >= $3) AND ($4::timestamptz IS NULL OR at <= $4)
               ORDER BY at, id""",
            tenant_id,
            session_id,
            since,
            until,
        )
    touches = []
    for r in rows:
        ids: dict[str, str] = r["click_ids"] or {}
        touches.append(
            Touch(
                at=r["at"],
                source=r["source"],
                medium=r["medium"],
                campaign=r["campaign"],
                term=r["term"],
                content=r["content"],
                utm_id=r["utm_id"],
                channel=r["channel"],
                referrer_domain=r["referrer_domain"],
                referrer_url=r["referrer_url"],
                landing_path=r["landing_path"],
                click_ids=tuple((name, ids[name]) for name in _ordered_names(ids)),
            )
        )
    return touches


async def count_sessions(db: Executor, tenant_id: str) -> int:
    with translate_errors():
        return await db.fetchval("SELECT count(*) FROM sessions WHERE tenant_id = $1", tenant_id)


async def count_touches(db: Executor, tenant_id: str, session_id: UUID | None = None) -> int:
    with translate_errors():
        if session_id is None:
            return await db.fetchval("SELECT count(*) FROM touches WHERE tenant_id = $1", tenant_id)
        return await db.fetchval(
            "SELECT count(*) FROM touches WHERE tenant_id = $1 AND session_id = $2", tenant_id, session_id
        )


# -- deletion -----------------------------------------------------------------------------------------------------


# A session's touches go with it, in the same statement (touches have no foreign key: see migration 0003).
_DELETE_SESSIONS = """
WITH gone AS (
    DELETE FROM sessions WHERE tenant_id = $1 AND id = ANY($2::uuid[]) RETURNING id
), touches_gone AS (
    DELETE FROM touches WHERE tenant_id = $1 AND session_id = ANY($2::uuid[]) RETURNING 1
), events_gone AS (
    DELETE FROM events WHERE tenant_id = $1 AND session_id = ANY($2::uuid[]) RETURNING 1
), consent_gone AS (
    DELETE FROM consent_changes WHERE tenant_id = $1 AND session_id = ANY($2::uuid[])
)
SELECT (SELECT count(*) FROM gone) AS sessions, (SELECT count(*) FROM touches_gone) AS touches,
       (SELECT count(*) FROM events_gone) AS events
"""

# The sessions' rows elsewhere are found by session id (`= ANY` of the deleted ids: each table's session index).
_PURGE_SESSIONS = """
WITH gone AS (
    DELETE FROM sessions WHERE tenant_id = $1 AND updated_at < $2 RETURNING id
), touches_gone AS (
    DELETE FROM touches WHERE tenant_id = $1 AND session_id = ANY(ARRAY(SELECT id FROM gone))
), events_gone AS (
    DELETE FROM events WHERE tenant_id = $1 AND session_id = ANY(ARRAY(SELECT id FROM gone))
), consent_gone AS (
    DELETE FROM consent_changes WHERE tenant_id = $1 AND session_id = ANY(ARRAY(SELECT id FROM gone))
)
SELECT count(*) FROM gone
"""


async def delete_sessions(db: Executor, tenant_id: str, session_ids: Sequence[UUID]) -> int:
    """Delete sessions with their touches, events and consent history (one statement); return how many sessions
    existed."""
    return (await delete_sessions_counted(db, tenant_id, session_ids))[0]


async def delete_sessions_counted(db: Executor, tenant_id: str,
                                  session_ids: Sequence[UUID]) -> tuple[int, int, int]:
    """`delete_sessions`, answering how many sessions, touches and events went."""
    if not session_ids:
        return 0, 0, 0
    with translate_errors():
        row = await db.fetchrow(_DELETE_SESSIONS, tenant_id, list(session_ids))
    return int(row["sessions"]), int(row["touches"]), int(row["events"])


async def purge_expired(
    db: Executor, tenant_id: str, *, sessions_before: datetime, anon_events_before: date
) -> tuple[int, int]:
    """Retention: delete sessions inactive since before `sessions_before` (with their touches) and anonymous
    aggregates of days before `anon_events_before`. Returns (sessions deleted, aggregate rows deleted)."""
    with translate_errors():
        sessions = await db.fetchval(
            _PURGE_SESSIONS, tenant_id, sessions_before,
        )
        anon = await db.execute(
            "DELETE FROM anon_events WHERE tenant_id = $1 AND day < $2", tenant_id, anon_events_before
        )
    return int(sessions), int(anon.split()[-1])
