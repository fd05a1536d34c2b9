"""Simulated multi-engine serving: program-aware routing vs baselines, and scaling with engines.

1. Throughput at equal latency on K simulated engines (default 4x Llama-3.1-8B/H100, PLAS on
   every engine) for ShareGPT and LATS: ``locality`` vs ``round_robin`` vs ``least_loaded``
   routing, plus locality with the Llumnix load signal. The program arrival rate is swept; the
   latency line is ``--slo-factor`` x the best mean latency per token at the lowest (low-load)
   rate; a routing *sustains* the highest rate whose mean stays under the line (interpolated).
2. Maximum sustainable rate vs engines (1, 2, 4, 8; locality, ShareGPT) under one fixed line:
   ``--slo-factor`` x the 1-engine mean at its low-load rate.

Saturation (NOTE): programs arrive for a fixed window of ``window_s`` seconds (many times the
mean program duration), so the number of programs grows with the rate and a queue builds above
capacity. Latency is measured on the programs arriving in the middle half of the window (past
the warm-up, before the drain). Grids bracket every knee: a curve still under the line at its top
rate is extended (x ``EXTEND``) until it crosses; then each wide bracket gets ``--refine`` extra
runs at the interpolated crossing for a tighter interpolation. Extensions are reported.

    python benchmarks/bench_cluster.py            # ~10 minutes with 2 jobs on the 2-core VM
    python benchmarks/bench_cluster.py --quick    # ~2 minutes: shorter windows, coarser grids
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pyserve.sim.cluster import run_cluster
from pyserve.sim.report import markdown_table, sustained_rate
from pyserve.sim.workloads import generate

VARIANTS = (("locality", "calls"), ("round_robin", "calls"), ("least_loaded", "calls"),
            ("locality", "llumnix"))  # fmt: skip
SCALE_ENGINES = (1, 2, 4, 8)
MEASURE = (0.25, 0.75)  # fraction of the arrival window whose programs are measured
EXTEND = 1.25  # a censored curve gets its top rate x this, until it crosses the line
MAX_EXTEND = 8
MIN_BRACKET = 1.12  # refine only brackets wider than this rate ratio
SENSITIVITY = 2 / 3  # a second, lower line (x the line) reported as a robustness check


@dataclass(frozen=True)
class Workload:
    """Arrival window (s), the fewest programs of a run, and rates per engine (programs/s)."""

    window_s: float
    min_programs: int
    rates_per_engine: tuple[float, ...]  # the first is the low-load reference rate


WORKLOADS = {
    "sharegpt": Workload(260.0, 120, (0.25, 1.5, 2.0, 2.5, 3.0)),
    "lats": Workload(560.0, 40, (0.025, 0.1, 0.15, 0.2, 0.25)),
}
QUICK = {
    "sharegpt": Workload(130.0, 60, (0.25, 2.0, 3.0)),
    "lats": Workload(240.0, 20, (0.025, 0.15, 0.25)),
}


def simulate(spec: dict) -> dict:
    """One cluster run (a process-pool task): the spec plus steady-state measurements."""
    t0 = time.perf_counter()
    progs = generate(spec["workload"], spec["programs"], spec["rate"], spec["seed"], "synthetic")
    res = run_cluster(progs, spec["engines"], spec["routing"], spec["policy"],
                      preset=spec["preset"], load_signal=spec["load_signal"])  # fmt: skip
    arr = res.arrival - res.arrival.min()
    span = float(arr.max())
    mask = (arr >= MEASURE[0] * span) & (arr <= MEASURE[1] * span)
    if mask.sum() < 10:  # NOTE: tiny runs (tests, --quick) fall back to every program
        mask = np.ones_like(arr, dtype=bool)
    lpt, lat = res.latency_per_token[mask], res.latency[mask]
    st = res.stats
    query = st.get("prefix_query_tokens", 0)
    queued = (res.start - res.release)[np.isin(res.program, np.flatnonzero(mask))]
    return {
        **spec,
        "lpt_mean_ms": 1e3 * float(lpt.mean()),
        "lpt_p95_ms": 1e3 * float(np.percentile(lpt, 95)),
        "lpt_all_mean_ms": 1e3 * float(res.latency_per_token.mean()),
        "latency_mean_s": float(lat.mean()),
        "queueing_mean_s": float(queued.mean()),
        # NOTE: steady = the warm-up before the measured programs spans their mean latency
        "steady": bool(MEASURE[0] * span >= lat.mean()),
        "window_over_latency": span / float(lat.mean()),
        "prefix_hit_rate": st.get("prefix_hit_tokens", 0) / query if query else 0.0,
        "preemptions": st.get("num_preemptions_recompute", 0) + st.get("num_preemptions_swap", 0),
        "routed": res.meta["routed"],
        "sim_s": res.meta["sim_s"],
        "wall_s": time.perf_counter() - t0,
    }


class Runner:
    """Runs specs (deduplicated and cached), in a process pool when ``jobs`` > 1."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cache: dict[tuple, dict] = {}
        self.pool = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else None
        self.sim_engine_s = 0.0

    def spec(self, workload: str, engines: int, routing: str, signal: str, rate: float) -> dict:
        w = self.args.workloads[workload]
        return {"workload": workload, "engines": engines, "routing": routing,
                "load_signal": signal, "rate": rate,
                "programs": max(w.min_programs, math.ceil(rate * w.window_s)),
                "seed": self.args.seed, "policy": self.args.policy,
                "preset": self.args.preset}  # fmt: skip

    @staticmethod
    def key(spec: dict) -> tuple:
        return tuple(sorted((k, v) for k, v in spec.items()))

    def run(self, specs: list[dict]) -> list[dict]:
        """Rows for ``specs`` (in order); prints one JSON line per new run."""
        todo = {self.key(s): s for s in specs if self.key(s) not in self.cache}
        if todo:
            todo_specs = list(todo.values())
            done = self.pool.map(simulate, todo_specs) if self.pool else map(simulate, todo_specs)
            for row in done:
                self.cache[self.key({k: row[k] for k in todo_specs[0]})] = row
                self.sim_engine_s += row["sim_s"] * row["engines"]
                rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                print(json.dumps(rounded), flush=True)
        return [self.cache[self.key(s)] for s in specs]


