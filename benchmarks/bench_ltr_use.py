"""Where the learned ranking score helps the scheduler: plas and gittins with and without it.

Simulated mixed workload (Llama-3.1-8B / H100 preset, synthetic ShareGPT sizes). The score is the
simulator's noisy oracle (docs/simulator.md): ``ltr_score = output tokens * exp(sigma * z)``;
``--ltr-sigma`` sets its quality, and the script prints the Kendall tau that sigma gives on the
calls of the trace, to set it to the tau a trained ranker measured (``pyserve ltr eval``).
Variants: the score ranks a program's first call inside its queue (``plas_ltr_first_call``),
picks the size class of a program (``gittins_classes``), or breaks ties between calls of equal
primary key (``ltr_tie_break``). Prints one JSON line per run, then per (rate, variant) the mean
over seeds of mean / P95 latency per token and its ratio to the variant without the score.

    python benchmarks/bench_ltr_use.py [--programs 200] [--rates 2,12] [--seeds 1,2]
        [--ltr-sigma 0.9]
"""

from __future__ import annotations

import argparse
import itertools
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from pyserve.ltr.metrics import kendall_tau
from pyserve.sim.executor import SimSetup, simulate
from pyserve.sim.report import summarize
from pyserve.sim.trace import stable_seed
from pyserve.sim.workloads import generate

# (name, policy, options, baseline name): the baseline is the same policy without the score.
VARIANTS = [
    ("plas", "plas", {}, "plas"),
    ("plas+first_call", "plas", {"plas_ltr_first_call": True}, "plas"),
    ("plas+tie_break", "plas", {"ltr_tie_break": True}, "plas"),
    ("plas+both", "plas", {"plas_ltr_first_call": True, "ltr_tie_break": True}, "plas"),
    ("gittins(pooled)", "gittins", {"gittins_classes": 0}, "gittins(pooled)"),
    ("gittins(classes)", "gittins", {"gittins_classes": 4}, "gittins(pooled)"),
    ("gittins+tie_break", "gittins", {"gittins_classes": 0, "ltr_tie_break": True},
     "gittins(pooled)"),
    ("gittins(classes)+tie_break", "gittins", {"gittins_classes": 4, "ltr_tie_break": True},
     "gittins(pooled)"),
]  # fmt: skip


def run(job: tuple) -> dict:
    """One simulation: (programs, rate, seed, variant index, sigma) -> latency summary."""
    n, rate, seed, v, sigma = job
    name, policy, options, _ = VARIANTS[v]
    progs = generate("mixed", n, rate, seed, sharegpt_source="synthetic")
    s = summarize(simulate(progs, policy, SimSetup(policy_options=options, ltr_sigma=sigma)))
    lpt = s["latency_per_token_s"]
    return {"rate": rate, "seed": seed, "variant": name, "mean_ms": lpt["mean"] * 1e3,
            "p95_ms": lpt["p95"] * 1e3, "starvation_s": s["starvation_s"]}  # fmt: skip


def oracle_tau(n: int, rate: float, seed: int, sigma: float) -> float:
    """Kendall tau between the simulated score and the output length over the trace's calls."""
    rng = np.random.default_rng(stable_seed("bench_ltr_use", str(seed)))
    progs = generate("mixed", n, rate, seed, sharegpt_source="synthetic")
    out = np.array([c.output_tokens for p in progs for c in p.calls], dtype=np.float64)
    return kendall_tau(out * np.exp(sigma * rng.standard_normal(out.shape[0])), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--rates", default="2,12", help="programs/s (mixed: knee ~2, overload ~12)")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--ltr-sigma", type=float, default=0.9)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    tau = oracle_tau(args.programs, rates[0], seeds[0], args.ltr_sigma)
    print(json.dumps({"ltr_sigma": args.ltr_sigma, "oracle_kendall_tau": round(tau, 3)}))
    jobs = [(args.programs, r, s, v, args.ltr_sigma)
            for r, s, v in itertools.product(rates, seeds, range(len(VARIANTS)))]  # fmt: skip
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run, jobs))
    for r in rows:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))
    for rate in rates:
        mean = {}
        for name, _, _, _ in VARIANTS:
            sel = [r for r in rows if r["rate"] == rate and r["variant"] == name]
            mean[name] = {k: float(np.mean([r[k] for r in sel])) for k in ("mean_ms", "p95_ms")}
        for name, _, _, base in VARIANTS:
            m, b = mean[name], mean[base]
            print(json.dumps({"summary": name, "rate": rate,
                              "mean_ms": round(m["mean_ms"], 1), "p95_ms": round(m["p95_ms"], 1),
                              "mean_vs_base": round(m["mean_ms"] / b["mean_ms"], 3),
                              "p95_vs_base": round(m["p95_ms"] / b["p95_ms"], 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
