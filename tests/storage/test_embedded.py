"""The embedded PostgreSQL server: start, stop, restart, reuse, stale pid files and start errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from halo_proxy.storage.embedded import EmbeddedPostgres
from halo_proxy.storage.errors import EmbeddedPostgresError

FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cluster for the module (initdb once); every test leaves its server stopped."""
    path = tmp_path_factory.mktemp("embedded")
    server = EmbeddedPostgres(path, settings=FAST)
    server.start()
    server.stop()
    return path


def query(dsn: str, sql: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def execute(dsn: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still running")


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])


def test_first_start_initialises_and_listens_only_on_a_socket_in_the_data_dir(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "halo", settings=FAST)
    dsn = server.start()
    try:
        assert server.owns_server
        assert (tmp_path / "halo" / "pg" / "PG_VERSION").exists()
        assert f"host={tmp_path / 'halo' / 'pg'}" in dsn
        assert query(dsn, "SHOW listen_addresses") == ""
        assert query(dsn, "SHOW fsync") == "off"
        assert query(dsn, "SHOW TimeZone") == "UTC"
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            assert query(dsn, "SELECT current_setting('data_directory')") == str(tmp_path / "halo" / "pg")
            assert (tmp_path / "halo" / "pg").stat().st_uid != 0  # the server does not run as root
    finally:
        server.stop()
    assert not (tmp_path / "halo" / "pg" / "postmaster.pid").exists()


def test_restart_keeps_data(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, settings=FAST)
    dsn = server.start()
    execute(dsn, "CREATE TABLE IF NOT EXISTS kept (x int); INSERT INTO kept VALUES (7)")
    server.stop()
    server.stop()  # idempotent
    assert server.start() == dsn
    try:
        assert query(dsn, "SELECT max(x) FROM kept") == 7
    finally:
        server.stop()


def test_second_instance_reuses_the_running_server_and_only_the_starter_stops_it(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir, settings=FAST)
    second = EmbeddedPostgres(data_dir, settings=FAST)
    dsn = first.start()
    try:
        assert second.start() == dsn
        assert first.owns_server and not second.owns_server
        second.stop()
        assert query(dsn, "SELECT 1") == 1  # still running
    finally:
        first.stop()
    assert not (data_dir / "pg" / "postmaster.pid").exists()


def test_another_process_reuses_the_running_server(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, settings=FAST)
    dsn = server.start()
    try:
        code = (
            "import sys\n"
            "from halo_proxy.storage.embedded import EmbeddedPostgres\n"
            "s = EmbeddedPostgres(sys.argv[1])\n"
            "print(s.start()); print(s.owns_server); s.stop()\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(data_dir)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        assert out == [dsn, "False"]
        assert query(dsn, "SELECT 1") == 1
    finally:
        server.stop()


def test_server_left_by_an_exited_process_is_adopted(data_dir: Path) -> None:
    code = (
        "import sys, os\n"
        "from halo_proxy.storage.embedded import EmbeddedPostgres\n"
        "s = EmbeddedPostgres(sys.argv[1])\n"
        "s.start(); print(s.owns_server); sys.stdout.flush(); os._exit(0)\n"  # exits without stopping
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["True"]
    server = EmbeddedPostgres(data_dir, settings=FAST)
    server.start()
    assert server.owns_server
    server.stop()
    assert not (data_dir / "pg" / "postmaster.pid").exists()


def test_start_after_the_server_was_killed(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, settings=FAST)
    server.start()
    pid = postmaster_pid(data_dir)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert (data_dir / "pg" / "postmaster.pid").exists()  # left behind

    again = EmbeddedPostgres(data_dir, settings=FAST)
    dsn = again.start()
    try:
        assert again.owns_server
        assert postmaster_pid(data_dir) != pid
        assert query(dsn, "SELECT 1") == 1
    finally:
        again.stop()


def test_stale_pid_file_naming_a_recycled_pid(data_dir: Path) -> None:
    """After a reboot the pid in postmaster.pid may belong to an unrelated live process (here: this one)."""
    pid_file = data_dir / "pg" / "postmaster.pid"
    pid_file.write_text(
        f"{os.getpid()}\n{data_dir / 'pg'}\n1700000000\n5432\n{data_dir / 'pg'}\n\n  0 0\nready\n"
    )
    server = EmbeddedPostgres(data_dir, settings=FAST)
    dsn = server.start()
    try:
        assert server.owns_server
        assert query(dsn, "SELECT 1") == 1
    finally:
        server.stop()


def test_start_failure_reports_the_server_log(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, settings={**FAST, "shared_buffers": "lots"})
    with pytest.raises(EmbeddedPostgresError) as info:
        server.start()
    message = str(info.value)
    assert "did not start" in message
    assert "shared_buffers" in message  # from the server log's tail
    assert not server.running


def test_invalid_setting_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        EmbeddedPostgres(tmp_path, settings={"fsync = off\nlisten_addresses": "*"})


async def test_async_context_manager(data_dir: Path) -> None:
    async with EmbeddedPostgres(data_dir, settings=FAST) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT 41 + 1") == 42
        finally:
            await conn.close()
    assert not (data_dir / "pg" / "postmaster.pid").exists()


def test_from_env_uses_halo_data_dir(tmp_path: Path) -> None:
    server = EmbeddedPostgres.from_env({"HALO_DATA_DIR": str(tmp_path / "d")})
    assert server.pgdata == tmp_path / "d" / "pg"
    assert EmbeddedPostgres.from_env({}).pgdata == Path(".halo").resolve() / "pg"


def test_workers_starting_together_share_one_server(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from halo_proxy.storage.embedded import EmbeddedPostgres\n"
        "s = EmbeddedPostgres(sys.argv[1], settings={'fsync': 'off'})\n"
        "print(s.start(), s.owns_server, flush=True)\n"
        "sys.stdin.read()\n"  # hold on until told to stop
        "s.stop()\n"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "shared")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        answers = [w.stdout.readline().split() for w in workers if w.stdout is not None]
        assert len({dsn for dsn, _ in answers}) == 1
        assert sorted(owns for _, owns in answers) == ["False", "False", "True"]
        owner = next(w for w, (_, owns) in zip(workers, answers, strict=True) if owns == "True")
        for worker in sorted(workers, key=lambda w: w is owner):  # the owner stops last
            assert worker.stdin is not None
            worker.stdin.close()
            assert worker.wait(timeout=60) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
    assert not (tmp_path / "shared" / "pg" / "postmaster.pid").exists()


def test_data_dir_too_long_for_a_socket_name_uses_a_short_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedPostgres(deep, settings=FAST)
    dsn = server.start()
    try:
        assert str(deep) not in dsn
        assert query(dsn, "SHOW listen_addresses") == ""
        socket_dir = Path(query(dsn, "SHOW unix_socket_directories"))  # type: ignore[arg-type]
        assert socket_dir.exists()
    finally:
        server.stop()
    assert not socket_dir.exists()
