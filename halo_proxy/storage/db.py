"""The asyncpg connection pool and the translation of database errors into storage errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from .errors import StorageError, StorageUnavailable

__all__ = ["Database", "StorageError", "StorageUnavailable", "create_pool", "ping", "translate_errors"]

logger = logging.getLogger(__name__)

# Errors that mean "the database cannot be reached right now": the caller may retry later (503 + Retry-After).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, socket missing
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, cannot connect now, cancelled
    asyncpg.exceptions.TooManyConnectionsError,
)


@dataclass
class Database:
    """The database as the app sees it: a pool, and whether the schema is known to be current."""

    pool: asyncpg.Pool
    migrated: bool = False


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)  # binary jsonb: version byte 1, then the JSON text


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up: jsonb values are Python objects (dicts, lists) encoded with orjson."""
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb, format="binary"
    )


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn asyncpg and socket errors raised inside the block into `StorageUnavailable` / `StorageError`."""
    try:
        yield
    except StorageError:
        raise
    except _UNAVAILABLE as err:
        raise StorageUnavailable(f"database unavailable: {type(err).__name__}: {err}") from err
    except asyncpg.InterfaceError as err:
        if isinstance(err, ValueError):  # a value the column type cannot encode: a bug, not an outage
            raise StorageError(f"invalid value for the database: {err}") from err
        raise StorageUnavailable(f"database unavailable: {type(err).__name__}: {err}") from err
    except asyncpg.PostgresError as err:
        raise StorageError(f"database error {err.sqlstate}: {err}") from err


class SessionlessConnection(asyncpg.Connection):
    """A connection handed back to the pool with nothing sent: HaloTrack keeps no session state on a connection
    (advisory locks are transaction-level, and there is no LISTEN, no cursor outside a transaction, no session
    SET; `tests/storage/test_db.py` scans the SQL for each), so asyncpg's default reset (`pg_advisory_unlock_all`,
    `CLOSE ALL`, `UNLISTEN *`, `RESET ALL`) would be one database round trip per acquire for nothing. A
    transaction left open is still rolled back by the pool on release."""

    __slots__ = ()

    def get_reset_query(self) -> str:
        return ""


class BoundedPool(asyncpg.Pool):
    """An asyncpg pool on which every acquire, its own `fetch`/`execute` included, waits at most
    `acquire_timeout_s` for a connection: with the pool exhausted a caller fails (TimeoutError, which
    `translate_errors` makes StorageUnavailable: 503 with Retry-After) instead of waiting for ever."""

    __slots__ = ("acquire_timeout_s",)

    def acquire(self, *, timeout: float | None = None):  # type: ignore[no-untyped-def,override]
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)


async def create_pool(
    dsn: str,
    min_size: int = 1,
    max_size: int = 10,
    *,
    command_timeout: float | None = 30.0,
    connect_timeout: float = 10.0,
    acquire_timeout: float = 10.0,
    statement_cache_size: int | None = None,
) -> asyncpg.Pool:
    """A connection pool whose connections decode jsonb with orjson, and whose acquires are bounded.

    `statement_cache_size` None keeps asyncpg's own; 0 prepares no named statement (PgBouncer in transaction
    mode). Raises `StorageUnavailable` when the first connections cannot be made.
    """
    extra = {} if statement_cache_size is None else {"statement_cache_size": statement_cache_size}
    # What asyncpg.create_pool does (it takes no pool class), with the subclass.
    pool = BoundedPool(dsn, min_size=min_size, max_size=max_size, max_queries=50000,
                       max_inactive_connection_lifetime=300.0, connect=None, setup=None, init=init_connection,
                       reset=None, loop=None, connection_class=SessionlessConnection, record_class=asyncpg.Record,
                       command_timeout=command_timeout, timeout=connect_timeout, **extra)
    pool.acquire_timeout_s = acquire_timeout
    with translate_errors():
        await pool
    return pool


async def ping(pool: asyncpg.Pool, timeout_s: float = 1.0) -> bool:
    """True when the database answers `SELECT 1` within `timeout_s` seconds (for readiness checks)."""
    try:
        async with asyncio.timeout(timeout_s):
            async with pool.acquire() as conn:
                return await conn.fetchval("SELECT 1") == 1
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        logger.debug("database ping failed: %s", type(err).__name__)
        return False
