"""Tables, goals and the plot of a `bench/run.py` run: latency at fixed rates, issue 16's targets, scaling.

Pure formatting over the measurements `bench/run.py` made; the only side effect is `plot`, which writes a PNG with
matplotlib (the `bench` extra). Figures are printed as measured: nothing here rounds a miss into a pass.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

LABELS = {
    "upstream": "(a) upstream direct",
    "halotrack": "(b) HaloTrack",
    "bare": "(c) bare aiohttp proxy",
    "nginx": "(d) nginx proxy_pass",
}
COLOURS = {"upstream": "#555555", "halotrack": "#d62728", "bare": "#1f77b4", "nginx": "#2ca02c"}

# Issue 16's targets, one worker each, measured in the same run.
GOAL_RETURNING_VS_NGINX = 0.5
GOAL_NEW_VS_RETURNING = 0.8
GOAL_P99_ADDED_MS = 1.0
GOAL_LEADS_PER_S = 2000.0


@dataclass
class RatePoint:
    """One target measured at one fixed rate by the open-loop generator."""

    workers: int
    scenario: str
    target: str
    fraction: float            # of HaloTrack's saturation in this scenario
    rate: int                  # requests per second scheduled
    result: object             # openloop.OpenResult
    cpu_target: float          # percent of one CPU the target used during the run
    cpu_upstream: float
    steal: dict[int, float] = field(default_factory=dict)   # per CPU, percent of the run stolen by the hypervisor

    @property
    def steal_text(self) -> str:
        return "/".join(f"{self.steal[c]:.1f}" for c in sorted(self.steal)) + " %" if self.steal else "n/a"

    @property
    def overloaded(self) -> bool:
        """The target fell behind the schedule: at least 1 % of the requests waited over 50 ms for a free
        connection (all 64 busy), or some were never answered. Its latencies are then mostly the queue's."""
        r = self.result
        return r.send_lag_us["p99"] > 50_000 or r.unsent > 0 or r.timeouts > 0  # type: ignore[attr-defined]

    @property
    def errors(self) -> int:
        return self.result.errors  # type: ignore[attr-defined]

    def ms(self, key: str) -> float:
        return self.result.ms(key)  # type: ignore[attr-defined]


@dataclass
class LeadCheck:
    """Conversions committed against the 201 answers the generators counted over every lead run."""

    rows_before: int
    rows_after: int
    created: int               # 201 answers, warm-ups included
    slack: int                 # requests a closed-loop run may have left in flight when it stopped

    @property
    def stored(self) -> int:
        return self.rows_after - self.rows_before

    @property
    def ok(self) -> bool:
        return self.created > 0 and self.created <= self.stored <= self.created + self.slack


@dataclass
class CheckRow:
    where: str
    how: str
    rps: float
    p50_ms: float
    p99_ms: float
    p99_9_ms: float | None
    result: object | None      # openloop.OpenResult for the open-loop rows

    @classmethod
    def of(cls, where: str, how: str, r) -> CheckRow:  # type: ignore[no-untyped-def]
        return cls(where, f"{how} at {r.rate:.0f} req/s", r.achieved_rps, r.ms("p50"), r.ms("p99"),
                   r.ms("p99_9"), r)


