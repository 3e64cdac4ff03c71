"""HaloTrack benchmark: the same load against the upstream, HaloTrack, a bare aiohttp proxy and nginx.

    python bench/run.py                                  # scenario `page`, about a minute
    python bench/run.py --scenario page,returning --duration 5 --rounds 3
    python bench/run.py --no-append                      # print only; leave docs/performance.md alone

Targets, all in front of the same origin (`bench/upstream.py`, a ~4 KiB HTML page, and a gzipped 30 KiB one for
the injection scenarios):
  (a) upstream   the origin itself, no proxy;
  (b) halotrack  `halo-proxy serve --workers 1 --log-level WARNING` on a generated tenant YAML;
  (c) bare       `bench/bare_proxy.py`, the smallest fair aiohttp streaming proxy (the baseline);
  (d) nginx      one nginx worker, `proxy_pass` with keep-alive to the origin (skipped when not installed).

Fairness: one process per proxy; with two or more CPUs the proxies share one CPU and the origin, the load
generator and this script another; the same generator (wrk, or the Python client when wrk is absent) and
connection count for every target; each measurement preceded by a warm-up; targets measured in a rotating
order over several rounds, the median reported. Every process started here is stopped on exit, error or
Ctrl+C. See docs/performance.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import random
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import scenarios  # noqa: E402

HOST = "bench.localhost"        # the tenant host every request carries
LOOPBACK = "127.0.0.1"          # the only address that receives load
TENANT_ID = "bench"
COOKIE_NAME = "_halo"           # HaloTrack's default visitor cookie
READY_TIMEOUT_S = 90.0          # a later HaloTrack may start an embedded database first
STOP_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 20.0
DOC = ROOT / "docs" / "performance.md"

TARGETS = ("upstream", "halotrack", "bare", "nginx")
LABELS = {
    "upstream": "(a) upstream direct",
    "halotrack": "(b) HaloTrack",
    "bare": "(c) bare aiohttp proxy",
    "nginx": "(d) nginx proxy_pass",
}


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------
# Processes.


@dataclass
class ProcInfo:
    pid: int
    ppid: int
    sid: int
    cpu_ticks: int


def scan_processes() -> dict[int, ProcInfo]:
    """Every live process with its parent, session and CPU ticks, from /proc."""
    out: dict[int, ProcInfo] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        pid = int(entry.name)
        out[pid] = ProcInfo(pid, int(fields[1]), int(fields[3]), int(fields[11]) + int(fields[12]))
    return out


def cmdline_has(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


class Processes:
    """Every process the benchmark starts, each in its own session so its children can be stopped with it.

    A process may also leave its session on purpose (a daemonized database under HALO_DATA_DIR, say); give it a
    `marker`, a path that appears on such a process's command line, and it still counts as the target's: its
    CPU time is added to the target's and it is stopped with it.
    """

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.markers: dict[str, str] = {}
        self.metrics_ports: dict[str, int] = {}   # targets with a Prometheus endpoint

    def start(self, name: str, argv: list[str], cpus: set[int] | None,
              env: dict[str, str] | None = None, marker: str | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child holds its own copy

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=ROOT, start_new_session=True, preexec_fn=pin)
        finally:
            log.close()
        self.procs[name] = proc
        if marker:
            self.markers[name] = marker
        return proc

    def owned(self, name: str, table: dict[int, ProcInfo] | None = None) -> list[ProcInfo]:
        """The target's processes: its session, processes carrying its marker, and their descendants."""
        table = scan_processes() if table is None else table
        leader = self.procs[name].pid
        marker = self.markers.get(name)
        roots = {p.pid for p in table.values()
                 if p.sid == leader or (marker is not None and cmdline_has(p.pid, marker))}
        children: dict[int, list[int]] = {}
        for p in table.values():
            children.setdefault(p.ppid, []).append(p.pid)
        seen: set[int] = set()
        todo = list(roots)
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo.extend(children.get(pid, ()))
        return [table[pid] for pid in seen if pid in table]

    def cpu_seconds(self, name: str, table: dict[int, ProcInfo] | None = None) -> float:
        return sum(p.cpu_ticks for p in self.owned(name, table)) / os.sysconf("SC_CLK_TCK")

    def all_cpu_seconds(self) -> float:
        table = scan_processes()
        return sum(self.cpu_seconds(name, table) for name in self.procs)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop_all(self) -> None:
        """SIGTERM to each leader (so it can stop what it started), then SIGKILL to whatever of it is left."""
        names = list(reversed(self.procs))
        leftovers: dict[str, list[int]] = {}
        for name in names:
            leftovers[name] = [p.pid for p in self.owned(name)]
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name in names:
            proc = self.procs[name]
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {name} (pid {proc.pid}) did not stop in {STOP_TIMEOUT_S:.0f} s; killing it", flush=True)
        # What a leader started and did not stop in time: its session, and its marked daemons.
        while time.monotonic() < deadline and any(self._alive(pids) for pids in leftovers.values()):
            time.sleep(0.1)
        for name in names:
            for pid in self._alive(leftovers[name]):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.procs[name].wait(timeout=5)
        self.procs.clear()
        self.markers.clear()

    @staticmethod
    def _alive(pids: list[int]) -> list[int]:
        return [pid for pid in pids if Path(f"/proc/{pid}").exists()]

    def settle(self, timeout: float = SETTLE_TIMEOUT_S) -> bool:
        """Until every started process is idle (below 5 % of a CPU over 0.3 s): work a target deferred,
        such as batched database writes, must not run during the next target's measurement."""
        deadline = time.monotonic() + timeout
        before = self.all_cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.all_cpu_seconds()
            if now - before < 0.015:
                return True
            before = now
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def http_get(port: int, path: str = "/page", timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": HOST, "Accept": "text/html"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(procs: Processes, name: str, port: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Until a page comes back 200 through `port`; fails early when the process exits."""
    proc = procs.procs[name]
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        try:
            status, _ = http_get(port, timeout=2)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as err:
            last = str(err) or type(err).__name__
        time.sleep(0.1)
    raise BenchError(f"{name} not ready after {timeout:.0f} s ({last}):\n{procs.log_tail(name)}")


# ---------------------------------------------------------------------------------------------------------
# Targets.


def halo_command() -> list[str]:
    script = Path(sys.executable).parent / "halo-proxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "halo_proxy"]


def tenant_yaml(upstream_url: str, extra: dict) -> str:
    tenant = {"id": TENANT_ID, "hosts": [HOST], "upstream": upstream_url} | extra
    # JSON is YAML: no YAML library needed to write it.
    return "# HaloTrack benchmark tenant, written by bench/run.py\n" + json.dumps({"tenants": [tenant]}, indent=2)


def nginx_conf(tmp: Path, port: int, upstream_port: int) -> str:
    return f"""# nginx benchmark target, written by bench/run.py
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-client-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 1000000;
    upstream origin {{
        server {LOOPBACK}:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {LOOPBACK}:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""


@dataclass
class Layout:
    gen_cpus: set[int] | None       # load generator, origin and this script
    proxy_cpus: set[int] | None     # the proxy being measured
    db_with_proxy: bool = False     # HaloTrack's embedded PostgreSQL on the proxy's CPU instead of the origin's

    @property
    def db_cpus(self) -> set[int] | None:
        return self.proxy_cpus if self.db_with_proxy else self.gen_cpus

    def describe(self) -> str:
        if not self.gen_cpus:
            return "no CPU pinning"
        proxy = ",".join(map(str, sorted(self.proxy_cpus or ())))
        gen = ",".join(map(str, sorted(self.gen_cpus)))
        if self.db_with_proxy:
            return (f"proxies and HaloTrack's PostgreSQL on CPU {proxy}; origin, load generator and harness on "
                    f"CPU {gen}")
        return (f"proxies on CPU {proxy}; origin, HaloTrack's PostgreSQL, load generator and harness on CPU {gen}")


def choose_layout(pin: bool, db_with_proxy: bool = False) -> Layout:
    if not pin or not hasattr(os, "sched_setaffinity"):
        return Layout(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Layout(None, None)
    return Layout({cpus[0]}, {cpus[1]}, db_with_proxy)


def pin_helpers(procs: Processes, name: str, cpus: set[int] | None) -> int:
    """Move every process of a target except its leader (HaloTrack's embedded PostgreSQL: the server and its
    backends) to `cpus`. The database is infrastructure, like the origin: it does not share the proxy's CPU.
    Backends started later inherit the server's affinity. Returns how many processes were moved."""
    if not cpus:
        return 0
    leader = procs.procs[name].pid
    moved = 0
    for p in procs.owned(name):
        if p.pid == leader:
            continue
        try:
            os.sched_setaffinity(p.pid, cpus)
            moved += 1
        except (ProcessLookupError, PermissionError) as err:
            print(f"  note: could not move process {p.pid} of {name} to CPU {sorted(cpus)}: {err}", flush=True)
    return moved


def start_targets(procs: Processes, tmp: Path, wanted: list[str], layout: Layout,
                  tenant_extra: dict, webhook_secret: str) -> tuple[dict[str, int], int]:
    """Start the origin and every wanted target; return {target: port} and the origin's port."""
    up_port = free_port()
    procs.start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--host", LOOPBACK, "--port", str(up_port)],
                layout.gen_cpus)
    wait_ready(procs, "upstream", up_port)
    up_url = f"http://{LOOPBACK}:{up_port}"
    ports = {"upstream": up_port}

    if "halotrack" in wanted:
        port, metrics_port = free_port(), free_port()
        config = tmp / "tenants.yaml"
        config.write_text(tenant_yaml(up_url, tenant_extra))
        data_dir = tmp / "halo-data"
        data_dir.mkdir()
        env = dict(os.environ, HALO_DATA_DIR=str(data_dir), HALO_SECRET_KEY=secrets.token_hex(32),
                   HALO_BENCH_WEBHOOK_SECRET=webhook_secret)
        procs.start("halotrack", halo_command() + [
            "--log-level", "WARNING", "serve", "--config", str(config), "--host", LOOPBACK, "--port", str(port),
            "--metrics-port", str(metrics_port), "--workers", "1"], layout.proxy_cpus, env, marker=str(data_dir))
        ports["halotrack"] = port
        procs.metrics_ports["halotrack"] = metrics_port
    if "bare" in wanted:
        port = free_port()
        procs.start("bare", [sys.executable, str(BENCH / "bare_proxy.py"), "--host", LOOPBACK, "--port", str(port),
                             "--upstream", up_url], layout.proxy_cpus)
        ports["bare"] = port
    if "nginx" in wanted:
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_conf(tmp, port, up_port))
        procs.start("nginx", [shutil.which("nginx") or "nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"),
                              "-c", str(conf)], layout.proxy_cpus)
        ports["nginx"] = port
    for name in ports:
        if name != "upstream":
            wait_ready(procs, name, ports[name])
    if "halotrack" in ports and layout.db_cpus != layout.proxy_cpus:
        pin_helpers(procs, "halotrack", layout.db_cpus)
    return ports, up_port


