"""What the deployment tests share: Debian's tools located (never skipped: `make test` installs them), waits on
a condition with a deadline, a real Prometheus on loopback, and the files under deploy/."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.procs import free_port

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Debian puts some of these under sbin, which a non-root PATH may lack.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def tool(name: str, package: str) -> str:
    """The path of a Debian tool, or a test failure saying how to get it (`make test` installs it)."""
    found = shutil.which(name, path=_SEARCH)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` installs Debian's {package} package "
                    f"(apt-get install {package})", pytrace=False)
    return found


def run(*cmd: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


async def wait_for(check: Callable[[], Awaitable[T | None]], what: str, within: float = 30.0,
                   every: float = 0.1) -> T:
    """Poll `check` until it returns something other than None or False, for at most `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = await check()
        except (aiohttp.ClientError, OSError) as err:
            last = err
        else:
            if last is not None and last is not False:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(every)


class Prometheus:
    """Debian's prometheus on 127.0.0.1 with a config written by the test, its data in a temporary folder."""

    def __init__(self, workdir: Path, config: dict[str, Any]):
        import yaml

        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Prometheus:
        binary = tool("prometheus", "prometheus")
        cmd = [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle", "--log.level=warn"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

        async def ready() -> bool | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            async with aiohttp.ClientSession() as session, session.get(f"{self.base}/-/ready") as resp:
                return resp.status == 200 or None

        await wait_for(ready, "prometheus to be ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def api(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.base}/api/v1/{path}", params=params) as resp:
                body = await resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"/api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        return (await self.api("query", query=expr))["result"]

    async def value(self, expr: str) -> float | None:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
