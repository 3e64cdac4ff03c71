"""What a container runtime relies on: `serve` configured from the environment, `halo-proxy healthcheck` probing
the configured port under the configured prefix, and the tenant file reloaded (as on SIGHUP) when a Kubernetes
ConfigMap volume swaps it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.deploy.tools import wait_for
from tests.procs import TEST_SECRET, free_port
from tests.upstream import create_upstream


def tenant_file(upstream_port: int, hosts: str) -> str:
    return f"""
server: {{reserved_prefix: /_ht, stop: {{drain_s: 0}}}}
tenants:
  - id: shop
    hosts: [{hosts}]
    upstream: http://127.0.0.1:{upstream_port}
"""


def configmap(folder: Path, version: int, text: str) -> None:
    """The layout kubelet gives a ConfigMap volume: tenants.yaml -> ..data/tenants.yaml, ..data -> ..<version>;
    an update writes a new version folder and swaps ..data in one rename."""
    data = folder / f"..v{version}"
    data.mkdir()
    (data / "tenants.yaml").write_text(text)
    link = folder / "..data_tmp"
    link.symlink_to(data.name)
    link.rename(folder / "..data")
    if not (folder / "tenants.yaml").is_symlink():
        (folder / "tenants.yaml").symlink_to("..data/tenants.yaml")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "halo_proxy", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_from_the_environment_healthcheck_and_a_configmap_swap_reloads(workers, tmp_path, aiohttp_server,
                                                                                   database):
    upstream = await aiohttp_server(create_upstream())
    folder = tmp_path / "config"
    folder.mkdir()
    configmap(folder, 1, tenant_file(upstream.port, "shop.localhost"))
    port, metrics_port = free_port(), free_port()
    env = {"HALO_CONFIG": str(folder / "tenants.yaml"), "HALO_HOST": "127.0.0.1", "HALO_PORT": str(port),
           "HALO_METRICS_PORT": str(metrics_port), "HALO_WATCH_CONFIG_S": "0.2", "HALO_SECRET_KEY": TEST_SECRET,
           "HALO_DATABASE_URL": database.dsn, "HALO_DATA_DIR": str(tmp_path / "data"),
           "HALO_WORKERS": str(workers)}
    log = open(tmp_path / "proxy.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "halo_proxy", "serve"], env={**os.environ, **env},
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        async def status(host: str) -> int | None:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "proxy.log").read_text())
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/page", headers={"Host": host}) as resp:
                    return resp.status

        await wait_for(lambda: status("shop.localhost"), "the proxy on HALO_PORT")
        if workers > 1:
            await wait_for(lambda: metrics_up(metrics_port), "the supervisor's metrics")
        probe = await asyncio.to_thread(cli, "healthcheck", env=env)
        assert probe.returncode == 0, probe.stderr
        ready = await asyncio.to_thread(cli, "healthcheck", "--ready", env=env)
        assert ready.returncode == 0, ready.stderr
        assert await status("new.localhost") == 421

        configmap(folder, 2, tenant_file(upstream.port, "shop.localhost, new.localhost"))

        async def reloaded() -> bool:
            return await status("new.localhost") == 200

        await wait_for(reloaded, "the swapped tenant file to be reloaded", within=10)

        async def every_worker_reloaded() -> bool:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                    return f'halo_config_reloads_total{{outcome="ok"}} {workers}.0' in await resp.text()

        await wait_for(every_worker_reloaded, "one reload in each worker", within=10)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "proxy.log").read_text()
    down = await asyncio.to_thread(cli, "healthcheck", env=env)
    assert down.returncode == 1
    assert f"http://127.0.0.1:{port}/_ht/healthz" in down.stderr


async def metrics_up(port: int) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return resp.status == 200


def test_bad_settings_from_the_environment_are_named(tmp_path):
    for env, message in (
        ({"HALO_CONFIG": "t.yaml", "HALO_PORT": "eighty"}, "HALO_PORT must be a whole number, not 'eighty'"),
        ({"HALO_CONFIG": "t.yaml", "HALO_WATCH_CONFIG_S": "often"}, "HALO_WATCH_CONFIG_S must be a number"),
        ({"HALO_CONFIG": ""}, "--config (or HALO_CONFIG) is required"),
    ):
        result = cli("serve", env=env)
        assert result.returncode == 2 and message in result.stderr, (env, result.stderr)
    result = cli("healthcheck", "--config", str(tmp_path / "missing.yaml"), env={})
    assert result.returncode == 2 and "missing.yaml" in result.stderr