# ---------------------------------------------------------------------------------------------------------
# Measuring.

# HaloTrack counters read before and after each measurement: work it gave up on must not pass for speed.
WATCHED_COUNTERS = ("halo_storage_lost_writes_total", "halo_storage_errors_total", "halo_upstream_errors_total")


def read_counters(port: int | None) -> dict[str, float]:
    """The watched counters of a Prometheus endpoint, summed over labels; empty when unreachable."""
    if not port:
        return {}
    try:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode(errors="replace")
        finally:
            conn.close()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in WATCHED_COUNTERS:
            try:
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return totals


@dataclass
class Measurement:
    result: loadgen.Result
    cpu_target: float       # percent of one CPU used by the target (all its processes) during the run
    cpu_upstream: float
    cpu_target_total: float  # the target's CPU seconds from the start of the run until it was idle again
    counters: dict[str, float]  # increase of the watched counters over the run (HaloTrack only)

    @property
    def cpu_us_per_request(self) -> float:
        """The target's CPU time per request, work it deferred included (batched writes, say). Unlike req/s,
        barely moved by other load on a shared machine."""
        r = self.result
        return self.cpu_target_total / r.requests * 1e6 if r.requests else float("nan")


class Generator:
    """Runs the chosen load generator for one target with one plan, pinned to the generator CPU."""

    def __init__(self, kind: str, tmp: Path, layout: Layout, connections: int):
        self.kind = kind
        self.tmp = tmp
        self.layout = layout
        self.connections = connections
        self.runs = 0
        self.seed_base = random.randrange(10**9, 9 * 10**9)

    def run(self, plan: scenarios.RequestPlan, port: int, seconds: int) -> loadgen.Result:
        self.runs += 1
        url = f"http://{LOOPBACK}:{port}"
        if self.kind == "wrk":
            # A fresh counter range for every run, so a templated request is never repeated within a run.
            script = self.tmp / f"plan-{self.runs}.lua"
            script.write_text(loadgen.wrk_script(plan, self.seed_base + self.runs * 10**8))
            argv = loadgen.wrk_command(script, url, self.connections, seconds)
            parse = loadgen.parse_wrk
        else:
            plan_file = self.tmp / "plan.json"
            plan_file.write_text(scenarios.dumps(plan))
            argv = loadgen.python_command(plan_file, url, self.connections, seconds)
            parse = loadgen.parse_python

        def pin() -> None:
            if self.layout.gen_cpus:
                os.sched_setaffinity(0, self.layout.gen_cpus)

        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, preexec_fn=pin) as proc:
            try:
                out, _ = proc.communicate(timeout=seconds + 30)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if proc.returncode != 0:
            raise BenchError(f"load generator exited with {proc.returncode}:\n{out[-2000:]}")
        return parse(out)


