"""Versioned schema migrations.

Each migration is a file `migrations/NNNN_name.sql` shipped as package data. `apply(pool)` runs the pending ones in
name order, all in one transaction holding a transaction-level advisory lock, so that several proxy processes
starting together apply each migration exactly once, and a failing migration leaves nothing half-applied.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from .db import translate_errors
from .errors import StorageError

logger = logging.getLogger(__name__)

# Arbitrary, fixed: the advisory lock key that serialises migration runs ("halo" in ASCII, then 1).
MIGRATION_LOCK_KEY = 0x68616C6F_00000001
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(StorageError):
    """A migration file is malformed or failed to apply."""


@dataclass(frozen=True, slots=True)
class Migration:
    name: str  # file name without `.sql`, e.g. "0001_sessions"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load() -> list[Migration]:
    """All migrations shipped with the package, in the order they apply."""
    folder = resources.files("halo_proxy.storage") / "migrations"
    migrations = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        if not _NAME.match(entry.name):
            raise MigrationError(f"migration file name {entry.name!r} is not NNNN_name.sql")
        migrations.append(Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    if not migrations:
        raise MigrationError(f"no migration files found in {folder} (package data missing from the install?)")
    migrations.sort(key=lambda m: m.name)
    numbers = [m.name[:4] for m in migrations]
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"two migrations share a number: {numbers}")
    return migrations


async def apply(
    pool: asyncpg.Pool | asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[str]:
    """Apply pending migrations; return the names applied by this call (empty when up to date)."""
    todo = load() if migrations is None else migrations
    with translate_errors():
        if isinstance(pool, asyncpg.Pool):
            async with pool.acquire() as conn:
                return await _apply(conn, todo)
        return await _apply(pool, todo)


async def applied(pool: asyncpg.Pool | asyncpg.Connection) -> list[str]:
    """Names of the migrations recorded as applied, in order."""
    with translate_errors():
        exists = await pool.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not exists:
            return []
        return [r["name"] for r in await pool.fetch("SELECT name FROM schema_migrations ORDER BY name")]


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
        done = {
            r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
        }
        newly: list[str] = []
        for migration in migrations:
            if migration.name in done:
                if done[migration.name] != migration.checksum:
                    logger.warning(
                        "migration %s changed after it was applied; not re-running it", migration.name
                    )
                continue
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as err:
                raise MigrationError(f"migration {migration.name} failed: {err}") from err
            await conn.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                migration.name,
                migration.checksum,
            )
            newly.append(migration.name)
            logger.info("applied migration %s", migration.name)
        return newly
