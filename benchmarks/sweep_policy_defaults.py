"""Sweep of the multi-level-queue parameters (quantum base, starvation beta) for plas and atlas.

Simulated Mixed workload on the Llama-3.1-8B / H100 preset at loads around and above the knee.
Prints one JSON line per run (mean / P95 / P99 program latency per output token) and, per policy,
the setting with the lowest mean of (mean, P99) ranks across the loads. This is what chose the
defaults in csrc/include/pyserve/config.h.

    python benchmarks/sweep_policy_defaults.py [--programs 300] [--rates 2,4] [--jobs 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
from concurrent.futures import ProcessPoolExecutor

from pyserve.sim.executor import SimSetup, simulate
from pyserve.sim.report import summarize
from pyserve.sim.workloads import generate


def one(job: tuple) -> dict:
    policy, rate, programs, quantum, beta, seed = job
    progs = generate("mixed", programs, rate, seed, sharegpt_source="synthetic")
    setup = SimSetup(policy_options={"quantum_base": quantum, "starvation_beta": beta})
    s = summarize(simulate(progs, policy, setup))
    lpt = s["latency_per_token_s"]
    return {"policy": policy, "rate": rate, "quantum_base": quantum, "starvation_beta": beta,
            "mean_ms": round(lpt["mean"] * 1e3, 2), "p95_ms": round(lpt["p95"] * 1e3, 2),
            "p99_ms": round(lpt["p99"] * 1e3, 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=300)
    ap.add_argument("--rates", default="2,4")
    ap.add_argument("--quanta", default="0.005,0.01,0.02,0.04,0.08")
    ap.add_argument("--betas", default="16,64,256")
    ap.add_argument("--policies", default="plas,atlas")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    grid = list(itertools.product(
        args.policies.split(","), [float(r) for r in args.rates.split(",")], [args.programs],
        [float(q) for q in args.quanta.split(",")], [float(b) for b in args.betas.split(",")],
        [args.seed]))  # fmt: skip
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one, grid))
    for r in rows:
        print(json.dumps(r), flush=True)
    for policy in args.policies.split(","):
        mine = [r for r in rows if r["policy"] == policy]
        settings = sorted({(r["quantum_base"], r["starvation_beta"]) for r in mine})
        score = {s: 0.0 for s in settings}
        for rate in {r["rate"] for r in mine}:
            at = [r for r in mine if r["rate"] == rate]
            for key in ("mean_ms", "p99_ms"):
                ranked = sorted(at, key=lambda r: r[key])
                for i, r in enumerate(ranked):
                    score[(r["quantum_base"], r["starvation_beta"])] += i
        best = min(settings, key=lambda s: score[s])
        print(json.dumps({"summary": "best setting by mean rank", "policy": policy,
                          "quantum_base": best[0], "starvation_beta": best[1],
                          "rank_score": score[best]}))  # fmt: skip


if __name__ == "__main__":
    main()
