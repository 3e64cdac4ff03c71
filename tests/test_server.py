"""`halo-proxy` as a process: 1 GB streams with flat memory, SIGHUP reload, workers, metrics port, CLI errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.procs import ProxyProcess, peak_rss_kib
from tests.upstream import create_upstream

HOST = "shop.localhost"
GIB = 1024**3


def write_config(path, upstream_port: int, extra_tenant: str = "") -> None:
    path.write_text(f"""
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
{extra_tenant}
""")


@pytest.fixture
async def upstream(aiohttp_server):
    return await aiohttp_server(create_upstream())


@pytest.fixture
def db_env(database):
    return {"HALO_DATABASE_URL": database.dsn}


@pytest.fixture
async def served(tmp_path, upstream, db_env):
    config = tmp_path / "tenants.yaml"
    write_config(config, upstream.port)
    proc = await ProxyProcess(config, env=db_env).start(HOST)
    yield proc
    assert await proc.stop() == 0


async def test_one_gigabyte_each_way_streams_with_flat_memory(served):
    pid = served.proc.pid
    chunk = os.urandom(256 * 1024)
    sent = hashlib.sha256()

    async def body():
        total = 0
        while total < GIB:
            sent.update(chunk)
            total += len(chunk)
            yield chunk

    before = peak_rss_kib(pid)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(f"{served.base}/upload", data=body(), headers={"Host": HOST}) as resp:
            assert resp.status == 200
            result = await resp.json()
        assert result["length"] == GIB
        assert result["sha256"] == sent.hexdigest()

        received = 0
        async with session.get(f"{served.base}/big?bytes={GIB}", headers={"Host": HOST}) as resp:
            assert resp.status == 200
            assert resp.content_length == GIB
            async for part in resp.content.iter_any():
                received += len(part)
        assert received == GIB
    growth_mib = (peak_rss_kib(pid) - before) / 1024
    assert growth_mib < 64, f"proxy peak RSS grew by {growth_mib:.0f} MiB while streaming 2 GiB"


async def test_sighup_reloads_and_a_bad_file_keeps_the_old_config(tmp_path, upstream, db_env):
    config = tmp_path / "tenants.yaml"
    write_config(config, upstream.port)
    proc = await ProxyProcess(config, env=db_env).start(HOST)
    try:
        async with aiohttp.ClientSession() as session:
            async def status(host: str) -> int:
                async with session.get(f"{proc.base}/page", headers={"Host": host}) as resp:
                    return resp.status

            assert await status("new.localhost") == 421
            write_config(config, upstream.port, extra_tenant=f"""
  - id: newcomer
    hosts: [new.localhost]
    upstream: http://127.0.0.1:{upstream.port}
""")
            proc.signal(signal.SIGHUP)
            await wait_for(lambda: status("new.localhost"), 200)

            config.write_text("tenants:\n  - id: BAD\n    hosts: []\n")
            proc.signal(signal.SIGHUP)
            await wait_for_log(proc, "config reload failed")
            assert await status("new.localhost") == 200
            assert await status(HOST) == 200
            assert "tenant[BAD].id: must match" in proc.log()
            async with session.get(f"http://127.0.0.1:{proc.metrics_port}/metrics") as resp:
                text = await resp.text()
            assert 'halo_config_reloads_total{outcome="ok"} 1.0' in text
            assert 'halo_config_reloads_total{outcome="error"} 1.0' in text
    finally:
        assert await proc.stop() == 0


async def test_two_workers_share_the_port_and_metrics_are_aggregated(tmp_path, upstream, db_env):
    config = tmp_path / "tenants.yaml"
    write_config(config, upstream.port)
    proc = await ProxyProcess(config, workers=2, env=db_env).start(HOST)
    try:
        async with aiohttp.ClientSession() as session:
            async def one() -> None:
                # A new connection each time, so the kernel spreads them over both workers.
                async with aiohttp.ClientSession() as fresh:
                    async with fresh.get(f"{proc.base}/page", headers={"Host": HOST}) as resp:
                        assert resp.status == 200

            await asyncio.gather(*(one() for _ in range(40)))
            async with session.get(f"http://127.0.0.1:{proc.metrics_port}/metrics") as resp:
                text = await resp.text()
        line = next(ln for ln in text.splitlines()
                    if ln.startswith("halo_requests_total{") and 'tenant="shop"' in ln and "2xx" in ln)
        assert float(line.rsplit(" ", 1)[1]) >= 40
        children = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2
    finally:
        assert await proc.stop() == 0


async def test_sigterm_drains_an_in_flight_request(served):
    started = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        async def slow_download() -> int:
            got = 0
            async with session.get(f"{served.base}/big?bytes={64 * 1024 * 1024}", headers={"Host": HOST}) as resp:
                async for part in resp.content.iter_chunked(1024 * 1024):
                    got += len(part)
                    started.set()
                    await asyncio.sleep(0.005)
            return got

        task = asyncio.create_task(slow_download())
        await asyncio.wait_for(started.wait(), 30)
        served.signal(signal.SIGTERM)
        assert await task == 64 * 1024 * 1024


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "halo_proxy", *args], capture_output=True, text=True, timeout=60)


def test_check_config_lists_every_error_with_file_tenant_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
server: {reserved_prefix: "no-slash", trusted_proxies: [not-an-ip]}
tenants:
  - id: acme
    hosts: [acme.localhost]
    upstream: ftp://nope
    cookie: {nmae: x}
    webhook_secret: ${HALO_TEST_UNSET_VAR}
    timeouts: {connect_s: -1}
  - id: acme
    hosts: [acme.localhost]
    upstream: http://127.0.0.1:1
""")
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    expected = [
        f"{bad}:server.reserved_prefix: must be one path segment",
        f"{bad}:server.trusted_proxies[0]: 'not-an-ip' is not an IP address or CIDR",
        f"{bad}:tenant[acme].upstream: must be an http:// or https:// URL",
        f"{bad}:tenant[acme].cookie.nmae: unknown key (did you mean 'name'?)",
        f"{bad}:tenant[acme].webhook_secret: environment variable HALO_TEST_UNSET_VAR is not set",
        f"{bad}:tenant[acme].timeouts.connect_s: must be greater than 0",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)


