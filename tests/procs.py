"""Run `halo-proxy` as a real process on loopback for tests that need signals, workers or memory readings."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

TEST_SECRET = "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class ProxyProcess:
    """`halo-proxy serve` in a subprocess; waits until healthz answers."""

    def __init__(self, config: Path, *, workers: int = 1, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None):
        self.config = config
        self.port = free_port()
        self.metrics_port = free_port()
        self.workers = workers
        self.env = {**os.environ, "HALO_SECRET_KEY": TEST_SECRET, "HALO_DATA_DIR": str(config.parent / "halo-data"),
                    **(env or {})}
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config.parent / f"proxy-{self.port}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str) -> ProxyProcess:
        cmd = [sys.executable, "-m", "halo_proxy", "--log-level", "INFO", "serve", "--config", str(self.config),
               "--port", str(self.port), "--metrics-port", str(self.metrics_port), "--workers", str(self.workers),
               *self.extra_args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.proc.wait()
                    raise RuntimeError(f"halo-proxy exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    async with session.get(f"{self.base}/_halo/healthz", headers={"Host": host}) as resp:
                        healthy = resp.status == 200
                    # With several workers the supervisor is ready once it serves the metrics.
                    async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
                        if healthy and resp.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"halo-proxy did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        return self.proc.returncode