@dataclass
class Curve:
    """One latency-vs-rate curve: a routing variant on some engines, with its swept rates."""

    label: str
    workload: str
    engines: int
    routing: str
    signal: str
    rates: list[float]
    rows: dict[float, dict] = field(default_factory=dict)
    extended: list[float] = field(default_factory=list)
    refined: int = 0

    def points(self) -> tuple[list[float], list[float]]:
        rates = sorted(self.rows)
        return rates, [self.rows[x]["lpt_mean_ms"] for x in rates]

    def sustained(self, line: float) -> tuple[float, bool]:
        return sustained_rate(*self.points(), line)


def next_rate(c: Curve, line: float, refine: int) -> tuple[float, str] | None:
    """The rate to add: an extension when censored, else a run at the interpolated crossing
    of a wide bracket; None when the curve is done."""
    rates, values = c.points()
    if c.sustained(line)[1]:
        if len(c.extended) >= MAX_EXTEND:
            return None
        return round(rates[-1] * EXTEND, 4), "extend"
    over = next(i for i, v in enumerate(values) if not v <= line)
    if c.refined >= refine or over == 0 or rates[over] / rates[over - 1] < MIN_BRACKET:
        return None
    # NOTE: the secant estimate of the crossing, kept inside the bracket
    lo, hi = rates[over - 1] * 1.03, rates[over] / 1.03
    return round(min(hi, max(lo, c.sustained(line)[0])), 4), "refine"


def sweep(runner: Runner, curves: list[Curve], line_of) -> float:
    """Runs every curve's grid, then extends/refines each until its knee is bracketed.
    ``line_of(curves)`` gives the latency line (ms/token) from the first round."""

    def run(pairs):
        specs = [runner.spec(c.workload, c.engines, c.routing, c.signal, x) for c, x in pairs]
        for (c, x), row in zip(pairs, runner.run(specs), strict=True):
            c.rows[x] = row

    run([(c, x) for c in curves for x in c.rates])
    line = line_of(curves)
    while True:
        pairs = []
        for c in curves:
            step = next_rate(c, line, runner.args.refine)
            if step is None:
                continue
            x, kind = step
            if kind == "extend":
                c.extended.append(x)
                print(json.dumps({"extend": c.label, "workload": c.workload, "engines": c.engines,
                                  "rate": x, "reason": "under the line at every swept rate"}),
                      flush=True)  # fmt: skip
            else:
                c.refined += 1
            pairs.append((c, x))
        if not pairs:
            return line
        run(pairs)


def routing_study(runner: Runner, workload: str) -> dict:
    args = runner.args
    grid = [round(x * args.engines, 4) for x in args.workloads[workload].rates_per_engine]
    curves = [Curve(f"{r} ({s})", workload, args.engines, r, s, list(grid))
              for r, s in VARIANTS]  # fmt: skip
    line = sweep(runner, curves, lambda cs: args.slo_factor * min(c.rows[grid[0]]["lpt_mean_ms"]
                                                                  for c in cs))  # fmt: skip
    summary = {c.label: c.sustained(line) for c in curves}
    print(json.dumps({"workload": workload, "line_ms_per_token": round(line, 3),
                      "sustained": summary}), flush=True)  # fmt: skip
    return {"workload": workload, "line_ms": line, "base_ms": line / args.slo_factor,
            "curves": curves}  # fmt: skip


