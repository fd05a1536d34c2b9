"""vLLM with and without pyserve's scheduler: mean program latency per token.

Run with the vLLM venv's Python (docs/vllm.md):

    /tmp/vllm-venv/bin/python benchmarks/bench_vllm_plugin.py

Three engines on the same vLLM, model folder (builtin:tiny), program trace and arrival times;
only the scheduler differs: vLLM FCFS, vLLM ``priority`` with no priorities set, and
``--scheduler-cls pyserve.integrations.vllm.ProgramScheduler`` (``--policy``, default atlas).
The trace is a small saturating mix of ReAct chains (sequential calls separated by tool time, each call's prompt
the growing context) and parallel branches (a fan-out of calls, then a join call), seeded.

A program's latency is its last call's finish minus its arrival; per token, divided by the
output tokens of all its calls; the figure is the mean over programs. The engine runs in-process
(LLMEngine, uniprocess executor), the same EngineCore and scheduler as the OpenAI server.
Last stdout line: {"vllm_fcfs": s, "vllm_priority": s, "pyserve": s}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import dataclass, field

MAX_IDLE_STEPS = 20_000


@dataclass
class Program:
    """One agentic program: stages of parallel calls (output tokens each); tool time between."""

    pid: str
    arrival: float
    stages: list[list[int]]
    tool_s: float
    prompt: list[int]
    # Run state.
    stage: int = 0
    pending: int = 0
    ready_at: float = 0.0
    finish: float = 0.0
    tokens: int = 0
    context: list[int] = field(default_factory=list)


def make_trace(seed: int, num_programs: int, rate: float) -> list[Program]:
    """ReAct chains (2-4 sequential calls) and parallel branches (3-4 calls, then a join);
    every fourth program is heavy (long calls). Poisson arrivals at ``rate`` programs/s."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(num_programs):
        t += rng.expovariate(rate)
        heavy = i % 4 == 3
        size = (64, 96) if heavy else (8, 24)
        if i % 2 == 0:  # ReAct chain
            stages = [[rng.randint(*size)] for _ in range(rng.randint(2, 4))]
        else:  # parallel branches then a join
            fan = [rng.randint(*size) for _ in range(rng.randint(3, 4))]
            stages = [fan, [rng.randint(8, 32)]]
        prompt = [rng.randrange(10, 400) for _ in range(rng.randint(16, 48))]
        out.append(Program(f"prog{i}", t, stages, rng.uniform(0.05, 0.2), prompt))
    return out


def run(engine, programs: list[Program]) -> float:
    """Replays the trace on ``engine`` in wall-clock time; returns mean latency per token."""
    from vllm import SamplingParams

    start = time.monotonic()
    for p in programs:
        p.stage, p.pending, p.ready_at, p.tokens, p.context = 0, 0, p.arrival, 0, list(p.prompt)
    owner: dict[str, Program] = {}
    waiting = sorted(programs, key=lambda p: p.ready_at)
    done = idle_steps = 0
    while done < len(programs):
        now = time.monotonic() - start
        while waiting and waiting[0].ready_at <= now:
            p = waiting.pop(0)
            for j, n in enumerate(p.stages[p.stage]):
                rid = f"{p.pid}-{p.stage}-{j}"
                params = SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0,
                                        extra_args={"program_id": p.pid})  # fmt: skip
                engine.add_request(rid, {"prompt_token_ids": p.context}, params)
                owner[rid] = p
                p.pending += 1
        if not engine.has_unfinished_requests():
            if not waiting:  # NOTE: every program is mid-stage, yet the engine holds nothing
                raise RuntimeError(f"engine idle with calls unfinished: {sorted(owner)[:8]}")
            time.sleep(max(0.0, min(0.05, waiting[0].ready_at - now)) if waiting else 0.0)
            continue
        outs = engine.step()
        idle_steps = 0 if outs else idle_steps + 1
        if idle_steps > MAX_IDLE_STEPS:  # a stalled engine: fail instead of spinning forever
            raise RuntimeError(f"{MAX_IDLE_STEPS} steps without output; unfinished: "
                               f"{sorted(owner)[:8]}")  # fmt: skip
        for out in outs:
            if not out.finished:
                continue
            p = owner.pop(out.request_id)
            p.tokens += len(out.outputs[0].token_ids)
            p.context += list(out.outputs[0].token_ids)
            p.pending -= 1
            if p.pending:
                continue
            p.stage += 1
            t = time.monotonic() - start
            if p.stage == len(p.stages):
                p.finish = t
                done += 1
            else:  # tool call, then the next stage
                p.ready_at = t + p.tool_s
                waiting.append(p)
                waiting.sort(key=lambda q: q.ready_at)
    return sum((p.finish - p.arrival) / p.tokens for p in programs) / len(programs)


def build_engine(model: str, max_num_seqs: int, scheduler: str, policy: str):
    from vllm import EngineArgs, LLMEngine

    kwargs = dict(model=model, dtype="float32", enforce_eager=True, seed=0, max_model_len=1024,
                  max_num_seqs=max_num_seqs, distributed_executor_backend="uni")  # fmt: skip
    if scheduler == "vllm_priority":
        kwargs["scheduling_policy"] = "priority"
    elif scheduler == "pyserve":
        kwargs["scheduler_cls"] = "pyserve.integrations.vllm.ProgramScheduler"
        kwargs["additional_config"] = {"pyserve": {"policy": policy}}
    return LLMEngine.from_engine_args(EngineArgs(**kwargs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=12)
    ap.add_argument("--rate", type=float, default=2.0, help="program arrivals per second")
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default="atlas", choices=("atlas", "plas", "mlfq"))
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from pyserve.model.builtin import ensure_builtin

    model = str(ensure_builtin("tiny"))
    trace = make_trace(args.seed, args.programs, args.rate)
    calls = sum(len(s) for p in trace for s in p.stages)
    tokens = sum(n for p in trace for s in p.stages for n in s)
    print(f"trace: {len(trace)} programs, {calls} calls, {tokens} output tokens, "
          f"max_num_seqs={args.max_num_seqs}")  # fmt: skip
    result = {}
    for name in ("vllm_fcfs", "vllm_priority", "pyserve"):
        t0 = time.monotonic()
        engine = build_engine(model, args.max_num_seqs, name, args.policy)
        print(f"{name}: engine ready in {time.monotonic() - t0:.0f}s", flush=True)
        t0 = time.monotonic()
        result[name] = run(engine, trace)
        print(f"{name}: mean program latency per token {result[name] * 1e3:.2f} ms "
              f"(trace took {time.monotonic() - t0:.1f}s)", flush=True)  # fmt: skip
        del engine
    print(f"speedup vs vllm_fcfs: {result['vllm_fcfs'] / result['pyserve']:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
