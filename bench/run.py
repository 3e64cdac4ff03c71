"""HaloTrack benchmark: the same load against the upstream, HaloTrack, a bare aiohttp proxy and nginx.

    python bench/run.py                          # `make bench`: issue 16's scenarios, about 8 minutes
    python bench/run.py --scenario page,returning --rates none --rounds 3    # saturation only
    python bench/run.py --workers 1,2 --scenario returning,new_visitor       # `make bench-scaling`
    python bench/run.py --no-append              # print only; leave docs/performance.md alone

Targets, all in front of the same origin (`bench/upstream.py`, a ~4 KiB HTML page, and a gzipped 30 KiB one for
the injection scenarios):
  (a) upstream   the origin itself, no proxy;
  (b) halotrack  `halo-proxy serve --workers N --log-level WARNING` on a generated tenant YAML;
  (c) bare       `bench/bare_proxy.py`, the smallest fair aiohttp streaming proxy (the baseline);
  (d) nginx      nginx with N workers, `proxy_pass` with keep-alive to the origin (skipped when not installed).

Each scenario is measured twice over. First at saturation: closed loop (wrk, a fixed number of connections sending
as fast as answers come), throughput and CPU per request. Then at fixed rates, 25, 50 and 75 % of HaloTrack's
saturation in that scenario, the same absolute rates for every target: open loop (`bench/openloop.c`), latency
p50/p99/p99.9 from each request's intended send time, so a stall is not hidden by coordinated omission. A lead
scenario's 201 answers are compared with the conversions in HaloTrack's database afterwards.

Fairness: one process per proxy (N with --workers); with two or more CPUs the proxies share one CPU and the origin,
the load generators and this script another (a scaling run pins nothing); the same generator and connection count
for every target; each measurement preceded by a warm-up; targets measured in a rotating order, the median of the
saturation rounds reported. Every process started here is stopped on exit, error or Ctrl+C. See
docs/performance.md for how to read the figures.
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
import openloop  # noqa: E402
import results  # noqa: E402
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
LABELS = results.LABELS


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


def halo_data_dir(tmp: Path) -> Path:
    return tmp / "halo-data"


def halo_command() -> list[str]:
    script = Path(sys.executable).parent / "halo-proxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "halo_proxy"]


def tenant_yaml(upstream_url: str, extra: dict) -> str:
    tenant = {"id": TENANT_ID, "hosts": [HOST], "upstream": upstream_url} | extra
    # JSON is YAML: no YAML library needed to write it.
    return "# HaloTrack benchmark tenant, written by bench/run.py\n" + json.dumps({"tenants": [tenant]}, indent=2)


PROBE_PATH = "/__openloop_probe"  # answered by nginx itself: the generator's ceiling is measured there


def nginx_conf(tmp: Path, port: int, upstream_port: int, workers: int = 1) -> str:
    reuseport = " reuseport" if workers > 1 else ""
    return f"""# nginx benchmark target, written by bench/run.py
