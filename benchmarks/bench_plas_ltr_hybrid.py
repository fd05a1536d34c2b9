"""Does ranking a program's *first* call by the learned score help PLAS? (issue: plas + ltr hybrid)

Simulated Mixed workload (Llama-3.1-8B / H100 preset). `plas` orders calls inside a queue by
arrival; `plas_ltr_first_call` orders the first calls of programs (no completed call yet) by the
ltr score, which in simulation is the noisy oracle of docs/simulator.md (Kendall tau ~0.6).
Prints one JSON line per (rate, variant) with mean / P95 / P99 latency per output token.

    python benchmarks/bench_plas_ltr_hybrid.py [--programs 300] [--rates 1,2,4] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import itertools
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from pyserve.sim.executor import SimSetup, simulate
from pyserve.sim.report import summarize
from pyserve.sim.workloads import generate


def one(job: tuple) -> dict:
    rate, seed, hybrid, programs = job
    progs = generate("mixed", programs, rate, seed, sharegpt_source="synthetic")
    s = summarize(simulate(progs, "plas", SimSetup(policy_options={"plas_ltr_first_call": hybrid})))
    lpt = s["latency_per_token_s"]
    return {"rate": rate, "seed": seed, "hybrid": hybrid, "mean_ms": lpt["mean"] * 1e3,
            "p95_ms": lpt["p95"] * 1e3, "p99_ms": lpt["p99"] * 1e3,
            "ttft_p50_ms": s["ttft_s"]["p50"] * 1e3}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=300)
    ap.add_argument("--rates", default="1,2,4")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = list(itertools.product(rates, seeds, (False, True), [args.programs]))
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one, jobs))
    for r in rows:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))
    for rate in rates:
        base = [r for r in rows if r["rate"] == rate and not r["hybrid"]]
        hyb = [r for r in rows if r["rate"] == rate and r["hybrid"]]
        ratio = {k: float(np.mean([b[k] / h[k] for b, h in zip(base, hyb)]))
                 for k in ("mean_ms", "p95_ms", "p99_ms")}  # fmt: skip
        print(
            json.dumps(
                {
                    "summary": "plas latency / hybrid latency (>1: hybrid better)",
                    "rate": rate,
                    **{k: round(v, 3) for k, v in ratio.items()},
                }
            )
        )


if __name__ == "__main__":
    main()