def scaling_study(runner: Runner) -> dict:
    args = runner.args
    per = args.workloads["sharegpt"].rates_per_engine
    curves = [Curve(f"{k} engines", "sharegpt", k, "locality", "calls",
                    [round(x * k, 4) for x in per]) for k in args.scale_engines]  # fmt: skip
    one = curves[0]
    line = sweep(runner, curves, lambda cs: args.slo_factor * one.rows[one.rates[0]]["lpt_mean_ms"])
    rows = []
    r1 = one.sustained(line)[0]
    for c in curves:
        rate, censored = c.sustained(line)
        rows.append({"engines": c.engines, "sustained": rate, "censored": censored,
                     "per_engine": rate / c.engines,
                     "vs_linear": rate / (c.engines * r1)})  # fmt: skip
    print(json.dumps({"scaling_line_ms_per_token": round(line, 3), "rows": rows}), flush=True)
    return {"line_ms": line, "curves": curves, "rows": rows}


def _rate(rate: float, censored: bool) -> str:
    return f"{'>=' if censored else ''}{rate:.3g}"


def _first_over(c: Curve, line: float) -> dict | None:
    rates, values = c.points()
    return next((c.rows[x] for x, v in zip(rates, values, strict=True) if not v <= line), None)


def routing_tables(study: dict, factor: float) -> list[str]:
    """Markdown: the sustained-rate table and the raw latency table of one workload."""
    curves, line = study["curves"], study["line_ms"]
    low = SENSITIVITY * line
    loc, loc_low = curves[0].sustained(line), curves[0].sustained(low)
    rows = []
    for c in curves:
        rate, cen = c.sustained(line)
        rate_low = c.sustained(low)[0]
        under = [x for x in sorted(c.rows) if c.rows[x]["lpt_mean_ms"] <= line]
        over = _first_over(c, line)
        rows.append([
            c.label, _rate(rate, cen),
            "?" if cen and loc[1] else f"{loc[0] / rate:.2f}x" if rate > 0 else "inf",
            f"{rate_low:.3g}", f"{loc_low[0] / rate_low:.2f}x" if rate_low > 0 else "inf",
            f"{c.rows[under[-1]]['prefix_hit_rate']:.3f}" if under else "-",
            f"{over['rate']:g}: {over['queueing_mean_s']:.2f} s" if over else "-",
        ])  # fmt: skip
    rates = sorted({x for c in curves for x in c.rows})
    raw = [[c.label] + [f"{c.rows[x]['lpt_mean_ms']:.3g}" if x in c.rows else "-" for x in rates]
           for c in curves]  # fmt: skip
    progs = {x: c.rows[x]["programs"] for c in curves for x in c.rows}
    raw.append(["programs"] + [progs[x] for x in rates])
    head = ["routing (load signal)", "sustained rate (programs/s)", "locality gain",
            f"sustained @ {low:.2f} ms", "gain @ that line", "prefix hit rate (last rate under)",
            "mean queueing delay at the first rate over"]  # fmt: skip
    return [
        f"### {study['workload']}",
        "",
        f"Line: {line:.2f} ms/token = {factor:g} x {study['base_ms']:.2f} ms (best mean at "
        f"{rates[0]:g} programs/s); robustness line {low:.2f} ms ({SENSITIVITY:.2g} x).",
        "",
        markdown_table(head, rows),
        "",
        "Mean latency per token (ms, programs arriving in the middle half of the window) vs "
        "arrival rate (programs/s):",
        "",
        markdown_table(["routing"] + [f"{x:g}" for x in rates], raw),
        "",
    ]


def scaling_tables(study: dict) -> list[str]:
    """Markdown: sustained rate per engine count and the raw latency table."""
    rows = [[r["engines"], _rate(r["sustained"], r["censored"]), f"{r['per_engine']:.3g}",
             f"{r['vs_linear']:.2f}"] for r in study["rows"]]  # fmt: skip
    curves = study["curves"]
    per = sorted({round(x / c.engines, 4) for c in curves for x in c.rows})
    raw = []
    for c in curves:
        by = {round(x / c.engines, 4): c.rows[x]["lpt_mean_ms"] for x in c.rows}
        raw.append([f"{c.engines}"] + [f"{by[x]:.3g}" if x in by else "-" for x in per])
    head = ["engines", "sustained rate (programs/s)", "per engine", "vs linear (K x 1-engine)"]
    return [
        markdown_table(head, rows),
        "",
        "Mean latency per token (ms) vs arrival rate **per engine** (programs/s/engine):",
        "",
        markdown_table(["engines"] + [f"{x:g}" for x in per], raw),
        "",
    ]


