"""Where HaloTrack's CPU goes under load: py-spy samples the worker while wrk saturates it, one scenario at a time.

    .venv/bin/python bench/hotpath.py                          # returning, new_visitor, lead; ~1.5 minutes
    .venv/bin/python bench/hotpath.py --scenario returning --seconds 20 --native

The targets are started as `bench/run.py` starts them (the origin and `halo-proxy serve --workers 1`, pinned the
same way); each scenario gets a 2 s warm-up, then py-spy (`--nonblocking`, so the worker is never paused; `--native`
pauses it at each sample to read C frames too) records for `--seconds` while wrk keeps 32 connections busy. For each scenario it writes, under `--out` (default
docs/perf/):

  profile-<scenario>.txt   the top frames by own time and by inclusive time, and own time by package
  profile-<scenario>.svg   py-spy's flame graph of a second, shorter recording (with --svg)

Only the top-N summaries are meant to be committed; the raw collapsed stacks stay in the temp directory.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as harness  # noqa: E402
import scenarios  # noqa: E402

OUT = harness.ROOT / "docs" / "perf"
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    return found


def short_file(path: str) -> str:
    """A frame's file without the machine's prefixes: `halo_proxy/edge/proxy.py`, `aiohttp/web_protocol.py`."""
    for marker in ("site-packages/", "/lib/python3.", str(harness.ROOT) + "/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker.startswith("/lib/python3.") else tail
    return path


def package_of(file: str) -> str:
    """The package a frame's file belongs to: `halo_proxy.edge`, `aiohttp`, `asyncio`, a native library..."""
    if file.endswith((".so", ".so.6")) or ".so." in file:
        return f"native: {file.rsplit('/', 1)[-1]}"
    parts = short_file(file).split("/")
    if parts[0] == "halo_proxy" and len(parts) > 2:
        return f"halo_proxy.{parts[1]}"
    return parts[0].removesuffix(".py")


def parse_raw(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy's `--format raw` (collapsed stacks: `frame;frame;...;leaf count`) as [(frames, count)], each frame
    (function, short file)."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            m = FRAME.match(raw)
            frames.append((m["func"], short_file(m["file"])) if m else (raw, ""))
        out.append((frames, int(count)))
    return out


def summary(stacks: list[tuple[list[tuple[str, str]], int]], top: int) -> list[str]:
    total = sum(c for _, c in stacks)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        func, file = frames[-1]
        own[f"{func} ({file})"] += count
        packages[package_of(file)] += count
        for name in {f"{f} ({fl})" for f, fl in frames}:
            inclusive[name] += count

    def block(title: str, counter: Counter[str]) -> list[str]:
        lines = [title]
        for name, count in counter.most_common(top):
            lines.append(f"  {100 * count / total:5.1f} %  {count:6d}  {name}")
        return lines

    return [f"samples: {total}", "", *block("own time, by package of the innermost frame:", packages), "",
            *block(f"own time, top {top} frames:", own), "", *block(f"inclusive time, top {top} frames:", inclusive)]


def record(spy: str, pid: int, seconds: float, rate: int, out: Path, fmt: str, native: bool,
           cpus: set[int] | None) -> subprocess.Popen:
    argv = [spy, "record", "--pid", str(pid), "--duration", f"{seconds:g}", "--rate", str(rate), "--format", fmt,
            "--output", str(out)]
    # Native stacks need the worker paused at each sample (py-spy refuses them otherwise): they cost it some
    # throughput, so the plain profile never pauses it.
    argv.append("--native" if native else "--nonblocking")

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=pin)


def sampled_worker(procs: harness.Processes, workers: int) -> int:
    """The process py-spy samples: HaloTrack itself with one worker, else its first worker (a child of the
    supervisor running the same interpreter)."""
    leader = procs.procs["halotrack"].pid
    if workers == 1:
        return leader
    table = harness.scan_processes()
    children = sorted(p.pid for p in table.values()
                      if p.ppid == leader and harness.cmdline_has(p.pid, "serve"))
    if not children:
        raise SystemExit("no HaloTrack worker found under the supervisor")
    return children[0]


def split_cpu(procs: harness.Processes, pid: int) -> tuple[float, float]:
    """CPU seconds of the worker itself and of everything else it runs (its embedded PostgreSQL)."""
    owned = procs.owned("halotrack")
    tick = os.sysconf("SC_CLK_TCK")
    worker = sum(p.cpu_ticks for p in owned if p.pid == pid) / tick
    return worker, sum(p.cpu_ticks for p in owned) / tick - worker


