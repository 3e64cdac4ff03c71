"""Scaling out: two proxy replicas against one PostgreSQL through a real PgBouncer (Debian's) in transaction mode,
with deploy/pgbouncer/pgbouncer.ini's settings and HaloTrack's statement cache off. Both replicas migrate the
fresh database at once (transaction-level advisory lock), one takes the page views, the other the lead and the
order that match them; every write arrives, over fewer server connections than the replicas' pools hold."""

from __future__ import annotations

import asyncio
import configparser
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import asyncpg
import pytest

from halo_proxy.storage.embedded import SERVER_USER
from tests.deploy.journey import SHOP, Journey, write_config
from tests.deploy.tools import DEPLOY, tool, wait_for
from tests.procs import ProxyProcess, free_port
from tests.upstream import create_upstream

POOL_SIZE = 2  # server connections per (database, user) in the test: fewer than the replicas' clients
RESERVE = 1
CLIENT_POOL = 4  # HALO_DATABASE_POOL_SIZE of each replica


@dataclass
class PgBouncer:
    port: int
    database: str  # the alias in [databases], which is also the real database's name
    log: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    user: str = "postgres"


def server_of(dsn: str) -> tuple[str, str, str, str]:
    """(host or socket folder, port, user, password) of a PostgreSQL DSN."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    port = query.get("port", [str(parts.port or 5432)])[0]
    return host, port, unquote(parts.username or "postgres"), unquote(parts.password or "")


def deploy_settings() -> dict[str, str]:
    parser = configparser.ConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=None,
                                       interpolation=None)
    parser.read(DEPLOY / "pgbouncer" / "pgbouncer.ini")
    return dict(parser["pgbouncer"])


@pytest.fixture(scope="module")
def pgbouncer(database_factory, pg_server_dsn) -> Iterator[PgBouncer]:
    binary = tool("pgbouncer", "pgbouncer")
    target = database_factory(migrate=False)  # the replicas migrate it, through PgBouncer
    host, port, user, password = server_of(pg_server_dsn)
    # Not under pytest's own folder, which PgBouncer's user (below) may not enter.
    work = Path(tempfile.mkdtemp(prefix="halo-pgbouncer-"))
    listen = free_port()
    settings = deploy_settings()
    assert settings["pool_mode"] == "transaction"
    # Where the test differs from deploy/: loopback, its own files, trust (the test server has no passwords),
    # and a small pool, so that the replicas' clients must share server connections.
    settings.update({
        "listen_addr": "127.0.0.1", "listen_port": str(listen), "unix_socket_dir": "", "auth_type": "trust",
        "auth_file": str(work / "userlist.txt"), "logfile": str(work / "pgbouncer.log"),
        "pidfile": str(work / "pgbouncer.pid"), "default_pool_size": str(POOL_SIZE),
        "reserve_pool_size": str(RESERVE), "admin_users": user, "stats_users": user,
    })
    secret = f" password={password}" if password else ""
    lines = ["[databases]", f"{target.name} = host={host} port={port} dbname={target.name} user={user}{secret}",
             "", "[pgbouncer]"] + [f"{key} = {value}" for key, value in settings.items()]
    (work / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
    (work / "userlist.txt").write_text(f'"{user}" ""\n')
    cmd = [binary, str(work / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: as the embedded server's user, who can reach its socket
        try:
            account = pwd.getpwnam(SERVER_USER)
        except KeyError:
            account = pwd.getpwnam("nobody")
        for path in (work, *work.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
        cmd[1:1] = ["-u", account.pw_name]
    output = work / "pgbouncer.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=1).close()
            break
        except OSError:
            log = work / "pgbouncer.log"
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                logs = "\n".join(p.read_text(errors="replace") for p in (output, log) if p.exists())
                pytest.fail(f"pgbouncer did not start:\n{logs}")
            time.sleep(0.05)  # a freshly started daemon's port: no event to wait on
    try:
        yield PgBouncer(listen, target.name, work / "pgbouncer.log", user)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


async def test_two_replicas_write_visits_and_conversions_through_pgbouncer(pgbouncer, tmp_path, aiohttp_server,
                                                                           pg_server_dsn):
    upstream = await aiohttp_server(create_upstream())
    config = tmp_path / "tenants.yaml"
    write_config(config, upstream.port, free_port())
    env = {"HALO_DATABASE_URL": pgbouncer.dsn, "HALO_DATABASE_STATEMENT_CACHE": "0",
           "HALO_DATABASE_POOL_SIZE": str(CLIENT_POOL)}
    one, two = ProxyProcess(config, env=env), ProxyProcess(config, env=env)
    await asyncio.gather(one.start(SHOP), two.start(SHOP))  # both migrate the fresh database at once
    direct = await asyncpg.connect(server_dsn(pg_server_dsn, pgbouncer.database))
    try:
        async def ready(proc: ProxyProcess) -> bool:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{proc.base}/_halo/readyz", headers={"Host": SHOP}) as resp:
                    return resp.status == 200

        for proc in (one, two):
            await wait_for(lambda proc=proc: ready(proc), "readyz through PgBouncer")
        journey = Journey(one.base, lead_base=two.base)
        cookies = await journey.visitors()

        async def stored() -> int | None:
            count = await direct.fetchval("SELECT count(*) FROM sessions WHERE tenant_id = 'shop'")
            return count if count >= len(cookies) else None

        await wait_for(stored, "replica one's sessions in PostgreSQL")
        lead, order = await journey.convert(cookies[0], 1)
        assert lead["match_type"] == "session" and order["match_type"] == "session"
        assert lead["attribution"]["first_touch"]["source"] == "google"

        rows = await direct.fetch("SELECT kind, session_id IS NOT NULL AS matched FROM conversions ORDER BY kind")
        assert [(r["kind"], r["matched"]) for r in rows] == [("lead", True), ("order", True)]
        assert await direct.fetchval("SELECT count(*) FROM touches WHERE tenant_id = 'shop'") >= 4
        # The replicas' pools (up to 2 x 4 clients) shared at most POOL_SIZE + RESERVE server connections.
        servers = await direct.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            pgbouncer.database)
        assert 1 <= servers <= POOL_SIZE + RESERVE, servers

        # An operator command through PgBouncer too (its own pool, the same setting).
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "halo_proxy", "migrate"], capture_output=True, text=True,
            timeout=60, env={**os.environ, **env})
        assert result.returncode == 0 and "up to date" in result.stdout, result.stderr

        for proc in (one, two):
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{proc.metrics_port}/metrics") as resp:
                    metrics = await resp.text()
            errors = [line for line in metrics.splitlines()
                      if line.startswith(("halo_storage_errors_total{", "halo_storage_lost_writes_total{"))]
            assert errors and all(line.endswith(" 0.0") for line in errors), errors
            assert "prepared statement" not in proc.log(), proc.log()[-2000:]
    finally:
        await direct.close()
        assert await one.stop() == 0
        assert await two.stop() == 0


def server_dsn(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return parts._replace(path=f"/{database}").geturl()


def test_the_deploy_file_is_transaction_mode_without_a_reset_query():
    settings = deploy_settings()
    assert settings["pool_mode"] == "transaction"
    assert settings["server_reset_query"] == ""
    assert int(settings["max_client_conn"]) > int(settings["default_pool_size"])
