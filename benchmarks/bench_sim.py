"""Simulator speed: simulated seconds per wall second, and where a step's time goes.

Prints JSON lines:

- ``{"bench": "saturation", ...}``: Mixed workload (Llama-3.1-8B / H100 preset) at an arrival
  rate above capacity; ``speedup`` = simulated seconds / wall seconds (``sim_s`` / ``wall_s``)
  and ``speedup_cpu`` = simulated seconds / this process's CPU seconds (``cpu_s``: what the wall
  figure would be on an idle core; on a shared machine the wall figure drops, this one much
  less), with the wall time split
  into schedule (C++), cost model, update (C++ + token gather) and the rest (driver: issuing
  calls, which draws their deterministic token ids, and bookkeeping).
- ``{"bench": "step", "policy": ..., ...}``: mean microseconds per step with exactly 256 calls
  decoding (1024-token prompts), split into schedule / cost model / update.

Targets (issues 5 and 16): speedup >= 200x at 400 programs and 12 programs/s; schedule + cost
model + update < 100 us per step at 256.

    python benchmarks/bench_sim.py [--programs 400] [--rate 12] [--steps 2000] [--policies ...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pyserve import _core
from pyserve.sim.cost_model import CostModel
from pyserve.sim.driver import TokenBook
from pyserve.sim.executor import SimExecutor, SimSetup, build_core_config, simulate
from pyserve.sim.presets import get_preset
from pyserve.sim.workloads import generate

PRESET = "llama3-8b-h100"


def saturation(num_programs: int, rate: float, policy: str) -> dict:
    """Simulate Mixed at ``rate`` programs/s and report speed and the split of wall time."""
    programs = generate("mixed", num_programs, rate, seed=0, sharegpt_source="synthetic")
    cpu0 = time.process_time()
    r = simulate(programs, policy, SimSetup(preset=PRESET), profile=True)
    cpu_s = time.process_time() - cpu0  # NOTE: this process's CPU seconds (setup included)
    m, steps = r.meta, r.num_steps
    t = m["timings"]
    other = m["wall_s"] - sum(t.values())
    return {
        "bench": "saturation",
        "workload": "mixed",
        "preset": PRESET,
        "policy": policy,
        "programs": num_programs,
        "calls": len(r.call_ids),
        "rate": rate,
        "steps": steps,
        "sim_s": round(m["sim_s"], 2),
        "wall_s": round(m["wall_s"], 3),
        "speedup": round(m["speedup"], 1),
        "cpu_s": round(cpu_s, 3),
        "speedup_cpu": round(m["sim_s"] / cpu_s, 1),
        "mean_step_ms_simulated": round(1e3 * m["sim_s"] / steps, 3),
        "us_per_step": {k: round(1e6 * v / steps, 2) for k, v in t.items()},
        "us_per_step_driver": round(1e6 * other / steps, 2),
        "us_per_call_driver": round(1e6 * other / len(r.call_ids), 1),
    }


def _decoding_executor(policy: str, running: int, prompt: int, out: int) -> SimExecutor:
    """An executor whose ``running`` calls have all finished prefill and decode ``out`` tokens."""
    setup = SimSetup(preset=PRESET, max_num_seqs=running)
    cost = CostModel(get_preset(PRESET), setup.block_size)
    cfg = build_core_config(setup, policy, cost, max_model_len=prompt + out)
    book = TokenBook(capacity=running * out)
    ex = SimExecutor(cfg, cost, book, profile=True)
    rng = np.random.default_rng(0)
    for i in range(running):
        ids = rng.integers(16, 32000, prompt, dtype=np.int32)
        seq = ex.add_request(
            f"r{i}",
            ids,
            max_tokens=out,
            ignore_eos=True,
            program_id=f"p{i}",
            remaining_hint=float(out),
            program_remaining_hint=float(out),
            ltr_score=float(i),
        )
        book.open(seq, out)
    while True:
        r = ex.step()
        book.record(r.sample_seqs, r.sampled, ex.now, r.positions)
        if r.num_decodes == running:
            return ex


def step_cost(policy: str, steps: int, running: int = 256, prompt: int = 1024) -> dict:
    """Microseconds per decode step with ``running`` calls, by phase (median and mean)."""
    ex = _decoding_executor(policy, running, prompt, out=steps + 64)
    s, book = ex.scheduler, ex.book
    clock = time.perf_counter
    t = np.zeros((steps, 4))
    for i in range(steps):
        t0 = clock()
        plan = s.schedule()
        t1 = clock()
        seconds = ex.step_seconds(plan)
        t2 = clock()
        seqs = plan.seq_ids[plan.sample_seq_idx]
        pos = book.positions(seqs)
        sampled = book.tokens[pos]
        s.update(sampled, seconds)
        t3 = clock()
        ex.clock += seconds
        book.record(seqs, sampled, ex.clock, pos)
        t[i] = (t0, t1, t2, t3)
    phases = np.diff(t, axis=1) * 1e6  # [steps, 3]: schedule, cost model, update
    names = ("schedule", "cost_model", "update")
    return {
        "bench": "step",
        "policy": policy,
        "running": running,
        "prompt_tokens": prompt,
        "steps": steps,
        "us_median": {n: round(float(np.median(phases[:, k])), 2) for k, n in enumerate(names)},
        "us_mean": {n: round(float(phases[:, k].mean()), 2) for k, n in enumerate(names)},
        "us_total_median": round(float(np.median(phases.sum(axis=1))), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--programs", type=int, default=400)
    p.add_argument("--rate", type=float, default=12.0, help="programs/s (above capacity)")
    p.add_argument("--saturation-policy", default="fcfs")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--policies", default=",".join(_core.policy_names()))
    args = p.parse_args()
    print(json.dumps(saturation(args.programs, args.rate, args.saturation_policy)), flush=True)
    for policy in args.policies.split(","):
        print(json.dumps(step_cost(policy, args.steps)), flush=True)


if __name__ == "__main__":
    main()
