"""`halo-proxy demo` as a newcomer meets it: the banner comes once the proxy listens, the printed webhook
secret signs a lead that the demo stores, and a second demo on the same ports fails clearly without touching
the first one's tenant file."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp

from tests.procs import free_port


def demo_cmd(port: int, site_port: int, metrics_port: int) -> list[str]:
    return [sys.executable, "-m", "halo_proxy", "demo", "--port", str(port), "--site-port", str(site_port),
            "--metrics-port", str(metrics_port)]


async def read_banner(proc: subprocess.Popen) -> list[str]:
    """Lines printed until "Press Ctrl+C", read from the process's stdout in a thread (bounded)."""
    def read() -> list[str]:
        lines = []
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl+C"):
                break
        return lines

    return await asyncio.to_thread(read)


async def test_the_demo_as_a_newcomer_uses_it(tmp_path, database):
    env = {**os.environ, "HALO_DATA_DIR": str(tmp_path / "halo"), "HALO_DATABASE_URL": database.dsn}
    env.pop("HALO_SECRET_KEY", None)
    port, site_port, metrics_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(demo_cmd(port, site_port, metrics_port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    try:
        banner = await read_banner(proc)
        assert banner and banner[-1].startswith("Press Ctrl+C"), banner
        secret_line = next(line for line in banner if line.startswith("Webhook secret:"))
        secret = secret_line.split()[2]
        assert secret == (tmp_path / "halo" / "demo-webhook.secret").read_text().strip()
        async with aiohttp.ClientSession() as http:
            # Printed after the listener is up: the first request after the banner is answered.
            async with http.get(f"http://127.0.0.1:{port}/_halo/healthz", headers={"Host": "localhost"}) as r:
                assert r.status == 200
            body = json.dumps({"email": "jan@example.cz", "form_type": "contact", "event_id": "lead-1"})
            t = int(time.time())
            sig = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
            async with http.post(f"http://127.0.0.1:{port}/_halo/webhook/lead", data=body, headers={
                    "Host": "localhost", "Content-Type": "application/json", "X-Halo-Signature": f"t={t},v1={sig}"}) as r:
                assert r.status == 201, await r.text()

        config = tmp_path / "halo" / f"demo-tenants-{port}.yaml"
        before = config.read_text()
        for other_site in (site_port, free_port()):  # the same ports, or only the proxy's
            second = await asyncio.to_thread(subprocess.run, demo_cmd(port, other_site, free_port()),
                                             capture_output=True, text=True, env=env, timeout=60)
            assert second.returncode == 1
            assert "cannot listen" in second.stderr and "ARGS=" in second.stderr
            assert config.read_text() == before
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0
