"""Sweep of the multi-level-queue parameters (quantum base, starvation beta) for plas and atlas.

Simulated Mixed workload on the Llama-3.1-8B / H100 preset at loads around and above the knee.
Tunes on one set of seeds and reports on another: the grid runs on ``--tune-seeds``; per policy
the setting with the lowest mean of (mean, P99) ranks across loads and tuning seeds is chosen;
the chosen setting and the built-in default are then replayed on the disjoint ``--report-seeds``,
and only those numbers are the result. Prints one JSON line per run (mean / P95 / P99 program
latency per output token, starvation = the longest program wait) and the summaries. This is what
chose the defaults in csrc/include/pyserve/config.h.

    python benchmarks/sweep_policy_defaults.py [--programs 300] [--rates 2,4] [--jobs 2]
        [--tune-seeds 0] [--report-seeds 1,2]
"""

from __future__ import annotations

import argparse
import itertools
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from pyserve import _core
from pyserve.sim.executor import SimSetup, simulate
from pyserve.sim.report import summarize
from pyserve.sim.workloads import generate


def one(job: tuple) -> dict:
    policy, rate, programs, quantum, beta, seed = job
    progs = generate("mixed", programs, rate, seed, sharegpt_source="synthetic")
    setup = SimSetup(policy_options={"quantum_base": quantum, "starvation_beta": beta})
    s = summarize(simulate(progs, policy, setup))
    lpt = s["latency_per_token_s"]
    return {"policy": policy, "rate": rate, "seed": seed, "quantum_base": quantum,
            "starvation_beta": beta, "mean_ms": round(lpt["mean"] * 1e3, 2),
            "p95_ms": round(lpt["p95"] * 1e3, 2), "p99_ms": round(lpt["p99"] * 1e3, 2),
            "starvation_s": round(s["starvation_s"], 2)}  # fmt: skip


def best_setting(rows: list[dict]) -> tuple[tuple, float]:
    """The (quantum_base, starvation_beta) with the lowest summed (mean, P99) rank per run."""
    settings = sorted({(r["quantum_base"], r["starvation_beta"]) for r in rows})
    score = {s: 0.0 for s in settings}
    for rate, seed in {(r["rate"], r["seed"]) for r in rows}:
        at = [r for r in rows if r["rate"] == rate and r["seed"] == seed]
        for key in ("mean_ms", "p99_ms"):
            for i, r in enumerate(sorted(at, key=lambda r: r[key])):
                score[(r["quantum_base"], r["starvation_beta"])] += i
    best = min(settings, key=lambda s: score[s])
    return best, score[best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=300)
    ap.add_argument("--rates", default="2,4")
    ap.add_argument("--quanta", default="0.005,0.01,0.02,0.04,0.08")
    ap.add_argument("--betas", default="16,64,256")
    ap.add_argument("--policies", default="plas,atlas")
    ap.add_argument("--tune-seeds", default="0")
    ap.add_argument("--report-seeds", default="1,2")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    tune_seeds = [int(s) for s in args.tune_seeds.split(",")]
    report_seeds = [int(s) for s in args.report_seeds.split(",")]
    if set(tune_seeds) & set(report_seeds):
        raise SystemExit("--tune-seeds and --report-seeds must be disjoint")
    policies, rates = args.policies.split(","), [float(r) for r in args.rates.split(",")]
    grid = list(itertools.product(
        policies, rates, [args.programs], [float(q) for q in args.quanta.split(",")],
        [float(b) for b in args.betas.split(",")], tune_seeds))  # fmt: skip
    default = _core.SchedulerConfig()
    with ProcessPoolExecutor(args.jobs) as pool:
        tuned = list(pool.map(one, grid))
        for r in tuned:
            print(json.dumps({"phase": "tune", **r}), flush=True)
        chosen = {p: best_setting([r for r in tuned if r["policy"] == p]) for p in policies}
        checks = {(p, s) for p in policies
                  for s in (chosen[p][0], (default.quantum_base, default.starvation_beta))}  # fmt: skip
        jobs = [(p, rate, args.programs, q, b, seed) for (p, (q, b)) in sorted(checks)
                for rate in rates for seed in report_seeds]  # fmt: skip
        reported = list(pool.map(one, jobs))
    for r in reported:
        print(json.dumps({"phase": "report", **r}), flush=True)
    for p in policies:
        (q, b), score = chosen[p]
        for label, (qq, bb) in (("chosen", (q, b)), ("default", (default.quantum_base,
                                                                  default.starvation_beta))):  # fmt: skip
            for rate in rates:
                rs = [r for r in reported if r["policy"] == p and r["rate"] == rate
                      and (r["quantum_base"], r["starvation_beta"]) == (qq, bb)]  # fmt: skip
                print(json.dumps({
                    "summary": f"{label} setting on the report seeds", "policy": p, "rate": rate,
                    "quantum_base": qq, "starvation_beta": bb, "tune_rank_score": score,
                    **{k: round(float(np.mean([r[k] for r in rs])), 2)
                       for k in ("mean_ms", "p95_ms", "p99_ms", "starvation_s")}}))  # fmt: skip


if __name__ == "__main__":
    main()