def test_check_config_ok_prints_a_summary(tmp_path):
    result = run_cli("check-config", "--config", "config/tenants.yaml")
    assert result.returncode == 0, result.stderr
    assert "2 tenant(s)" in result.stdout


def test_serve_refuses_a_bad_file_before_listening(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants: [{id: x}]\n")
    result = run_cli("serve", "--config", str(bad), "--port", "0")
    assert result.returncode == 2
    assert "tenant[x].hosts: is required" in result.stderr


async def wait_for(probe, want, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await probe() == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never got {want}")


async def wait_for_log(proc: ProxyProcess, text: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in proc.log():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"log never said {text!r}:\n{proc.log()}")


def test_serve_refuses_to_start_without_a_secret_key(tmp_path):
    config = tmp_path / "tenants.yaml"
    write_config(config, 1)
    env = {k: v for k, v in os.environ.items() if k != "HALO_SECRET_KEY"}
    result = subprocess.run([sys.executable, "-m", "halo_proxy", "serve", "--config", str(config), "--port", "0"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "HALO_SECRET_KEY is not set" in result.stderr


async def test_serve_runs_its_own_embedded_database_and_stops_it(tmp_path, upstream):
    config = tmp_path / "tenants.yaml"
    write_config(config, upstream.port)
    env = {k: v for k, v in os.environ.items() if k != "HALO_DATABASE_URL"}
    proc = ProxyProcess(config, workers=2)
    proc.env = {**env, "HALO_SECRET_KEY": proc.env["HALO_SECRET_KEY"], "HALO_DATA_DIR": str(tmp_path / "data")}
    await proc.start(HOST)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proc.base}/_halo/readyz", headers={"Host": HOST}) as resp:
                assert resp.status == 200
        assert (tmp_path / "data" / "pg" / "postmaster.pid").exists()
    finally:
        assert await proc.stop() == 0
    assert not (tmp_path / "data" / "pg" / "postmaster.pid").exists()


async def test_workers_exit_when_their_supervisor_is_killed(tmp_path, upstream, db_env):
    config = tmp_path / "tenants.yaml"
    write_config(config, upstream.port)
    proc = await ProxyProcess(config, workers=2, env=db_env).start(HOST)
    children = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    proc.signal(signal.SIGKILL)
    await proc.stop()
    deadline = time.monotonic() + 40
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in children if _running(pid)]
        await asyncio.sleep(0.1)
    assert alive == [], "workers outlived their supervisor"


def _running(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_proxy_on_the_same_port_fails_clearly(tmp_path, upstream, db_env, workers):
    config = tmp_path / "tenants.yaml"
    write_config(config, upstream.port)
    first = await ProxyProcess(config, workers=workers, env=db_env).start(HOST)
    try:
        env = {**os.environ, "HALO_SECRET_KEY": first.env["HALO_SECRET_KEY"], **db_env}
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "halo_proxy", "serve", "--config", str(config), "--port", str(first.port),
             "--metrics-port", "0", "--workers", str(workers)],
            capture_output=True, text=True, env=env, timeout=60)
        assert second.returncode == 1, second.stderr
        assert f"cannot listen on 127.0.0.1:{first.port}" in second.stderr
        assert "already using it" in second.stderr
        async with aiohttp.ClientSession() as session:  # the first one still serves
            async with session.get(f"{first.base}/page", headers={"Host": HOST}) as resp:
                assert resp.status == 200
    finally:
        assert await first.stop() == 0
