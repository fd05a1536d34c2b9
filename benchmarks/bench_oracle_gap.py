"""Gap to the oracle: each policy's latency per token against clairvoyant SRPT and against FCFS.

Simulated Llama-3.1-8B / H100 preset, workloads mixed, sharegpt, bfcl and lats (synthetic
ShareGPT sizes). Per workload the loads are multiples of a probe: FCFS replays the tuning seed
with every program arriving at once; probe = the token rate over the first half of the output
tokens / the mean output tokens of a program (programs/s). The probe understates capacity where
long tool-bound programs (lats) leave the engine idle, so the multiples were set once so that
mixed lands where issue 16 measured it: low = 1x, knee = 4x (~2 programs/s on mixed, where
vllm-opt bends), overload = 24x (~12 programs/s on mixed).

Tuned and reported apart: each tunable policy's options are chosen on the tuning seed (lowest
mean latency per token summed over the three loads); the table reports the chosen options on
the report seeds only (mean over seeds of each seed's mean and P95 program latency per token).

Targets (issue 16): at overload on mixed, the best non-clairvoyant policy within 1.5x of SRPT
and >= 2x better than FCFS (mean latency per token); gittins no worse than plas on any workload
at any load (mean and P95). The script prints whether each holds; it writes JSON lines to stdout
and the report to ``--out``.

    python benchmarks/bench_oracle_gap.py [--programs 200] [--lats-programs 25] [--jobs 2]
        [--workloads mixed,sharegpt,bfcl,lats] [--tune-seed 0] [--seeds 1,2]
        [--out benchmarks/results/oracle_gap.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from pyserve.sim.executor import SimSetup, simulate
from pyserve.sim.report import markdown_table, summarize
from pyserve.sim.workloads import generate

POLICIES = ("fcfs", "plas", "atlas", "gittins", "srpt")
CLAIRVOYANT = ("srpt",)
TUNING = {
    "plas": [{"quantum_base": 0.005}, {"quantum_base": 0.02}],
    "gittins": [{"gittins_classes": 0}, {"gittins_classes": 4}],
}
LOADS = {"low": 1.0, "knee": 4.0, "overload": 24.0}
ALL_AT_ONCE = 1e4  # programs/s of the capacity probe


def run(job: tuple) -> dict:
    """One simulation: (workload, programs, rate, seed, policy, options) -> latency summary."""
    workload, n, rate, seed, policy, options = job
    progs = generate(workload, n, rate, seed, sharegpt_source="synthetic")
    r = simulate(progs, policy, SimSetup(policy_options=dict(options)))
    s = summarize(r)
    lpt = s["latency_per_token_s"]
    times = np.sort(r.token_times - r.arrival.min())
    saturated = 0.5 * times.shape[0] / times[times.shape[0] // 2]  # tokens/s, first half
    capacity = saturated / r.program_output_tokens.mean()
    return {"workload": workload, "rate": rate, "seed": seed, "policy": policy,
            "options": options, "mean": lpt["mean"], "p95": lpt["p95"],
            "starvation_s": s["starvation_s"], "capacity": capacity}  # fmt: skip


def capacities(pool, workloads: list[str], sizes: dict, seed: int) -> dict[str, float]:
    jobs = [(w, sizes[w], ALL_AT_ONCE, seed, "fcfs", {}) for w in workloads]
    return {r["workload"]: r["capacity"] for r in pool.map(run, jobs)}


def tune(pool, rates: dict, sizes: dict, seed: int) -> dict:
    """{(workload, policy): options} with the lowest summed mean over the loads on ``seed``."""
    jobs = [(w, sizes[w], r, seed, p, o) for w, by_load in rates.items()
            for r in by_load.values() for p, opts in TUNING.items() for o in opts]  # fmt: skip
    score: dict = {}
    for r in pool.map(run, jobs):
        key = (r["workload"], r["policy"], json.dumps(r["options"], sort_keys=True))
        score[key] = score.get(key, 0.0) + r["mean"]
    best = {}
    for (w, p, o), v in score.items():
        if (w, p) not in best or v < score[(w, p, json.dumps(best[(w, p)], sort_keys=True))]:
            best[(w, p)] = json.loads(o)
    return best


def report(pool, rates: dict, sizes: dict, seeds: list[int], chosen: dict) -> dict:
    """{(workload, load, policy): {"mean", "p95", "starvation_s"}} averaged over ``seeds``."""
    jobs, where = [], []
    for w, by_load in rates.items():
        for load, rate in by_load.items():
            for p in POLICIES:
                for seed in seeds:
                    jobs.append((w, sizes[w], rate, seed, p, chosen.get((w, p), {})))
                    where.append((w, load, p))
    acc: dict = {}
    for key, r in zip(where, pool.map(run, jobs), strict=True):
        print(json.dumps(r), flush=True)
        acc.setdefault(key, []).append(r)
    return {
        k: {m: float(np.mean([r[m] for r in rs])) for m in ("mean", "p95", "starvation_s")}
        for k, rs in acc.items()
    }


def targets(res: dict, workloads: list[str]) -> list[tuple[str, bool, str]]:
    """(target, met?, evidence) of the issue's targets."""
    out = []
    if "mixed" in workloads:
        srpt, fcfs = res[("mixed", "overload", "srpt")], res[("mixed", "overload", "fcfs")]
        cands = [p for p in POLICIES if p not in CLAIRVOYANT]
        best = min(cands, key=lambda p: res[("mixed", "overload", p)]["mean"])
        m = res[("mixed", "overload", best)]["mean"]
        out.append(("mixed overload: best non-clairvoyant within 1.5x of srpt (mean)",
                    m <= 1.5 * srpt["mean"], f"{best}: {m / srpt['mean']:.2f}x srpt"))  # fmt: skip
        out.append(("mixed overload: best non-clairvoyant >= 2x better than fcfs (mean)",
                    fcfs["mean"] >= 2 * m, f"{best}: fcfs / {best} = {fcfs['mean'] / m:.2f}x"))  # fmt: skip
    worst = (0.0, "")
    for (w, load, p), v in res.items():
        if p != "gittins":
            continue
        for stat in ("mean", "p95"):
            ratio = v[stat] / res[(w, load, "plas")][stat]
            if ratio > worst[0]:
                worst = (ratio, f"{w} {load} {stat}")
    out.append(("gittins no worse than plas anywhere (mean and P95)", worst[0] <= 1.0,
                f"worst gittins / plas = {worst[0]:.2f}x ({worst[1]})"))  # fmt: skip
    return out