def measure(gen: Generator, procs: Processes, target: str, port: int, plan: scenarios.RequestPlan,
            warmup: int, duration: int) -> Measurement:
    if warmup > 0:
        gen.run(plan, port, warmup)
    if not procs.settle():
        print(f"  note: processes still busy {SETTLE_TIMEOUT_S:.0f} s after the warm-up; measuring anyway", flush=True)
    counters0 = read_counters(procs.metrics_ports.get(target))
    cpu0 = procs.cpu_seconds(target), procs.cpu_seconds("upstream")
    result = gen.run(plan, port, duration)
    cpu1 = procs.cpu_seconds(target), procs.cpu_seconds("upstream")
    if not procs.settle():
        print(f"  note: processes still busy {SETTLE_TIMEOUT_S:.0f} s after the measurement", flush=True)
    cpu2 = procs.cpu_seconds(target)
    counters1 = read_counters(procs.metrics_ports.get(target))
    grown = {k: v - counters0.get(k, 0.0) for k, v in counters1.items() if v - counters0.get(k, 0.0) > 0}
    return Measurement(result, 100 * (cpu1[0] - cpu0[0]) / result.seconds,
                       100 * (cpu1[1] - cpu0[1]) / result.seconds, cpu2 - cpu0[0], grown)


@dataclass
class Row:
    scenario: str
    target: str
    rounds: list[Measurement]
    na: str | None = None

    def median(self, attr: str) -> float:
        return statistics.median(getattr(m.result, attr) for m in self.rounds)

    @property
    def rps(self) -> float:
        return self.median("rps")

    @property
    def cpu_us(self) -> float:
        return statistics.median(m.cpu_us_per_request for m in self.rounds)

    @property
    def errors(self) -> int:
        return sum(m.result.errors for m in self.rounds)

    @property
    def requests(self) -> int:
        return sum(m.result.requests for m in self.rounds)

    @property
    def counter_note(self) -> str:
        totals: dict[str, float] = {}
        for m in self.rounds:
            for k, v in m.counters.items():
                totals[k] = totals.get(k, 0.0) + v
        return ", ".join(f"{k.removeprefix('halo_').removesuffix('_total')} {v:.0f}" for k, v in totals.items())


