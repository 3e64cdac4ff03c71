"""Shared fixtures: one PostgreSQL server for the whole run, a fresh database per test module.

- `pg_server_dsn` (session): DSN of the server's `postgres` database. `HALO_DATABASE_URL` set: that server;
  otherwise one embedded PostgreSQL in a temporary directory, with durability off for speed, stopped at the end.
- `database_factory` (session): `database_factory(migrate=True) -> TestDatabase`, a new database
  (`halo_test_<pid>_<n>`), with migrations applied unless `migrate=False`; all are dropped at the end of the run.
- `database` (module): a `TestDatabase(name, dsn)` shared by the tests of one module, migrations applied. Pass
  its `dsn` as `HALO_DATABASE_URL` to a proxy started as a subprocess.
- `db_pool` (function): an asyncpg pool (`halo_proxy.storage.db.create_pool`) on the module's database, created
  in the test's own event loop, so tests need no loop-scope markers.

Databases are created and dropped from a worker thread with its own event loop, so they never touch the loops
pytest-asyncio runs tests in.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from halo_proxy.storage import migrations
from halo_proxy.storage.db import create_pool
from halo_proxy.storage.embedded import EmbeddedPostgres

T = TypeVar("T")

# Durability off: a test server's data is thrown away, so there is nothing to protect from a crash.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(frozen=True)
class TestDatabase:
    __test__ = False  # not a test class, whatever its name

    name: str
    dsn: str


def run_in_thread(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion in a new thread with its own event loop."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro_fn()))
        except BaseException as exc:  # re-raised in the calling thread
            error.append(exc)

    thread = threading.Thread(target=target, name="halo-test-db")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def dsn_with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    url = os.environ.get("HALO_DATABASE_URL")
    if url:
        yield url
        return
    data_dir = tempfile.mkdtemp(prefix="halo-pg-")
    server = EmbeddedPostgres(data_dir, settings=FAST_SETTINGS)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_factory(pg_server_dsn: str) -> Iterator[Callable[..., TestDatabase]]:
    counter = itertools.count(1)
    created: list[str] = []

    def make(migrate: bool = True) -> TestDatabase:
        name = f"halo_test_{os.getpid()}_{next(counter)}"
        dsn = dsn_with_database(pg_server_dsn, name)

        async def create() -> None:
            admin = await asyncpg.connect(pg_server_dsn)
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()
            created.append(name)
            if migrate:
                conn = await asyncpg.connect(dsn)
                try:
                    await migrations.apply(conn)
                finally:
                    await conn.close()

        run_in_thread(create)
        return TestDatabase(name, dsn)

    yield make

    async def drop_all() -> None:
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            for name in created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    if created:
        run_in_thread(drop_all)


@pytest.fixture(scope="module")
def database(database_factory: Callable[..., TestDatabase]) -> TestDatabase:
    return database_factory()


@pytest.fixture
async def db_pool(database: TestDatabase) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database.dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def empty_tables(pool: asyncpg.Pool) -> None:
    """Every table of HaloTrack's schema emptied (the record of applied migrations kept)."""
    tables = [r["tablename"] for r in await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'")]
    # One statement per table: truncating conversions also truncates conversion_credits (a trigger), which one
    # statement naming both would refuse.
    async with pool.acquire() as conn, conn.transaction():
        for table in tables:
            await conn.execute(f"TRUNCATE {table} CASCADE")


@pytest.fixture
async def clean(db_pool: asyncpg.Pool) -> asyncpg.Pool:
    """The test's database with every table empty."""
    await empty_tables(db_pool)
    return db_pool


def days_around_today() -> str:
    """`from=...&to=...` for a report that holds whatever a test stores now: from yesterday to tomorrow (UTC), so
    neither a tenant's zone nor a midnight passed during the test moves a conversion out of it."""
    now = time.time()
    day = 86_400
    return (f"from={time.strftime('%Y-%m-%d', time.gmtime(now - day))}"
            f"&to={time.strftime('%Y-%m-%d', time.gmtime(now + day))}")