worker_processes {workers};
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
        listen {LOOPBACK}:{port}{reuseport};
        location = {PROBE_PATH} {{ return 204; }}
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
                  tenant_extra: dict, webhook_secret: str, workers: int = 1) -> tuple[dict[str, int], int]:
    """Start the origin and every wanted target, each proxy with `workers` processes; return {target: port} and
    the origin's port. HaloTrack runs the code of this tree (PYTHONPATH), whatever the virtualenv installed."""
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
        data_dir = halo_data_dir(tmp)
        data_dir.mkdir()
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, HALO_DATA_DIR=str(data_dir), HALO_SECRET_KEY=secrets.token_hex(32),
                   HALO_BENCH_WEBHOOK_SECRET=webhook_secret, PYTHONPATH=pythonpath)
        env.pop("HALO_DATABASE_URL", None)
        procs.start("halotrack", halo_command() + [
            "--log-level", "WARNING", "serve", "--config", str(config), "--host", LOOPBACK, "--port", str(port),
            "--metrics-port", str(metrics_port), "--workers", str(workers)], layout.proxy_cpus, env,
            marker=str(data_dir))
        ports["halotrack"] = port
        procs.metrics_ports["halotrack"] = metrics_port
    if "bare" in wanted:
        port = free_port()
        procs.start("bare", [sys.executable, str(BENCH / "bare_proxy.py"), "--host", LOOPBACK, "--port", str(port),
                             "--upstream", up_url, "--processes", str(workers)], layout.proxy_cpus)
        ports["bare"] = port
    if "nginx" in wanted:
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_conf(tmp, port, up_port, workers))
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
    counted_all: int = 0    # answers with the plan's count_status, warm-up included

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

    # The most requests a fresh pool holds for one wrk run: its Lua script keeps two string constants per request
    # and LuaJIT allows 65,536 in one chunk. 6,000 a second is more than HaloTrack answers leads at on one core.
    FRESH_POOL_MAX = 30_000

    def run(self, plan: scenarios.RequestPlan, port: int, seconds: int) -> loadgen.Result:
        self.runs += 1
        url = f"http://{LOOPBACK}:{port}"
        plan = plan.for_run(min(self.FRESH_POOL_MAX, 6000 * max(1, seconds)))
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
    warm_counted = 0
    if warmup > 0:
        warm_counted = gen.run(plan, port, warmup).counted
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
                       100 * (cpu1[1] - cpu0[1]) / result.seconds, cpu2 - cpu0[0], grown,
                       warm_counted + result.counted)


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
    def counted_rps(self) -> float:
        """Answers with the plan's count_status per second (a lead's 201: committed), median over the rounds."""
        return statistics.median(m.result.counted / m.result.seconds for m in self.rounds)

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
        if not parts and scenarios.SCENARIOS[name].targets == ("halotrack",):
            parts.append(f"HaloTrack only: **{halo.counted_rps:.0f}** counted answers (201 Created) per second, "
                         "median over the rounds")
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

