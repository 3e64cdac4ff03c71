"""The open-loop generator's Python side: build `bench/openloop.c`, write a plan's requests for it, run, parse.

`openloop.c` (its opening comment says why it exists) sends requests at a fixed rate and measures each latency
from the request's intended send time; this module is how `bench/run.py` uses it:

    binary = openloop.build(tmp)                           # cc -O2, once per run
    spec = openloop.write_requests(plan, tmp / "r.bin", count)
    result = openloop.run(binary, spec, port, rate=1500, duration=5, warmup=1)

`schedule` and `fixed_rates` are the pure parts (the intended send times, the rates a run measures at), shared
with the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "openloop.c"
# The generator runs at a higher priority than everything else on its CPU (when allowed to: root or CAP_SYS_NICE),
# so a request's send is late only when the machine itself is late, not because the origin or another process
# held the CPU; it needs a few tens of microseconds per request, so the origin beside it barely notices.
NICE = -10
RESULT_TAG = "OPENLOOP_RESULT "
LOOPBACK = "127.0.0.1"


class OpenLoopError(Exception):
    pass


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def build(out_dir: Path) -> Path:
    """Compile `openloop.c` into `out_dir` (named by the source's hash, so a changed source is rebuilt)."""
    cc = compiler()
    if cc is None:
        raise OpenLoopError("no C compiler (cc or gcc) to build bench/openloop.c: apt-get install gcc")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = out_dir / f"openloop-{digest}"
    if binary.exists():
        return binary
    done = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(SOURCE)], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise OpenLoopError(f"{cc} could not build {SOURCE.name}:\n{done.stderr[-2000:]}")
    return binary


# ---------------------------------------------------------------------------------------------------------
# Pure parts.


def schedule(rate: float, warmup: float, duration: float) -> tuple[int, int]:
    """(requests sent, requests measured) for a run: request i is due at i / rate seconds after the start, the
    ones due in the first `warmup` seconds are sent but not measured. The same arithmetic as openloop.c."""
    interval_ns = max(1, int(1e9 / rate))
    warm_ns, run_ns = int(warmup * 1e9), int(duration * 1e9)
    total = -(-(warm_ns + run_ns) // interval_ns)
    warm = -(-warm_ns // interval_ns)
    return total, total - warm


def fixed_rates(saturation_rps: float, fractions: tuple[float, ...]) -> list[int]:
    """The fixed rates a scenario is measured at: each fraction of HaloTrack's saturation, rounded to 10 req/s
    (at least 10)."""
    return [max(10, int(round(saturation_rps * f / 10.0)) * 10) for f in fractions]


def raw_request(method: str, path: str, headers: tuple[tuple[str, str], ...], body: str) -> bytes:
    """The request as HTTP/1.1 bytes, as wrk's `wrk.format` writes it (a Content-Length when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers]
    data = body.encode()
    if data and not any(k.lower() == "content-length" for k, _ in headers):
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def encode(requests: list[bytes]) -> bytes:
    """The requests file openloop.c reads: the count, then each request's length and bytes."""
    out = [f"{len(requests)}\n".encode()]
    for r in requests:
        out.append(f"{len(r)}\n".encode())
        out.append(r)
    return b"".join(out)


@dataclass(frozen=True)
class RequestsSpec:
    path: Path
    template: bool      # openloop.c fills "{n}" in the one request with a per-request counter


def write_requests(plan, path: Path, count: int,  # type: ignore[no-untyped-def]
                   expand: Callable[[str, int], str] | None = None) -> RequestsSpec:
    """Write `plan` (a `scenarios.RequestPlan`, `for_run` already applied) for openloop.c. A `{n}` template whose
    body is empty is filled by the generator itself; one with `{n}` in its body (its length would change) is
    expanded here into `count` requests."""
    if plan.pool:
        reqs = [raw_request(r.method, r.path, r.headers, r.body) for r in plan.pool]
        path.write_bytes(encode(reqs))
        return RequestsSpec(path, False)
    r = plan.request
    if plan.templated and "{n}" in r.body:
        fill = expand or (lambda s, n: s.replace("{n}", str(n)))
        reqs = [raw_request(r.method, fill(r.path, n), tuple((k, fill(v, n)) for k, v in r.headers), fill(r.body, n))
                for n in range(count)]
        path.write_bytes(encode(reqs))
        return RequestsSpec(path, False)
    path.write_bytes(encode([raw_request(r.method, r.path, r.headers, r.body)]))
    return RequestsSpec(path, plan.templated)


# ---------------------------------------------------------------------------------------------------------
# Running it.


@dataclass
class OpenResult:
    rate: float
    seconds: float
    scheduled: int
    completed: int
    ok: int
    status_errors: int
    s2xx: int
    s3xx: int
    s4xx: int
    s5xx: int
    read_errors: int
    write_errors: int
    connect_errors: int
    timeouts: int
    unsent: int
    reconnects: int
    late_sends: int
    connections: int
    sent: int             # requests sent, warm-up included
    cpu_s: float
    wall_s: float
    latency_us: dict[str, float]
    send_lag_us: dict[str, float]
    counted: int = 0
    counted_all: int = 0

    @property
    def errors(self) -> int:
        return (self.status_errors + self.read_errors + self.write_errors + self.connect_errors + self.timeouts
                + self.unsent)

    @property
    def achieved_rps(self) -> float:
        return self.completed / self.seconds if self.seconds else float("nan")

    def ms(self, key: str) -> float:
        return self.latency_us[key] / 1000

    @property
    def cpu_us_per_request(self) -> float:
        """The generator's own CPU time per request it sent (warm-up included)."""
        return self.cpu_s / self.sent * 1e6 if self.sent else float("nan")


def command(binary: Path, spec: RequestsSpec, port: int, rate: float, duration: float, warmup: float,
            connections: int, seed: int = 0, timeout_ms: int = 5000, count_status: int | None = None) -> list[str]:
    argv = [str(binary), "--host", LOOPBACK, "--port", str(port), "--rate", f"{rate:g}", "--duration",
            f"{duration:g}", "--warmup", f"{warmup:g}", "--connections", str(connections), "--requests",
            str(spec.path), "--seed", str(seed), "--timeout-ms", str(timeout_ms)]
    if spec.template:
        argv.append("--template")
    if count_status:
        argv += ["--count-status", str(count_status)]
    return argv


def parse(stdout: str) -> OpenResult:
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return OpenResult(**json.loads(line[len(RESULT_TAG):]))
    raise OpenLoopError("openloop printed no result line:\n" + stdout[-2000:])


def prioritised(cpus: set[int] | None) -> Callable[[], None]:
    """A preexec_fn: pin the generator to `cpus` and raise its priority (`NICE`) where permitted."""
    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        try:
            os.nice(NICE)
        except OSError:
            pass  # not permitted: it runs at the ordinary priority, and its send lag shows what that cost

    return setup


def run(binary: Path, spec: RequestsSpec, port: int, rate: float, duration: float, warmup: float,
        connections: int = 64, seed: int = 0, count_status: int | None = None,
        preexec_fn: Callable[[], None] | None = None) -> OpenResult:
    argv = command(binary, spec, port, rate, duration, warmup, connections, seed, count_status=count_status)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=warmup + duration + 30,
                          preexec_fn=preexec_fn or prioritised(None), stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise OpenLoopError(f"openloop exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return parse(done.stdout)