@dataclass
class GeneratorCheck:
    rows: list[CheckRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------------------
# Tables.


def check_lines(check: GeneratorCheck) -> list[str]:
    """What the open-loop generator itself costs and how closely it keeps its schedule."""
    out = ["**The open-loop generator's own accuracy** (`bench/openloop.c`, on the origin's CPU; send lag = actual "
           "minus intended send time):", "",
           "| target | generator | answered req/s | p50 ms | p99 ms | p99.9 ms | send lag p50 / p99 / p99.9 µs | "
           "errors | generator CPU µs/req |",
           "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for row in check.rows:
        r = row.result
        if r is None:
            out.append(f"| {row.where} | {row.how} | {row.rps:.0f} | {row.p50_ms:.3f} | {row.p99_ms:.3f} | | | | |")
            continue
        lag = r.send_lag_us  # type: ignore[attr-defined]
        out.append(f"| {row.where} | {row.how} | {row.rps:.0f} | {row.p50_ms:.3f} | {row.p99_ms:.3f} | "
                   f"{fmt(row.p99_9_ms, 3)} | {lag['p50']:.0f} / {lag['p99']:.0f} / {lag['p99_9']:.0f} | "
                   f"{error_text(r)} | {r.cpu_us_per_request:.0f} |")  # type: ignore[attr-defined]
    out += [f"- {n}" for n in check.notes]
    return out


def fixed_table(points: list[RatePoint]) -> list[str]:
    out = ["| scenario | rate req/s (of HaloTrack's saturation) | target | answered req/s | p50 ms | p99 ms | "
           "p99.9 ms | max ms | errors | send lag p99 µs | generator CPU µs/req | target CPU | steal per CPU |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        r = p.result
        mark = " **(overloaded)**" if p.overloaded else ""
        out.append(f"| {p.scenario} | {p.rate} ({p.fraction:.0%}) | {LABELS[p.target]}{mark} | "
                   f"{r.achieved_rps:.0f} | {p.ms('p50'):.2f} | {p.ms('p99'):.2f} | {p.ms('p99_9'):.2f} | "  # type: ignore[attr-defined]
                   f"{p.ms('max'):.2f} | {error_text(r)} | {r.send_lag_us['p99']:.0f} | "  # type: ignore[attr-defined]
                   f"{r.cpu_us_per_request:.0f} | {p.cpu_target:.0f} % | "  # type: ignore[attr-defined]
                   f"{p.steal_text} |")
    return out


def error_text(r) -> str:  # type: ignore[no-untyped-def]
    if not r.errors:
        return "0"
    kinds = {"status": r.status_errors, "read": r.read_errors, "write": r.write_errors,
             "connect": r.connect_errors, "timeout": r.timeouts, "unsent": r.unsent}
    return f"{r.errors} (" + ", ".join(f"{k} {v}" for k, v in kinds.items() if v) + ")"


def added_latency(points: list[RatePoint], scenario: str, fraction: float, key: str = "p99",
                  workers: int = 1, target: str = "halotrack") -> float | None:
    """A proxy's latency percentile minus the direct upstream's, at the same rate of the same run."""
    by = {(p.target, p.fraction): p for p in points if p.scenario == scenario and p.workers == workers}
    halo, up = by.get((target, fraction)), by.get(("upstream", fraction))
    if halo is None or up is None:
        return None
    return halo.ms(key) - up.ms(key)


def goal_lines(rows, points: list[RatePoint], lead: LeadCheck | None) -> list[str]:  # type: ignore[no-untyped-def]
    """Issue 16's targets against this run's figures (one worker each)."""
    by = {(r.scenario, r.target): r for r in rows if not r.na and r.rounds}
    out = ["| target (issue 16, one worker each) | goal | this run | met |", "|---|---|---|---|"]

    def ratio(a, b) -> float | None:  # type: ignore[no-untyped-def]
        return a.rps / b.rps if a is not None and b is not None and b.rps else None

    def met(value: float | None, ok: bool) -> str:
        return "n/a" if value is None else ("**met**" if ok else "**NOT met**")

    r = ratio(by.get(("returning", "halotrack")), by.get(("returning", "nginx")))
    out.append(f"| returning visitor / nginx, req/s at saturation | ≥ {GOAL_RETURNING_VS_NGINX:.2f}× | {fmt(r)}× | "
               f"{met(r, r is not None and r >= GOAL_RETURNING_VS_NGINX)} |")
    r = ratio(by.get(("new_visitor", "halotrack")), by.get(("returning", "halotrack")))
    out.append(f"| new visitor / returning visitor, req/s at saturation | ≥ {GOAL_NEW_VS_RETURNING:.2f}× | "
               f"{fmt(r)}× | {met(r, r is not None and r >= GOAL_NEW_VS_RETURNING)} |")
    for scenario in ("returning", "new_visitor", "injected"):
        added = added_latency(points, scenario, 0.5)
        if added is None:
            continue
        floor = added_latency(points, scenario, 0.5, target="nginx")
        same = "" if floor is None else f" (nginx at the same rate: {floor:+.2f} ms)"
        out.append(f"| p99 added over the direct upstream at 50 % of saturation, `{scenario}` | ≤ "
                   f"{GOAL_P99_ADDED_MS:.1f} ms | {added:+.2f} ms{same} | "
                   f"{met(added, added <= GOAL_P99_ADDED_MS)} |")
    lead_row = by.get(("lead", "halotrack"))
    if lead_row is not None:
        committed = lead_row.counted_rps
        checked = "" if lead is None else (f" ({lead.created} answered 201, {lead.stored} rows stored: "
                                          f"{'agree' if lead.ok else 'DO NOT agree'})")
        ok = committed >= GOAL_LEADS_PER_S and (lead is None or lead.ok)
        out.append(f"| signed lead webhooks committed per second | ≥ {GOAL_LEADS_PER_S:,.0f}/s | "
                   f"{committed:,.0f}/s{checked} | {met(committed, ok)} |")
    return out


def latency_ratio_lines(points: list[RatePoint]) -> list[str]:
    """HaloTrack's latency against each baseline at the same rate, per scenario and rate."""
    out = []
    groups: dict[tuple[int, str, float], dict[str, RatePoint]] = {}
    for p in points:
        groups.setdefault((p.workers, p.scenario, p.fraction), {})[p.target] = p
    for (_, scenario, fraction), by in groups.items():
        halo = by.get("halotrack")
        if halo is None:
            continue
        parts = []
        for other in ("upstream", "bare", "nginx"):
            o = by.get(other)
            if o is None:
                continue
            parts.append(f"over {other} p50 {halo.ms('p50') - o.ms('p50'):+.2f} ms, p99 "
                         f"{halo.ms('p99') - o.ms('p99'):+.2f} ms, p99.9 {halo.ms('p99_9') - o.ms('p99_9'):+.2f} ms")
        if parts:
            out.append(f"- `{scenario}` at {halo.rate} req/s ({fraction:.0%}): HaloTrack " + "; ".join(parts))
    return out


def scaling_table(rows_by_workers: dict[int, list], scenario_names: Iterable[str]) -> list[str]:  # type: ignore[type-arg]
    counts = sorted(rows_by_workers)
    if len(counts) < 2:
        return []
    head = "| scenario | target | " + " | ".join(f"req/s, {w} proc." for w in counts)
    head += " | growth | " + " | ".join(f"CPU, {w} proc." for w in counts)
    head += " | " + " | ".join(f"req/s per core, {w} proc." for w in counts)
    head += " | " + " | ".join(f"CPU µs/req, {w} proc." for w in counts) + " |"
    cols = 3 + 4 * len(counts)
    out = [head, "|" + "---|" * 2 + "---:|" * (cols - 2)]
    for scenario in scenario_names:
        for target in ("halotrack", "bare", "nginx", "upstream"):
            cells = {}
            for w in counts:
                row = next((r for r in rows_by_workers[w] if r.scenario == scenario and r.target == target
                            and not r.na and r.rounds), None)
                if row is not None:
                    cells[w] = row
            if len(cells) < len(counts):
                continue
            rps = [cells[w].rps for w in counts]
            cpu = [statistics.median(m.cpu_target for m in cells[w].rounds) for w in counts]
            per_core = [r / (c / 100) if c else float("nan") for r, c in zip(rps, cpu, strict=True)]
            growth = rps[-1] / rps[0] if rps[0] else float("nan")
            out.append(f"| {scenario} | {LABELS[target]} | " + " | ".join(f"{r:.0f}" for r in rps)
                       + f" | {growth:.2f}× | " + " | ".join(f"{c:.0f} %" for c in cpu)
                       + " | " + " | ".join(f"{p:.0f}" for p in per_core)
                       + " | " + " | ".join(f"{cells[w].cpu_us:.0f}" for w in counts) + " |")
    return out


# ---------------------------------------------------------------------------------------------------------
# The plot.


def plot(points: list[RatePoint], path: Path, title: str) -> Path | None:
    """Latency percentiles (p50, p99, p99.9; log scale) against the fixed rate, one panel per scenario and
    worker count, one colour per target. Returns the path, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((p.workers, p.scenario) for p in points))
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    styles = (("p50", "-", "o"), ("p99", "--", "s"), ("p99_9", ":", "^"))
    for ax, (workers, scenario) in zip(axes.flat, panels, strict=False):
        mine = [p for p in points if p.workers == workers and p.scenario == scenario]
        for target in LABELS:
            series = sorted((p for p in mine if p.target == target), key=lambda p: p.rate)
            if not series:
                continue
            for key, line, marker in styles:
                ax.plot([p.rate for p in series], [max(p.ms(key), 1e-3) for p in series], line, marker=marker,
                        color=COLOURS[target], markersize=4, linewidth=1.4,
                        label=f"{LABELS[target]} {key.replace('_', '.')}")
        ax.set_yscale("log")
        ax.set_xlabel("fixed rate, requests per second")
        ax.set_ylabel("latency from intended send time, ms")
        ax.set_title(f"{scenario}, {workers} process{'es' if workers > 1 else ''} per proxy", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    shrink(path)
    return path


def shrink(path: Path) -> None:
    """Re-save a plot with a 128-colour palette: a quarter of the size, the same picture."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