Figures appended by `bench/run.py` (`make bench`), `bench/soak.py` and the other benchmarks in `bench/`; each
script's opening docstring says what it runs and how to read it.
"""


def append_doc(section: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else DOC_INTRO
    DOC.write_text(text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")


def display_command(script: str = "bench/run.py") -> str:
    exe = Path(sys.executable)
    try:
        exe_text = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else "python"
    except ValueError:
        exe_text = "python"
    return shlex.join([exe_text, script, *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------------------
# Main.


DEFAULT_SCENARIOS = "returning,new_visitor,injected,lead"   # issue 16's set: `make bench`
FRACTIONS = "0.25,0.5,0.75"     # fixed rates, as fractions of HaloTrack's saturation in each scenario
PLOT_DIR = ROOT / "docs" / "perf"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark HaloTrack against the upstream, a bare aiohttp proxy "
                                                 "and nginx: throughput at saturation, then latency at fixed "
                                                 "rates.")
    parser.add_argument("--duration", type=int, default=4, help="seconds per saturation measurement (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each (default 1)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="saturation rounds, each measuring every target (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop connections (default 32)")
    parser.add_argument("--scenario", default=DEFAULT_SCENARIOS,
                        help=f"comma-separated, or 'all': {', '.join(scenarios.SCENARIOS)} "
                             f"(default {DEFAULT_SCENARIOS})")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="closed-loop generator (default: wrk when installed)")
    parser.add_argument("--rates", default=FRACTIONS,
                        help=f"fixed rates as fractions of HaloTrack's saturation, comma-separated, or 'none' "
                             f"(default {FRACTIONS})")
    parser.add_argument("--rate-duration", type=float, default=5.0,
                        help="measured seconds per fixed-rate point (default 5)")
    parser.add_argument("--rate-warmup", type=float, default=1.0,
                        help="seconds at the rate before measuring (default 1)")
    parser.add_argument("--rate-connections", type=int, default=64,
                        help="open-loop connections (default 64)")
    parser.add_argument("--workers", default="1",
                        help="processes per proxy, comma-separated for a scaling run (default 1; '1,2' measures "
                             "both, unpinned)")
    parser.add_argument("--no-check", action="store_true", help="skip the generator's accuracy check")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--db-with-proxy", action="store_true",
                        help="leave HaloTrack's embedded PostgreSQL on the proxy's CPU (default: the origin's CPU)")
    parser.add_argument("--no-append", action="store_true",
                        help="do not append to docs/performance.md (the plot and figures go to the temp dir)")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 30 or not 1 <= args.rounds <= 10:
        parser.error("--duration must be 1..120, --warmup 0..30, --rounds 1..10")
    if not 1 <= args.connections <= 4096 or not 1 <= args.rate_connections <= 1024:
        parser.error("--connections must be 1..4096, --rate-connections 1..1024")
    if not 0.5 <= args.rate_duration <= 60 or not 0 <= args.rate_warmup <= 10:
        parser.error("--rate-duration must be 0.5..60, --rate-warmup 0..10")
    names = list(scenarios.SCENARIOS) if args.scenario == "all" else [s for s in args.scenario.split(",") if s]
    unknown = [s for s in names if s not in scenarios.SCENARIOS]
    if unknown or not names:
        parser.error(f"unknown scenario {unknown}; known: {', '.join(scenarios.SCENARIOS)}")
    args.scenarios = names
    targets = [t for t in args.targets.split(",") if t]
    if any(t not in TARGETS for t in targets) or not targets:
        parser.error(f"--targets must name some of {','.join(TARGETS)}")
    args.target_list = [t for t in TARGETS if t in targets]
    try:
        args.fractions = () if args.rates == "none" else tuple(float(f) for f in args.rates.split(",") if f)
        args.worker_counts = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        parser.error("--rates takes fractions such as 0.25,0.5 and --workers counts such as 1,2")
    if any(not 0 < f <= 2 for f in args.fractions) or not args.worker_counts or \
            any(not 1 <= w <= 8 for w in args.worker_counts):
        parser.error("--rates must be in (0, 2], --workers 1..8")
    return args


# ---------------------------------------------------------------------------------------------------------
# Fixed rates.


class OpenLoop:
    """The open-loop generator (`bench/openloop.c`), built once per run, pinned to the generator CPU."""

    def __init__(self, tmp: Path, layout: Layout, connections: int, duration: float, warmup: float):
        self.binary = openloop.build(tmp)
        self.tmp = tmp
        self.layout = layout
        self.connections = connections
        self.duration = duration
        self.warmup = warmup
        self.runs = 0
        self.seed_base = random.randrange(10**12, 9 * 10**12)

    def run(self, plan: scenarios.RequestPlan, port: int, rate: float, duration: float | None = None,
            warmup: float | None = None) -> openloop.OpenResult:
        duration = self.duration if duration is None else duration
        warmup = self.warmup if warmup is None else warmup
        self.runs += 1
        total, _ = openloop.schedule(rate, warmup, duration)
        planned = plan.for_run(total + 16)
        spec = openloop.write_requests(planned, self.tmp / f"open-{self.runs}.bin", total + 16)
        try:
            return openloop.run(self.binary, spec, port, rate, duration, warmup, self.connections,
                                seed=self.seed_base + self.runs * 10**8, count_status=planned.count_status,
                                preexec_fn=openloop.prioritised(self.layout.gen_cpus))
        finally:
            spec.path.unlink(missing_ok=True)


def steal_ticks() -> dict[int, int]:
    """Per CPU, the ticks the hypervisor ran something else while this guest wanted the CPU (/proc/stat)."""
    out = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and len(fields) > 7:
                out[int(name[3:])] = int(fields[7])
    except OSError:
        pass
    return out


def measure_rate(ol: OpenLoop, procs: Processes, workers: int, scenario: str, target: str, port: int,
                 plan: scenarios.RequestPlan, fraction: float, rate: int) -> results.RatePoint:
    if not procs.settle():
        print(f"  note: processes still busy {SETTLE_TIMEOUT_S:.0f} s before a fixed-rate run", flush=True)
    cpu0 = procs.cpu_seconds(target), procs.cpu_seconds("upstream")
    steal0 = steal_ticks()
    t0 = time.monotonic()
    result = ol.run(plan, port, rate)
    elapsed = time.monotonic() - t0
    steal1 = steal_ticks()
    cpu1 = procs.cpu_seconds(target), procs.cpu_seconds("upstream")
    ticks = os.sysconf("SC_CLK_TCK")
    steal = {cpu: 100 * (steal1[cpu] - steal0.get(cpu, 0)) / ticks / elapsed for cpu in steal1}
    return results.RatePoint(workers, scenario, target, fraction, rate, result,
                             100 * (cpu1[0] - cpu0[0]) / elapsed, 100 * (cpu1[1] - cpu0[1]) / elapsed, steal)


def check_generator(ol: OpenLoop, gen_kind: str, tmp: Path, layout: Layout, ports: dict[str, int],
                    plan: scenarios.RequestPlan) -> results.GeneratorCheck:
    """The open-loop generator's own accuracy. On the upstream and on nginx's own 204 (nothing proxied): wrk with
    one connection (closed loop, back to back) against the open loop at a low rate; then the open loop at a rate far
    above any target's saturation (its ceiling)."""
    check = results.GeneratorCheck()
    probe = scenarios.RequestPlan(scenarios.Request("GET", PROBE_PATH, (("Host", HOST),)))
    places = [("upstream", plan, ports["upstream"])]
    if "nginx" in ports:
        places.append(("nginx's own 204", probe, ports["nginx"]))
    else:
        check.notes.append("nginx is not installed: no check on a C server, no ceiling")
    for where, p, port in places:
        if gen_kind == "wrk":
            closed = Generator("wrk", tmp, layout, 1).run(p, port, 3)
            check.rows.append(results.CheckRow(where, "wrk, 1 connection, closed loop", closed.rps,
                                               closed.p50_ms, closed.p99_ms, None, None))
        low = ol.run(p, port, 200, duration=3, warmup=0.5)
        check.rows.append(results.CheckRow.of(where, "open loop", low))
    if "nginx" in ports:
        high = ol.run(probe, ports["nginx"], CEILING_RATE, duration=2, warmup=0.5)
        check.rows.append(results.CheckRow.of("nginx's own 204", "open loop, ceiling", high))
    return check