def unsteady_under(curves: list[Curve], line: float) -> list[str]:
    """Runs under ``line`` whose warm-up is shorter than their mean program latency."""
    return [f"{c.workload} {c.label} K={c.engines} rate {x:g}" for c in curves
            for x, r in sorted(c.rows.items())
            if not r["steady"] and r["lpt_mean_ms"] <= line]  # fmt: skip


def write_markdown(args, routing: list[dict], scaling: dict, runner: Runner, wall: float) -> None:
    """Writes ``args.out``: method, sustained-rate tables and raw latency tables."""
    cmd = " ".join(["python benchmarks/bench_cluster.py", *sys.argv[1:]])
    lines = [(c, s["line_ms"]) for s in [*routing, scaling] for c in s["curves"]]
    ext = [f"{c.workload} {c.label} on {c.engines} engines to "
           + ", ".join(f"{x:g}" for x in c.extended) for c, _ in lines if c.extended]  # fmt: skip
    cen = [f"{c.workload} {c.label} on {c.engines} engines" for c, line in lines
           if c.sustained(line)[1]]  # fmt: skip
    bad = [b for s in [*routing, scaling] for b in unsteady_under(s["curves"], s["line_ms"])]
    runs = list(runner.cache.values())
    windows = ", ".join(f"{k} {v.window_s:g} s (at least {v.min_programs} programs)"
                        for k, v in args.workloads.items())  # fmt: skip
    md = [
        "# Simulated cluster: program-aware routing",
        "",
        f"`{cmd}` — preset `{args.preset}`, policy `{args.policy}` on every engine, synthetic "
        f"workloads (seed {args.seed}); {len(runs)} simulations, "
        f"{runner.sim_engine_s:.0f} simulated engine-seconds in {wall:.0f} s wall with "
        f"{args.jobs} jobs. A simulation: the figures do not depend on the machine.",
        "",
        f"Method: programs arrive (Poisson) for a fixed window — {windows} — so the program "
        "count is rate x window and a queue builds above capacity. Latency per token is the "
        f"mean over the programs arriving in the middle half of the window ({MEASURE[0]:g} to "
        f"{MEASURE[1]:g} of it: warm-up and drain excluded). The line is {args.slo_factor:g} x "
        "the best low-load mean; a routing sustains the highest rate whose mean is under it, "
        "interpolated linearly between the two swept rates that bracket the crossing. A curve "
        f"still under the line at its top rate is extended x{EXTEND:g} automatically; brackets "
        f"wider than {MIN_BRACKET:g}x get {args.refine} extra run(s) at the interpolated crossing.",
        "",
        "Grid extensions (automatic): " + ("; ".join(ext) if ext else "none") + ". "
        "Still censored: " + ("; ".join(cen) if cen else "none") + ". "
        "Runs under their line with a warm-up shorter than their mean program latency: "
        + ("; ".join(bad) if bad else "none")
        + ".",
        "",
        f"## Throughput at equal latency, {args.engines} engines",
        "",
    ]
    for s in routing:
        md += routing_tables(s, args.slo_factor)
    md += [
        "## Maximum sustainable rate vs engines (ShareGPT, locality routing)",
        "",
        f"One fixed line for every engine count: {scaling['line_ms']:.2f} ms/token = "
        f"{args.slo_factor:g} x the 1-engine mean at {scaling['curves'][0].rates[0]:g} "
        "programs/s. Rates are swept per engine (the same grid for every K).",
        "",
        *scaling_tables(scaling),
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(md))
    print(f"wrote {args.out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="llama3-8b-h100")
    p.add_argument("--policy", default="plas", help="scheduling policy on every engine")
    p.add_argument("--engines", type=int, default=4, help="engines of the routing study")
    p.add_argument("--slo-factor", type=float, default=3.0, help="line = this x low-load mean")
    p.add_argument("--refine", type=int, default=1, help="extra runs at each interpolated knee")
    p.add_argument("--jobs", type=int, default=2, help="simulations in parallel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="shorter windows, coarser grids")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cluster.md"))
    args = p.parse_args()
    if args.engines < 1 or args.jobs < 1 or args.refine < 0 or not args.slo_factor > 1:
        p.error("need --engines >= 1, --jobs >= 1, --refine >= 0 and --slo-factor > 1")
    args.workloads = QUICK if args.quick else WORKLOADS
    args.scale_engines = SCALE_ENGINES[:3] if args.quick else SCALE_ENGINES
    args.refine = 0 if args.quick else args.refine
    t0 = time.perf_counter()
    runner = Runner(args)
    try:
        routing = [routing_study(runner, w) for w in WORKLOADS]
        scaling = scaling_study(runner)
    finally:
        if runner.pool:
            runner.pool.shutdown()
    write_markdown(args, routing, scaling, runner, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
