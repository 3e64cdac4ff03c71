"""Memory soak: one HaloTrack worker under mixed traffic for `--minutes`, its RSS sampled from /proc.

    .venv/bin/python bench/soak.py --minutes 10          # issue 16's soak, appended to docs/performance.md
    .venv/bin/python bench/soak.py --minutes 1 --no-append

`halo-proxy serve --workers 1` (its embedded PostgreSQL under a temporary HALO_DATA_DIR) in front of
`bench/upstream.py`, pinned as `bench/run.py` pins them (the worker on one CPU; the origin, the database, the
generators and this script on the other). Four open-loop generators (`bench/openloop.c`) run side by side at fixed
rates, restarted every minute so each minute's figures are printed as it ends:

  returning    GET /page with a first visit's cookies (the fast path, no database work)
  new_visitor  GET /page?utm_source=google&utm_medium=cpc&gclid=<n>, no cookie: a new session stored each time
  injected     GET /gz30 as a returning visitor: a 30 KiB gzip page injected once, then answered from the cache
  injected_unique  GET /gz30-unique?v=<n>: every page's bytes differ, so each is decoded, injected and re-encoded,
               and the cache of injected pages keeps filling and evicting (its bound is soaked too)
  lead         signed lead webhooks, each a new conversion committed before its 201

Every `--sample-seconds` the worker's resident set size (VmRSS, /proc/<pid>/status) and its PostgreSQL's (the sum
over its processes, shared buffers counted once per process that touched them) are sampled. The report gives RSS at
the end of the warm-up (`--warmup-minutes`, default 2, traffic as in the soak: the cache of injected pages, the pools
and the interpreter's arenas filled), at the end and the maximum, the slope of a least-squares line over the
samples after the warm-up, and whether it stayed flat over the `--minutes` that follow (the last minute's median
within 5 % of the warm-up's end). Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import openloop  # noqa: E402
import results  # noqa: E402
import run as harness  # noqa: E402
import scenarios  # noqa: E402

FLAT_TOLERANCE = 0.05
TRAFFIC = {  # scenario -> requests per second (about 40 % of one core on the reference machine)
    "returning": 400,
    "new_visitor": 100,
    "injected": 100,
    "injected_unique": 50,
    "lead": 20,
}


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Totals:
    sent: int = 0
    answered: int = 0
    errors: int = 0
    created: int = 0
    p99_ms: list[float] = field(default_factory=list)


def start_chunk(binary: Path, tmp: Path, plans: dict[str, scenarios.RequestPlan], port: int, seconds: float,
                minute: int, cpus: set[int] | None) -> dict[str, tuple[subprocess.Popen, Path]]:
    procs = {}
    for name, plan in plans.items():
        rate = TRAFFIC[name]
        total, _ = openloop.schedule(rate, 0, seconds)
        planned = plan.for_run(total + 16)
        spec = openloop.write_requests(planned, tmp / f"soak-{name}-{minute}.bin", total + 16)
        argv = openloop.command(binary, spec, port, rate, seconds, 0, 16, seed=10**9 * (minute + 1),
                                count_status=planned.count_status)
        procs[name] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=openloop.prioritised(cpus), stdin=subprocess.DEVNULL),
                      spec.path)
    return procs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument("--warmup-minutes", type=float, default=2.0,
                        help="traffic before the soak is judged (default 2): the cache of injected pages, the pools "
                             "and the interpreter's arenas fill in it")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling interval (default 5)")
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/performance.md")
    args = parser.parse_args()
    if not 0.5 <= args.minutes <= 120 or not 0.5 <= args.sample_seconds <= 60 or not 0 <= args.warmup_minutes <= 10:
        parser.error("--minutes must be 0.5..120, --warmup-minutes 0..10, --sample-seconds 0.5..60")
    layout = harness.choose_layout(True)
    if layout.gen_cpus:
        os.sched_setaffinity(0, layout.gen_cpus)
    tenant_extra = scenarios.tenant_extra(TRAFFIC)
    secret = secrets.token_hex(32)
    samples: list[tuple[float, int, int]] = []   # (seconds since start, worker KiB, database KiB)
    totals = {name: Totals() for name in TRAFFIC}
    started_at = dt.datetime.now(dt.UTC)
    load_start = harness.loadavg()
    with tempfile.TemporaryDirectory(prefix="halo-soak-") as tmp_name:
        tmp = Path(tmp_name)
        procs = harness.Processes(tmp)
        try:
            ports, _ = harness.start_targets(procs, tmp, ["halotrack"], layout, tenant_extra, secret)
            port = ports["halotrack"]
            ctx = scenarios.Context(host=harness.HOST, halo_url=f"http://{harness.LOOPBACK}:{port}",
                                    cookie_name=harness.COOKIE_NAME, webhook_secret=secret)
            plans = {}
            for name in TRAFFIC:
                planned = scenarios.SCENARIOS[name].plan(ctx)
                if isinstance(planned, str):
                    raise SystemExit(f"{name}: {planned}")
                plans[name] = planned.with_host(harness.HOST)
            binary = openloop.build(tmp)
            worker = procs.procs["halotrack"].pid
            data_dir = harness.halo_data_dir(tmp)
            rows_before = harness.count_conversions(data_dir) or 0
            t0 = time.monotonic()
            end = t0 + (args.warmup_minutes + args.minutes) * 60
            minute = 0
            print(f"soak: {args.warmup_minutes:g} min of warm-up, then {args.minutes:g} min of {', '.join(f'{n} {r}/s' for n, r in TRAFFIC.items())} against "
                  f"worker {worker}; {layout.describe()}; load average {load_start}", flush=True)
            while time.monotonic() < end - 1:
                seconds = min(60.0, end - time.monotonic())
                chunk = start_chunk(binary, tmp, plans, port, seconds, minute, layout.gen_cpus)
                next_sample = time.monotonic()
                while any(p.poll() is None for p, _ in chunk.values()):
                    now = time.monotonic()
                    if now >= next_sample:
                        db = sum(rss_kib(p.pid) or 0 for p in procs.owned("halotrack") if p.pid != worker)
                        samples.append((now - t0, rss_kib(worker) or 0, db))
                        next_sample += args.sample_seconds
                    time.sleep(min(0.2, max(0.01, next_sample - time.monotonic())))
                line = [f"minute {minute + 1}: worker RSS {samples[-1][1] / 1024:.1f} MiB"]
                for name, (p, path) in chunk.items():
                    out, err = p.communicate()
                    path.unlink(missing_ok=True)
                    if p.returncode != 0:
                        raise SystemExit(f"openloop for {name} exited with {p.returncode}: {err.strip()}")
                    r = openloop.parse(out)
                    t = totals[name]
                    t.sent += r.sent
                    t.answered += r.completed
                    t.errors += r.errors
                    t.created += r.counted_all
                    t.p99_ms.append(r.ms("p99"))
                    line.append(f"{name} {r.achieved_rps:.0f}/s p99 {r.ms('p99'):.1f} ms err {r.errors}")
                print("; ".join(line), flush=True)
                minute += 1
            procs.settle()
            rows_after = harness.count_conversions(data_dir)
        finally:
            procs.stop_all()
    return report(args, samples, totals, rows_before, rows_after, started_at, load_start, layout)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return float("nan")
    xs, ys = [p[0] / 60 for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def report(args: argparse.Namespace, samples: list[tuple[float, int, int]], totals: dict[str, Totals],
           rows_before: int, rows_after: int | None, started_at: dt.datetime, load_start: str,
           layout: harness.Layout) -> int:
    mib = [(t, w / 1024, d / 1024) for t, w, d in samples]
    warm = [s for s in mib if s[0] >= max(args.warmup_minutes, 1 / 60) * 60] or mib
    first = warm[0]
    last_minute = [s[1] for s in warm if s[0] >= mib[-1][0] - 60]
    end_median = statistics.median(last_minute)
    peak = max(mib, key=lambda s: s[1])
    slope = slope_per_minute([(t, w) for t, w, _ in warm])
    half = [s for s in warm if s[0] >= (warm[0][0] + mib[-1][0]) / 2]
    second_half = half[-1][1] - half[0][1] if half else float("nan")
    flat = abs(end_median - first[1]) <= FLAT_TOLERANCE * first[1]
    created = totals["lead"].created
    stored = None if rows_after is None else rows_after - rows_before
    lines = [
        f"## Memory soak, {started_at:%Y-%m-%d %H:%M} UTC: {args.minutes:g} minutes of mixed traffic after "
        f"{args.warmup_minutes:g} of warm-up, one worker",
        "",
        *harness.machine_lines("wrk", layout, False)[:2],
        f"- Command: `{harness.display_command('bench/soak.py')}`; {layout.describe()}; "
        f"load average {load_start} at the start, {harness.loadavg()} at the end",
        "- Traffic (open loop, side by side, restarted each minute): "
        + ", ".join(f"`{n}` {r}/s" for n, r in TRAFFIC.items()),
        "",
        "| traffic | sent | answered | errors | p99 ms per minute (min–max) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, t in totals.items():
        spread = f"{min(t.p99_ms):.1f}–{max(t.p99_ms):.1f}" if t.p99_ms else "n/a"
        lines.append(f"| `{name}` | {t.sent} | {t.answered} | {t.errors} | {spread} |")
    lines += [
        "",
        f"- Worker RSS (VmRSS): **{mib[0][1]:.1f} MiB** at the first sample, **{first[1]:.1f} MiB** after the "
        f"warm-up ({args.warmup_minutes:g} min), **{mib[-1][1]:.1f} MiB** at the end (last minute's median "
        f"{end_median:.1f}), maximum **{peak[1]:.1f} MiB** at {peak[0] / 60:.1f} min; least-squares slope after "
        f"the warm-up "
        f"{slope:+.2f} MiB/min over {len(warm)} samples every {args.sample_seconds:g} s: "
        + ("**flat**" if flat else "**NOT flat**")
        + f" (the last minute's median within {FLAT_TOLERANCE:.0%} of the warm-up's end: "
        f"{end_median - first[1]:+.1f} MiB); over the second half alone {second_half:+.1f} MiB",
        f"- PostgreSQL (sum of its processes' RSS, shared buffers counted in each): {mib[0][2]:.0f} MiB at the "
        f"start, {first[2]:.0f} after the warm-up, {mib[-1][2]:.0f} at the end",
        f"- Leads: {created} answered 201, "
        + (f"{stored} rows stored" if stored is not None else "the database could not be read afterwards"),
    ]
    path = plot_rss(mib, started_at, args.no_append)
    if path is not None:
        rel = path.relative_to(harness.DOC.parent) if path.is_relative_to(harness.DOC.parent) else path
        lines += ["", f"![worker RSS over the soak]({rel})"]
    section = "\n".join(lines)
    print("\n" + section, flush=True)
    if not args.no_append:
        harness.append_doc(section)
        print(f"\nappended to {harness.DOC.relative_to(harness.ROOT)}", flush=True)
    return 0 if stored is None or created <= stored else 1


def plot_rss(mib: list[tuple[float, float, float]], when: dt.datetime, scratch: bool) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(tempfile.gettempdir()) if scratch else harness.PLOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{when:%Y%m%d-%H%M}-soak.png"
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot([t / 60 for t, _, _ in mib], [w for _, w, _ in mib], color="#d62728", label="HaloTrack worker VmRSS")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Memory soak {when:%Y-%m-%d %H:%M} UTC, mixed traffic, one worker", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    results.shrink(path)
    return path


if __name__ == "__main__":
    sys.exit(main())