def per_req(before: float, after: float, result) -> float:  # type: ignore[no-untyped-def]
    return 1e6 * (after - before) / max(1, result.requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="returning,new_visitor,lead")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of recording per scenario (default 15)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--native", action="store_true", help="include native frames (C extensions, libc)")
    parser.add_argument("--svg", action="store_true", help="also write a flame graph SVG per scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1,
                        help="HaloTrack workers (default 1); with more, nothing is pinned and one worker is sampled")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep-raw", action="store_true", help="also keep py-spy's collapsed stacks in --out")
    args = parser.parse_args()
    names = [s for s in args.scenario.split(",") if s]
    if any(n not in scenarios.SCENARIOS for n in names) or not 1 <= args.seconds <= 120:
        parser.error(f"--scenario from {', '.join(scenarios.SCENARIOS)}; --seconds 1..120")
    spy = py_spy()
    if not 1 <= args.workers <= 8:
        parser.error("--workers must be 1..8")
    layout = harness.choose_layout(args.workers == 1)
    if layout.gen_cpus:
        os.sched_setaffinity(0, layout.gen_cpus)
    tenant_extra = scenarios.tenant_extra(names)
    secret = secrets.token_hex(32)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="halo-profile-") as tmp_name:
        tmp = Path(tmp_name)
        procs = harness.Processes(tmp)
        try:
            ports, _ = harness.start_targets(procs, tmp, ["halotrack"], layout, tenant_extra, secret, args.workers)
            ctx = scenarios.Context(host=harness.HOST, halo_url=f"http://{harness.LOOPBACK}:{ports['halotrack']}",
                                    cookie_name=harness.COOKIE_NAME, webhook_secret=secret)
            gen = harness.Generator("wrk", tmp, layout, args.connections)
            pid = sampled_worker(procs, args.workers)
            for name in names:
                planned = scenarios.SCENARIOS[name].plan(ctx)
                if isinstance(planned, str):
                    print(f"{name}: n/a ({planned})")
                    continue
                plan = planned.with_host(harness.HOST)
                gen.run(plan, ports["halotrack"], 2)
                procs.settle()
                raw = tmp / f"{name}.raw"
                spy_proc = record(spy, pid, args.seconds, args.rate, raw, "raw", args.native, layout.gen_cpus)
                time.sleep(0.5)
                cpu0 = split_cpu(procs, pid)
                result = gen.run(plan, ports["halotrack"], int(args.seconds))
                cpu1 = split_cpu(procs, pid)
                spy_out, _ = spy_proc.communicate(timeout=args.seconds + 60)
                header = [f"HaloTrack profile, scenario `{name}`: {scenarios.SCENARIOS[name].description}",
                          f"py-spy {args.rate} Hz{' --native (pausing it)' if args.native else ' --nonblocking'} on "
                          f"{'the worker' if args.workers == 1 else f'one of {args.workers} workers'} "
                          f"(pid {pid}) while wrk ran {args.connections} connections for {args.seconds:g} s: "
                          f"{result.rps:.0f} req/s; CPU per request {per_req(cpu0[0], cpu1[0], result):.0f} µs in "
                          f"the sampled worker, {per_req(cpu0[1], cpu1[1], result):.0f} µs in the rest (its "
                          f"PostgreSQL{', the other workers and the supervisor' if args.workers > 1 else ''}); "
                          f"{result.errors} errors; "
                          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, HaloTrack at "
                          f"{harness.tool_version(['git', '-C', str(harness.ROOT), 'rev-parse', '--short', 'HEAD'])}",
                          ""]
                if not raw.exists():
                    print(f"{name}: py-spy wrote nothing:\n{spy_out}")
                    continue
                text = "\n".join(header + summary(parse_raw(raw.read_text()), args.top)) + "\n"
                if args.keep_raw:
                    shutil.copy(raw, args.out / f"profile-{name}.raw")
                (args.out / f"profile-{name}.txt").write_text(text)
                print(text)
                if args.svg:
                    svg = args.out / f"profile-{name}.svg"
                    spy_proc = record(spy, pid, min(args.seconds, 8), args.rate, svg, "flamegraph", args.native,
                                      layout.gen_cpus)
                    time.sleep(0.5)
                    gen.run(plan, ports["halotrack"], int(min(args.seconds, 8)))
                    spy_proc.communicate(timeout=args.seconds + 60)
                procs.settle()
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