CEILING_RATE = 20_000


# ---------------------------------------------------------------------------------------------------------
# Lead webhooks: every 201 a committed row.


def count_conversions(data_dir: Path) -> int | None:
    """Conversions of the bench tenant in HaloTrack's embedded PostgreSQL under `data_dir`, or None when it
    cannot be reached."""
    import asyncpg

    try:
        lines = (data_dir / "pg" / "postmaster.pid").read_text().splitlines()
        port, socket_dir = int(lines[3]), lines[4].strip()
    except (OSError, IndexError, ValueError):
        return None

    async def count() -> int:
        conn = await asyncpg.connect(host=socket_dir, port=port, user="postgres", database="postgres", timeout=10)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM conversions WHERE tenant_id = $1", TENANT_ID))
        finally:
            await conn.close()

    import asyncio

    try:
        return asyncio.run(count())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None


# ---------------------------------------------------------------------------------------------------------
# One pass: every scenario at one process count.


@dataclass
class Pass:
    workers: int
    layout: Layout
    rows: list[Row]
    points: list[results.RatePoint]
    check: results.GeneratorCheck | None
    lead: results.LeadCheck | None
    notes: list[str]


def targets_for(name: str, wanted: list[str]) -> list[str]:
    only = scenarios.SCENARIOS[name].targets
    return [t for t in wanted if only is None or t in only]