# ---------------------------------------------------------------------------------------------------------
# Reporting.


def fmt_ms(value: float) -> str:
    return f"{value:.2f}"


def table(rows: list[Row]) -> list[str]:
    out = ["| scenario | target | req/s | p50 ms | p99 ms | errors | target CPU | CPU µs/req | origin CPU "
           "| req/s by round |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        if row.na:
            out.append(f"| {row.scenario} | {LABELS[row.target]} | n/a | | | | | | | {row.na} |")
            continue
        cpu_t = statistics.median(m.cpu_target for m in row.rounds)
        cpu_u = statistics.median(m.cpu_upstream for m in row.rounds)
        per_round = " / ".join(f"{m.result.rps:.0f}" for m in row.rounds)
        errors = f"{row.errors} ({row.counter_note})" if row.counter_note else str(row.errors)
        out.append(f"| {row.scenario} | {LABELS[row.target]} | {row.rps:.0f} | {fmt_ms(row.median('p50_ms'))} | "
                   f"{fmt_ms(row.median('p99_ms'))} | {errors} | {cpu_t:.0f} % | {row.cpu_us:.0f} | "
                   f"{cpu_u:.0f} % | {per_round} |")
    return out


def ratio_lines(rows: list[Row], scenario_names: list[str]) -> list[str]:
    out = []
    by = {(r.scenario, r.target): r for r in rows}
    for name in scenario_names:
        halo = by.get((name, "halotrack"))
        if halo is None:
            continue
        if halo.na:
            out.append(f"- `{name}`: n/a ({halo.na})")
            continue
        parts = []
        goal = scenarios.SCENARIOS[name].target_vs_bare
        for other, label in (("bare", "bare"), ("nginx", "nginx")):
            row = by.get((name, other))
            if row is None or row.na or not row.rps:
                continue
            r = halo.rps / row.rps
            text = (f"HaloTrack/{label} **{r:.2f}×** req/s "
                    f"(p50 {halo.median('p50_ms') / row.median('p50_ms'):.2f}×, "
                    f"p99 {halo.median('p99_ms') / row.median('p99_ms'):.2f}×; "
                    f"by CPU per request {row.cpu_us / halo.cpu_us:.2f}×)")
            if other == "bare" and goal is not None:
                text += f", goal ≥ {goal:.2f}×: {'met' if r >= goal else 'NOT met'}"
            parts.append(text)
        ref = scenarios.SCENARIOS[name].target_vs_scenario
        base = by.get((ref[0], "halotrack")) if ref else None
        if ref and base is not None and not base.na and base.rps:
            r = halo.rps / base.rps
            parts.append(f"HaloTrack {name}/{ref[0]} **{r:.2f}×** req/s (by CPU per request "
                         f"{base.cpu_us / halo.cpu_us:.2f}×), goal ≥ {ref[1]:.2f}×: "
                         f"{'met' if r >= ref[1] else 'NOT met'}")
        out.append(f"- `{name}`: " + "; ".join(parts) if parts else f"- `{name}`: no baseline measured")
    return out


def tool_version(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else None


def machine_lines(gen_kind: str, layout: Layout, with_nginx: bool) -> list[str]:
    import aiohttp

    cpu_model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rev = tool_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = tool_version(["git", "-C", str(ROOT), "status", "--porcelain", "--", "halo_proxy"])
    generator = "wrk" if gen_kind == "wrk" else "Python client (aiohttp)"
    if gen_kind == "wrk":
        version = tool_version(["wrk", "-v"]) or ""
        generator += f" ({version.split(' [')[0]})" if version else ""
    try:
        import uvloop
        loop = f"uvloop {uvloop.__version__} (HaloTrack and the bare proxy)"
    except ImportError:
        loop = "asyncio's own (uvloop is not installed)"
    lines = [
        f"- Machine: `nproc` = {os.cpu_count()}, {cpu_model}, Linux {platform.release()}",
        f"- Python {platform.python_version()}, aiohttp {aiohttp.__version__}; HaloTrack at `{rev}`"
        + (" with uncommitted changes in `halo_proxy/`" if dirty else ""),
        f"- Load generator: {generator}; {layout.describe()}",
        f"- Event loop: {loop}",
    ]
    if with_nginx:
        lines.append(f"- {tool_version(['nginx', '-v']) or 'nginx'}")
    return lines


DOC_INTRO = """# Performance

HaloTrack sits in front of every page of a client's site, so its cost is measured against the alternatives
a client could put there instead. `bench/run.py` runs, in one go and with the same load generator:

| target | what it is |
|---|---|
| (a) upstream direct | the origin (`bench/upstream.py`: a ~4 KiB HTML page at `/page`; a 30 KiB one gzipped at level 6 once at start, at `/gz30` and, with `Cache-Control: no-transform`, at `/gz30-plain`) with no proxy: the ceiling |
| (b) HaloTrack | `halo-proxy serve --workers 1 --log-level WARNING` on a generated tenant YAML |
| (c) bare aiohttp proxy | `bench/bare_proxy.py`: one `ClientSession`, streaming, hop-by-hop headers stripped, nothing else; on the same event loop as HaloTrack (uvloop when installed; runs before 2026-11-28 04:55 used asyncio's loop for both until HaloTrack switched to uvloop at `1b71cb9`) |
| (d) nginx proxy_pass | one nginx worker with keep-alive to the origin (skipped when nginx is not installed) |

## Running it

    make bench                                   # or: .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --scenario proxy_only,returning,new_visitor,page --rounds 3
    .venv/bin/python bench/run.py --no-append    # print only

Options: `--duration` seconds per measurement (default 4), `--warmup` seconds before each (1), `--rounds` (3),
`--connections` (32), `--scenario` (comma-separated or `all`; default `page`), `--targets`, `--generator`
(`auto`, `wrk`, `python`), `--no-pin`, `--db-with-proxy`, `--no-append`. `bench/micro.py` times
`VisitTracker.observe` and the header copying in-process, without sockets; `bench/micro.py inject` the
injection into a compressed 30 KiB page. The default run takes about a minute.
`apt-get install wrk nginx` gives the full comparison; without wrk the Python client is used, without nginx
row (d) is skipped. All traffic stays on 127.0.0.1.

Scenarios (`bench/scenarios.py`; add one there). Every target receives the same requests; what differs is
what HaloTrack does with them, and each scenario has its own goal:

| scenario | request | what HaloTrack does | goal (HaloTrack/bare) |
|---|---|---|---|
| `proxy_only` | `GET /page` with only a Host header (wrk's default request) | checks whether it is a page view (it is not: no `Accept: text/html`, no `Sec-Fetch-Dest`), counts it as skipped, proxies it: the proxy path alone | ≥ 0.9× (issue 2's "small HTML page", set before tracking existed) |
| `returning` | `GET /page` with a browser's headers and the cookies a first visit through HaloTrack set (`_halo`, `_fbp`), no campaign data | a tracked page view on the fast path: cookie opened, consent read, no database work | ≥ 0.9× (issue 3) |
| `new_visitor` | `GET /page?utm_source=google&utm_medium=cpc&gclid=<n>` with a browser's headers, no cookie, a new `<n>` each request | a new session with a paid first touch and a click id, sealed cookie, `_fbp`, hashed and encrypted IP and user agent, one row in `sessions` and one in `touches` | ≥ 0.6× (issue 3) |
| `page` | `GET /page` with a browser's headers (`Accept: text/html`, `Sec-Fetch-Dest: document`, Chrome user agent), no cookie | with the default consent (`unknown: granted`) every request is a new visitor: a new session (direct first touch) stored each time | ≥ 0.6× (a new visitor) |
| `injected` | `GET /gz30` as in `returning` (browser headers, `Accept-Encoding: gzip, deflate, br, zstd`, a first visit's cookies); the origin answers a 30 KiB page gzipped at level 6 | the returning visitor's fast path, and the page decoded, the script tag injected after `<head>`, re-encoded as gzip (ISA-L level 1) with a new Content-Length, once: the same bytes again are answered from HaloTrack's cache of injected pages; the other targets pass the gzip bytes through | ≥ 0.8×, and ≥ 0.8× HaloTrack's own `returning_gz` in the same run |
| `injected_unique` | `GET /gz30-unique?v=<n>` as in `injected`, a new `<n>` each request; the origin puts `<n>` in the page's footer and gzips it per request (level 1) | as `injected`, but no two pages are the same bytes, so the cache of injected pages never answers: every view is decoded, injected and re-encoded | ≥ 0.8×, and ≥ 0.8× HaloTrack's own `returning_gz` |
| `returning_gz` | `GET /gz30-plain`, the same request; the origin's same gzip bytes with `Cache-Control: no-transform` | the returning visitor's fast path; no injection (no-transform, a header check), the page passed through as it came: the reference for `injected` | none of its own |

Since `912b331` HaloTrack injects its script tag into every HTML page view, so `returning`, `new_visitor` and
`page` include an injection too, into the identity 4 KiB page (no coding to undo, Content-Length corrected).

## Reading the figures

- **req/s** is the median over the rounds (each round measures every target once, in a rotating order);
  the per-round figures show the noise. On a shared machine, differences under ~5 % are noise.
- **p50 / p99** are the latencies at that load. The generator is closed-loop (a fixed number of connections
  sending as fast as answers come back), so these are latencies *at saturation*: they grow with
  `--connections` and are comparable only between targets of the same run, not with production latencies.
- **target CPU** is the CPU the target used during the measurement (100 % = one full core), summed over all
  its processes (HaloTrack's embedded PostgreSQL included). The database is infrastructure, like the origin:
  the harness moves it to the origin's CPU once HaloTrack is up (`--db-with-proxy` keeps it on the proxies'
  CPU, as runs before 2026-11-28 04:35 did), so HaloTrack can exceed 100 % when it writes. A proxy near
  100 % is the bottleneck, as it should be; if the origin CPU is also near 100 %, the origin limits the run
  and the ratios understate the proxies' differences.
- **errors** counts failed requests (socket errors, timeouts, status 400 and up). For HaloTrack it also
  shows how much its `halo_storage_lost_writes_total`, `halo_storage_errors_total` and
  `halo_upstream_errors_total` grew during the measurements: visits it dropped under load were not paid for,
  so its req/s then flatters it.
- **CPU µs/req** is the target's CPU time per request, counted from the start of the measurement until all
  its processes are idle again, so work it defers (batched database writes) is included. It moves much less
  than req/s when something else runs on the machine; the "by CPU per request" ratio compares capacity.
- Between measurements the harness waits until every process it started is idle (at most 20 s), so one
  target's deferred work never runs during the next target's measurement.
- **Ratios**: HaloTrack's req/s over the bare proxy's (each scenario's goal is in the table above) and over
  nginx's; for `injected`, also over HaloTrack's own in `returning_gz` when both ran (the price of the tag).
  The bare proxy is the price of aiohttp itself; HaloTrack's distance to it is the price of what HaloTrack
  adds. nginx shows what a C proxy costs on the same machine.
- With the Python client instead of wrk the generator itself is slow, and the ratios are pulled towards 1.

Each run appends a dated section below with the machine, the exact command and the table.
"""


def append_doc(section: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else DOC_INTRO
    DOC.write_text(text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")


def display_command() -> str:
    exe = Path(sys.executable)
    try:
        exe_text = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else "python"
    except ValueError:
        exe_text = "python"
    return shlex.join([exe_text, "bench/run.py", *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------------------
# Main.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark HaloTrack against the upstream, a bare aiohttp proxy "
                                                 "and nginx.")
    parser.add_argument("--duration", type=int, default=4, help="seconds per measurement (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each measurement (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring every target (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="open connections (default 32)")
    parser.add_argument("--scenario", default="page",
                        help=f"comma-separated, or 'all': {', '.join(scenarios.SCENARIOS)} (default page)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--db-with-proxy", action="store_true",
                        help="leave HaloTrack's embedded PostgreSQL on the proxy's CPU (default: the origin's CPU)")
    parser.add_argument("--no-append", action="store_true", help="do not append the results to docs/performance.md")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 30 or not 1 <= args.rounds <= 10:
        parser.error("--duration must be 1..120, --warmup 0..30, --rounds 1..10")
    if not 1 <= args.connections <= 4096:
        parser.error("--connections must be 1..4096")
    names = list(scenarios.SCENARIOS) if args.scenario == "all" else [s for s in args.scenario.split(",") if s]
    unknown = [s for s in names if s not in scenarios.SCENARIOS]
    if unknown or not names:
        parser.error(f"unknown scenario {unknown}; known: {', '.join(scenarios.SCENARIOS)}")
    args.scenarios = names
    targets = [t for t in args.targets.split(",") if t]
    if any(t not in TARGETS for t in targets) or not targets:
        parser.error(f"--targets must name some of {','.join(TARGETS)}")
    args.target_list = [t for t in TARGETS if t in targets]
    return args


def run(args: argparse.Namespace) -> int:
    wanted = list(args.target_list)
    notes: list[str] = []
    if "nginx" in wanted and shutil.which("nginx") is None:
        wanted.remove("nginx")
        notes.append("(d) nginx: skipped, nginx is not installed (apt-get install nginx)")
    gen_kind = args.generator
    if gen_kind == "auto":
        gen_kind = "wrk" if loadgen.wrk_path() else "python"
        if gen_kind == "python":
            notes.append("load generator: wrk is not installed (apt-get install wrk); using the Python client, "
                         "whose own cost pulls the ratios towards 1")
    elif gen_kind == "wrk" and not loadgen.wrk_path():
        raise BenchError("--generator wrk: wrk is not installed")
    layout = choose_layout(not args.no_pin, args.db_with_proxy)
    for note in notes:
        print(note, flush=True)

    per_run = args.warmup + args.duration + 0.5
    estimate = len(args.scenarios) * args.rounds * len(wanted) * per_run + 5
    print(f"{len(args.scenarios)} scenario(s) x {args.rounds} rounds x {len(wanted)} targets, "
          f"{args.connections} connections, {args.duration} s each (+{args.warmup} s warm-up): about "
          f"{estimate:.0f} s; {layout.describe()}", flush=True)

    if layout.gen_cpus:
        os.sched_setaffinity(0, layout.gen_cpus)
    tenant_extra: dict = {}
    for name in args.scenarios:
        tenant_extra |= scenarios.SCENARIOS[name].tenant_extra
    webhook_secret = secrets.token_hex(32)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="halo-bench-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp)
        try:
            ports, _ = start_targets(procs, tmp, wanted, layout, tenant_extra, webhook_secret)
            ctx = scenarios.Context(
                host=HOST,
                halo_url=f"http://{LOOPBACK}:{ports['halotrack']}" if "halotrack" in ports else None,
                cookie_name=COOKIE_NAME, webhook_secret=webhook_secret)
            gen = Generator(gen_kind, tmp, layout, args.connections)
            for name in args.scenarios:
                planned = scenarios.SCENARIOS[name].plan(ctx)
                if isinstance(planned, str):
                    print(f"{name}: n/a ({planned})", flush=True)
                    rows += [Row(name, t, [], na=planned) for t in wanted]
                    continue
                plan = planned.with_host(HOST)
                results: dict[str, list[Measurement]] = {t: [] for t in wanted}
                for rnd in range(args.rounds):
                    order = wanted[rnd % len(wanted):] + wanted[:rnd % len(wanted)]
                    for target in order:
                        m = measure(gen, procs, target, ports[target], plan, args.warmup, args.duration)
                        results[target].append(m)
                        r = m.result
                        err = f"  errors {r.errors} ({r.error_detail})" if r.errors else ""
                        err += "".join(f"  {k} +{v:.0f}" for k, v in m.counters.items())
                        print(f"{name:<12} round {rnd + 1}/{args.rounds}  {LABELS[target]:<24} {r.rps:8.0f} req/s  "
                              f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  cpu {m.cpu_target:3.0f} % "
                              f"({m.cpu_us_per_request:4.0f} µs/req)  origin cpu {m.cpu_upstream:3.0f} %{err}",
                              flush=True)
                rows += [Row(name, t, results[t]) for t in wanted]
        finally:
            procs.stop_all()

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {when}: {', '.join(args.scenarios)}", ""]
    lines += machine_lines(gen_kind, layout, "nginx" in wanted)
    lines += [f"- Command: `{display_command()}` ({args.rounds} rounds x {args.duration} s after "
              f"{args.warmup} s warm-up, {args.connections} connections, medians)"]
    lines += [f"- Note: {n}" for n in notes]
    lines += ["- Scenarios:"]
    lines += [f"  - `{name}`: {scenarios.SCENARIOS[name].description}" for name in args.scenarios]
    lines += ["", *table(rows), "", *ratio_lines(rows, args.scenarios)]
    section = "\n".join(lines)
    print("\n" + section, flush=True)
    if any(r.errors for r in rows):
        print("\nwarning: some requests failed; see the errors column", flush=True)
    if not args.no_append:
        append_doc(section)
        print(f"\nappended to {DOC.relative_to(ROOT)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        return run(args)
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
