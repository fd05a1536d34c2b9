"""Simulated multi-engine serving: program-aware routing vs baselines, and scaling with engines.

1. Throughput at equal latency of ``locality`` vs ``round_robin`` vs ``least_loaded`` routing on
   K simulated engines (default 4x Llama-3.1-8B/H100, PLAS on every engine) for the ShareGPT and
   LATS workloads: sweep the program arrival rate, draw a latency-per-token line at
   ``--slo-factor`` times the best mean at the lowest rate, report the highest rate each routing
   sustains under it (linear interpolation between swept rates; ``>=`` when never crossed).
2. Maximum sustainable rate vs number of engines (1, 2, 4, 8; locality routing, ShareGPT) under
   one fixed latency-per-token line (``--slo-factor`` times the 1-engine mean at its lowest rate).

Prints one JSON line per run and writes ``benchmarks/results/cluster.md``.

    python benchmarks/bench_cluster.py            # ~4 minutes on 2 CPU cores
    python benchmarks/bench_cluster.py --quick    # smaller sweep
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pyserve.sim.cluster import run_cluster
from pyserve.sim.report import markdown_table, summarize, sustained_rate
from pyserve.sim.workloads import generate

ROUTINGS = ("locality", "round_robin", "least_loaded")
WORKLOADS = {
    # workload: (programs, arrival rates in programs/s for the 4-engine sweep)
    "sharegpt": (400, (10.0, 20.0, 40.0, 80.0, 160.0)),
    "lats": (24, (0.25, 0.5, 1.0, 2.0, 4.0)),
}
SCALE_ENGINES = (1, 2, 4, 8)
SCALE_RATES_PER_ENGINE = (2.5, 5.0, 10.0, 20.0, 40.0)
SCALE_PROGRAMS_PER_ENGINE = 100


def one_run(args, workload, programs, rate, engines, routing, load_signal="calls") -> dict:
    progs = generate(workload, programs, rate, args.seed, "synthetic")
    t0 = time.perf_counter()
    res = run_cluster(progs, engines, routing, args.policy, preset=args.preset,
                      load_signal=load_signal)  # fmt: skip
    s = summarize(res)
    row = {
        "workload": workload, "engines": engines, "routing": routing, "load_signal": load_signal,
        "rate": rate, "programs": programs,
        "lpt_mean_s": s["latency_per_token_s"]["mean"], "lpt_p95_s": s["latency_per_token_s"]["p95"],
        "prefix_hit_rate": s["prefix_hit_rate"], "tokens_per_s": s["throughput_tokens_per_s"],
        "routed": res.meta["routed"], "wall_s": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def routing_sweep(args, workload: str) -> tuple[list[dict], list[list]]:
    programs, rates = WORKLOADS[workload]
    if args.quick:
        programs, rates = max(8, programs // 2), rates[1:4]
    variants = [(r, "calls") for r in ROUTINGS] + [("locality", "llumnix")]
    rows = [one_run(args, workload, programs, x, args.engines, r, sig)
            for r, sig in variants for x in rates]  # fmt: skip
    base = min(r["lpt_mean_s"] for r in rows if r["rate"] == rates[0])
    line = args.slo_factor * base
    table, sustained = [], {}
    for r, sig in variants:
        mine = [x for x in rows if x["routing"] == r and x["load_signal"] == sig]
        rate, censored = sustained_rate(rates, [x["lpt_mean_s"] for x in mine], line)
        sustained[(r, sig)] = rate
        hit = sum(x["prefix_hit_rate"] for x in mine) / len(mine)
        table.append([f"{r} ({sig})", f"{'>=' if censored else ''}{rate:.3g}", f"{hit:.3f}"])
    loc = sustained[("locality", "calls")]
    for t, (r, sig) in zip(table, variants, strict=True):
        other = sustained[(r, sig)]
        t.append(f"{loc / other:.2f}x" if other > 0 else "n/a")
    print(json.dumps({"workload": workload, "line_s_per_token": line,
                      "sustained": {f"{r}/{s}": v for (r, s), v in sustained.items()}}))  # fmt: skip
    return rows, [[workload, f"{line * 1e3:.2f} ms"] + t for t in table]


def scaling_sweep(args) -> list[list]:
    engines = SCALE_ENGINES[:3] if args.quick else SCALE_ENGINES
    rows = {}
    for e in engines:
        rates = [x * e for x in SCALE_RATES_PER_ENGINE]
        rows[e] = [one_run(args, "sharegpt", SCALE_PROGRAMS_PER_ENGINE * e, x, e, "locality")
                   for x in rates]  # fmt: skip
    line = args.slo_factor * rows[engines[0]][0]["lpt_mean_s"]
    out = []
    for e in engines:
        rate, censored = sustained_rate(
            [r["rate"] for r in rows[e]], [r["lpt_mean_s"] for r in rows[e]], line
        )
        out.append([e, f"{'>=' if censored else ''}{rate:.3g}", f"{rate / e:.3g}"])
    print(json.dumps({"scaling_line_s_per_token": line, "sustained": out}))
    return [[f"{line * 1e3:.2f} ms"] + r for r in out]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="llama3-8b-h100")
    p.add_argument("--policy", default="plas", help="scheduling policy on every engine")
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--slo-factor", type=float, default=1.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cluster.md"))
    args = p.parse_args()
    t0 = time.perf_counter()
    routing_rows = []
    for w in WORKLOADS:
        routing_rows += routing_sweep(args, w)[1]
    scale_rows = scaling_sweep(args)
    md = [
        "# Simulated cluster: program-aware routing",
        "",
        f"`python benchmarks/bench_cluster.py{' --quick' if args.quick else ''}` — preset "
        f"`{args.preset}`, policy `{args.policy}` on every engine, synthetic workloads (seed "
        f"{args.seed}), latency line = {args.slo_factor} x the best mean latency per token at "
        f"the lowest swept rate. Sustained rate in programs/s (interpolated; `>=`: never "
        f"crossed the line). Wall time {time.perf_counter() - t0:.0f} s.",
        "",
        f"## Throughput at equal latency, {args.engines} engines",
        "",
        markdown_table(
            [
                "workload",
                "line",
                "routing (load signal)",
                "sustained rate",
                "prefix hit rate",
                "locality gain",
            ],
            routing_rows,
        ),  # fmt: skip
        "",
        "## Maximum sustainable rate vs engines (ShareGPT, locality routing)",
        "",
        markdown_table(["line", "engines", "sustained rate", "per engine"], scale_rows),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(md))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