def markdown(res, rates, sizes, seeds, tune_seed, chosen, caps, checks, wall) -> str:
    lines = ["# Gap to the oracle (generated by benchmarks/bench_oracle_gap.py)", "",
             f"`python {' '.join(sys.argv)}`: report seeds {seeds}; options tuned on seed"
             f" {tune_seed}; {wall:.0f} s wall.",
             "Latency per token = program latency / its output tokens (ms); ratios are of the"
             " mean over seeds of each seed's mean (P95). Starvation = longest program wait (s).",
             ""]  # fmt: skip
    for w, by_load in rates.items():
        tuned = ", ".join(f"{p}: {chosen[(w, p)]}" for p in TUNING if (w, p) in chosen)
        lines += [f"## {w} ({sizes[w]} programs, probe {caps[w]:.3g} programs/s; {tuned})", ""]
        rows = []
        for load, rate in by_load.items():
            srpt, fcfs = res[(w, load, "srpt")], res[(w, load, "fcfs")]
            for p in POLICIES:
                v = res[(w, load, p)]
                rows.append([f"{load} ({rate:.3g}/s)", p, 1e3 * v["mean"], 1e3 * v["p95"],
                             v["mean"] / srpt["mean"], v["p95"] / srpt["p95"],
                             v["mean"] / fcfs["mean"], v["p95"] / fcfs["p95"], v["starvation_s"]])  # fmt: skip
        lines += [markdown_table(["load", "policy", "mean (ms)", "P95 (ms)", "mean / srpt",
                                  "P95 / srpt", "mean / fcfs", "P95 / fcfs", "starvation (s)"],
                                 rows), ""]  # fmt: skip
    lines += ["## Targets", ""]
    lines += [markdown_table(["target", "met", "measured"],
                             [[t, "yes" if ok else "**no**", e] for t, ok, e in checks])]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="mixed,sharegpt,bfcl,lats")
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--lats-programs", type=int, default=25, help="lats programs (~160 calls each)")
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument("--seeds", default="1,2", help="report seeds (disjoint from the tuning seed)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/oracle_gap.md")
    args = ap.parse_args()
    workloads = args.workloads.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.tune_seed in seeds:
        raise SystemExit("--tune-seed must not be one of --seeds (tune and report apart)")
    sizes = {w: args.lats_programs if w == "lats" else args.programs for w in workloads}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        caps = capacities(pool, workloads, sizes, args.tune_seed)
        rates = {w: {load: f * caps[w] for load, f in LOADS.items()} for w in workloads}
        chosen = tune(pool, rates, sizes, args.tune_seed)
        res = report(pool, rates, sizes, seeds, chosen)
    checks = targets(res, workloads)
    wall = time.perf_counter() - t0
    for t, ok, e in checks:
        print(json.dumps({"target": t, "met": ok, "measured": e}), flush=True)
    text = markdown(res, rates, sizes, seeds, args.tune_seed, chosen, caps, checks, wall)
    with open(args.out, "w") as f:
        f.write(text)
    print(json.dumps({"wrote": args.out, "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
