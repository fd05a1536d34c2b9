"""Scheduler cost: median microseconds per schedule()+update() step of the C++ core.

Cases, per policy: N requests decoding (N = 64, 256, 1024, 4096; 512-token prompts, block 16,
budget 8192, prefix caching on), and a steady-state mix where finished requests are replaced by
new prefills (each request is its own program, so program-aware policies such as gittins learn
sizes from the finished ones). Prints one JSON line per case. Reference point (from the issue): vLLM 0.32's v1 Python scheduler
on a 2-core machine, ~1.5 ms/step at N=64, 6 ms at 256, 21 ms at 1024.

    python benchmarks/bench_scheduler.py [--sizes 64,256,1024,4096] [--steps 200]
        [--policies fcfs,plas,atlas,gittins]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from pyserve import _core

PROMPT = 512
BLOCK = 16
BUDGET = 8192


def make(n: int, policy: str) -> _core.Scheduler:
    cfg = _core.SchedulerConfig()
    cfg.policy = policy
    cfg.block_size = BLOCK
    cfg.max_num_batched_tokens = BUDGET
    cfg.max_num_seqs = n
    cfg.max_model_len = 4096
    cfg.num_gpu_blocks = n * (PROMPT + 1024) // BLOCK + 64
    cfg.enable_prefix_caching = True
    return _core.Scheduler(cfg, [0])


def add(s: _core.Scheduler, rid: int, rng: np.random.Generator, max_tokens: int) -> None:
    prompt = rng.integers(1, 32000, size=PROMPT, dtype=np.int32)
    s.add_request(f"r{rid}", prompt, max_tokens=max_tokens, ignore_eos=True)


def timed_step(s: _core.Scheduler) -> tuple[float, list]:
    t0 = time.perf_counter()
    p = s.schedule()
    fin = s.update(np.ones(p.num_samples, dtype=np.int32), 0.0)
    return (time.perf_counter() - t0) * 1e6, fin


def bench_decode(n: int, steps: int, policy: str) -> dict:
    rng = np.random.default_rng(0)
    s = make(n, policy)
    for i in range(n):
        add(s, i, rng, max_tokens=100_000)
    # Prefill everything first (not timed), until every request decodes.
    for _ in range(n * PROMPT // BUDGET + 8):
        timed_step(s)
    times = [timed_step(s)[0] for _ in range(steps)]
    p = s.schedule()
    assert p.num_decodes == n and p.num_prefills == 0, (p.num_decodes, p.num_prefills)
    s.update(np.ones(p.num_samples, dtype=np.int32), 0.0)
    return {
        "policy": policy,
        "n": n,
        "phase": "decode",
        "us_per_step": round(statistics.median(times), 2),
        "us_per_request": round(statistics.median(times) / n, 4),
    }


def bench_mix(n: int, steps: int, policy: str) -> dict:
    rng = np.random.default_rng(1)
    s = make(n, policy)
    next_id = 0
    for _ in range(n):
        add(s, next_id, rng, max_tokens=int(rng.integers(16, 512)))
        next_id += 1
    for _ in range(n * PROMPT // BUDGET + 8):
        timed_step(s)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _, fin = timed_step(s)
        for _ in fin:
            add(s, next_id, rng, max_tokens=int(rng.integers(16, 512)))
            next_id += 1
        times.append((time.perf_counter() - t0) * 1e6)
    s.check_invariants()
    return {
        "policy": policy,
        "n": n,
        "phase": "steady_mix",
        "us_per_step": round(statistics.median(times), 2),
        "us_per_request": round(statistics.median(times) / n, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,256,1024,4096")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--policies", default="fcfs,plas,atlas,gittins", help="comma-separated")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    policies = args.policies.split(",")
    results = []
    for policy in policies:
        for n in sizes:
            for fn in (bench_decode, bench_mix):
                r = fn(n, args.steps, policy)
                results.append(r)
                print(json.dumps(r), flush=True)
    first = policies[0]  # the growth and reference summaries are of the first policy
    dec = {
        r["n"]: r["us_per_step"] for r in results if r["phase"] == "decode" and r["policy"] == first
    }
    if len(dec) > 1:
        lo, hi = min(dec), max(dec)
        growth = (dec[hi] / dec[lo]) / (hi / lo)
        print(
            json.dumps(
                {
                    "summary": "decode cost growth vs linear",
                    "policy": first,
                    "n_lo": lo,
                    "n_hi": hi,
                    "ratio_to_linear": round(growth, 3),
                }
            )
        )
    if 1024 in dec:
        print(
            json.dumps(
                {
                    "summary": "speedup vs vLLM 0.32 reference at N=1024 (21 ms)",
                    "policy": first,
                    "x": round(21000 / dec[1024], 1),
                }
            )
        )


if __name__ == "__main__":
    main()