def run_pass(args: argparse.Namespace, wanted: list[str], gen_kind: str, layout: Layout, workers: int,
             with_check: bool) -> Pass:
    tenant_extra = scenarios.tenant_extra(args.scenarios)
    webhook_secret = secrets.token_hex(32)
    rows: list[Row] = []
    points: list[results.RatePoint] = []
    notes: list[str] = []
    check = lead = None
    with tempfile.TemporaryDirectory(prefix="halo-bench-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp)
        try:
            print(f"--- {workers} process{'es' if workers > 1 else ''} per proxy; {layout.describe()}", flush=True)
            ports, _ = start_targets(procs, tmp, wanted, layout, tenant_extra, webhook_secret, workers)
            ctx = scenarios.Context(
                host=HOST,
                halo_url=f"http://{LOOPBACK}:{ports['halotrack']}" if "halotrack" in ports else None,
                cookie_name=COOKIE_NAME, webhook_secret=webhook_secret)
            gen = Generator(gen_kind, tmp, layout, args.connections)
            ol = OpenLoop(tmp, layout, args.rate_connections, args.rate_duration, args.rate_warmup) \
                if args.fractions or with_check else None
            plans: dict[str, scenarios.RequestPlan] = {}
            for name in args.scenarios:
                planned = scenarios.SCENARIOS[name].plan(ctx)
                if isinstance(planned, str):
                    print(f"{name}: n/a ({planned})", flush=True)
                    rows += [Row(name, t, [], na=planned) for t in targets_for(name, wanted)]
                else:
                    plans[name] = planned.with_host(HOST)
            if with_check and ol is not None:
                check_plan = scenarios.RequestPlan(scenarios.Request("GET", "/page",
                                                                     scenarios.BROWSER_PAGE_HEADERS))
                check = check_generator(ol, gen_kind, tmp, layout, ports, check_plan.with_host(HOST))
                print("\n".join(results.check_lines(check)), flush=True)
            data_dir = halo_data_dir(tmp)
            leads_before = count_conversions(data_dir) if "lead" in plans else None
            created = slack = 0

            # Saturation, closed loop.
            for name, plan in plans.items():
                names = targets_for(name, wanted)
                measured: dict[str, list[Measurement]] = {t: [] for t in names}
                for rnd in range(args.rounds):
                    order = names[rnd % len(names):] + names[:rnd % len(names)]
                    for target in order:
                        m = measure(gen, procs, target, ports[target], plan, args.warmup, args.duration)
                        measured[target].append(m)
                        if plan.count_status:
                            created += m.counted_all
                            slack += 2 * args.connections   # the warm-up's run and the measurement's
                        r = m.result
                        err = f"  errors {r.errors} ({r.error_detail})" if r.errors else ""
                        err += "".join(f"  {k} +{v:.0f}" for k, v in m.counters.items())
                        extra = f"  {r.counted / r.seconds:6.0f} {plan.count_status}/s" if plan.count_status else ""
                        print(f"{name:<12} round {rnd + 1}/{args.rounds}  {LABELS[target]:<24} {r.rps:8.0f} req/s  "
                              f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  cpu {m.cpu_target:3.0f} % "
                              f"({m.cpu_us_per_request:4.0f} µs/req)  origin cpu {m.cpu_upstream:3.0f} %{extra}{err}",
                              flush=True)
                rows += [Row(name, t, measured[t]) for t in names]

            # Fixed rates, open loop: the same absolute rates for every target, from HaloTrack's saturation.
            by = {(r.scenario, r.target): r for r in rows if not r.na and r.rounds}
            for name, plan in plans.items() if ol is not None else ():
                halo = by.get((name, "halotrack"))
                if halo is None:
                    continue
                names = targets_for(name, wanted)
                rates = openloop.fixed_rates(halo.rps, args.fractions)
                for i, (fraction, rate) in enumerate(zip(args.fractions, rates, strict=True)):
                    order = names[i % len(names):] + names[:i % len(names)]
                    for target in order:
                        pt = measure_rate(ol, procs, workers, name, target, ports[target], plan, fraction, rate)
                        points.append(pt)
                        if plan.count_status:
                            created += pt.result.counted_all
                        r = pt.result
                        lat = r.latency_us
                        print(f"{name:<12} {rate:6d} req/s ({fraction:4.0%})  {LABELS[target]:<24} answered "
                              f"{r.achieved_rps:7.0f}/s  p50 {lat['p50'] / 1000:7.2f}  p99 {lat['p99'] / 1000:7.2f}  "
                              f"p99.9 {lat['p99_9'] / 1000:7.2f}  max {lat['max'] / 1000:7.2f} ms  lag p99 "
                              f"{r.send_lag_us['p99']:6.0f} µs  cpu {pt.cpu_target:3.0f} %  steal "
                              f"{pt.steal_text}  errors {results.error_text(r)}"
                              + ("  OVERLOADED" if pt.overloaded else ""), flush=True)
            procs.settle()
            if leads_before is not None:
                after = count_conversions(data_dir)
                if after is None:
                    notes.append("lead webhooks: the database could not be read afterwards; committed rows not "
                                 "checked")
                else:
                    lead = results.LeadCheck(leads_before, after, created, slack)
                    print(f"lead webhooks: {created} answered 201, {lead.stored} rows stored: "
                          f"{'agree' if lead.ok else 'DO NOT agree'}", flush=True)
        finally:
            procs.stop_all()
    return Pass(workers, layout, rows, points, check, lead, notes)


def estimate_seconds(args: argparse.Namespace, wanted: list[str]) -> float:
    per_scenario = [len(targets_for(n, wanted)) for n in args.scenarios]
    sat = sum(per_scenario) * args.rounds * (args.warmup + args.duration + 0.8)
    fixed = sum(per_scenario) * len(args.fractions) * (args.rate_warmup + args.rate_duration + 0.8)
    return len(args.worker_counts) * (sat + fixed + 25) + 12


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


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
    if (args.fractions or not args.no_check) and openloop.compiler() is None:
        notes.append("fixed rates: skipped, no C compiler to build bench/openloop.c (apt-get install gcc)")
        args.fractions = ()
        args.no_check = True
    scaling = len(args.worker_counts) > 1
    # Several processes per proxy need both CPUs: a scaling run pins nothing, at every process count alike.
    layout = choose_layout(not args.no_pin and not scaling and args.worker_counts[0] == 1, args.db_with_proxy)
    for note in notes:
        print(note, flush=True)
    print(f"{', '.join(args.scenarios)} at {', '.join(map(str, args.worker_counts))} process(es) per proxy: "
          f"about {estimate_seconds(args, wanted):.0f} s; load average {loadavg()}", flush=True)
    if layout.gen_cpus:
        os.sched_setaffinity(0, layout.gen_cpus)

    started = time.monotonic()
    load_start = loadavg()
    passes = [run_pass(args, wanted, gen_kind, layout, w, with_check=i == 0 and not args.no_check)
              for i, w in enumerate(args.worker_counts)]
    total_s = time.monotonic() - started

    when = dt.datetime.now(dt.UTC)
    stamp = when.strftime("%Y%m%d-%H%M")
    kind = "scaling" if scaling else "latency"
    plot_dir = PLOT_DIR if not args.no_append else Path(tempfile.gettempdir())
    all_points = [p for ps in passes for p in ps.points]
    plot_path = results.plot(all_points, plot_dir / f"{stamp}-{kind}.png",
                             f"HaloTrack bench {when:%Y-%m-%d %H:%M} UTC: latency from intended send time "
                             f"at fixed rates") if all_points else None

    lines = [f"## {when:%Y-%m-%d %H:%M} UTC: {', '.join(args.scenarios)}"
             + (f", {' and '.join(map(str, args.worker_counts))} processes per proxy" if scaling else ""), ""]
    lines += machine_lines(gen_kind, layout, "nginx" in wanted)
    lines += [f"- Command: `{display_command()}` (saturation: {args.rounds} rounds x {args.duration} s after "
              f"{args.warmup} s warm-up, {args.connections} connections, medians; fixed rates: "
              f"{', '.join(f'{f:.0%}' for f in args.fractions) or 'none'} of HaloTrack's saturation per scenario, "
              f"{args.rate_duration:g} s after {args.rate_warmup:g} s at the rate, {args.rate_connections} "
              f"connections, one run each)",
              f"- Took {total_s:.0f} s; load average (1, 5, 15 min) {load_start} at the start, {loadavg()} at "
              "the end"]
    lines += [f"- Note: {n}" for n in notes + [n for ps in passes for n in ps.notes]]
    lines += ["- Scenarios:"]
    lines += [f"  - `{name}`: {scenarios.SCENARIOS[name].description}" for name in args.scenarios]
    for ps in passes:
        if scaling:
            lines += ["", f"### {ps.workers} process{'es' if ps.workers > 1 else ''} per proxy", ""]
        if ps.check is not None:
            lines += ["", *results.check_lines(ps.check)]
        lines += ["", "**Saturation** (closed loop, wrk):", "", *table(ps.rows), "", *ratio_lines(ps.rows, args.scenarios)]
        if ps.points:
            lines += ["", "**Fixed rates** (open loop, latency from each request's intended send time; every target at "
                      "the same absolute rates, derived from HaloTrack's saturation):", "", *results.fixed_table(ps.points),
                      "", *results.latency_ratio_lines(ps.points)]
        if ps.workers == 1:
            lines += ["", "**Issue 16's targets**:", "", *results.goal_lines(ps.rows, ps.points, ps.lead)]
    if scaling:
        lines += ["", "**Scaling** (saturation; CPU is the target's processes' CPU time during the measurement, "
                  "100 % = one core; req/s per core = req/s ÷ that CPU):", "",
                  *results.scaling_table({ps.workers: ps.rows for ps in passes}, args.scenarios)]
    if plot_path is not None:
        rel = plot_path.relative_to(DOC.parent) if plot_path.is_relative_to(DOC.parent) else plot_path
        lines += ["", f"![latency percentiles against rate]({rel})"]
    section = "\n".join(lines)
    print("\n" + section, flush=True)
    if any(r.errors for ps in passes for r in ps.rows) or any(p.errors for p in all_points):
        print("\nwarning: some requests failed; see the errors columns", flush=True)
    if not args.no_append:
        append_doc(section)
        print(f"\nappended to {DOC.relative_to(ROOT)}" + (f"; plot {plot_path.relative_to(ROOT)}" if plot_path else ""),
              flush=True)
    elif plot_path is not None:
        print(f"\nplot: {plot_path}", flush=True)
    print(f"total {total_s:.0f} s", flush=True)
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
    except (BenchError, openloop.OpenLoopError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
