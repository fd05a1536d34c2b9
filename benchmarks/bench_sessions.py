"""Coding-agent sessions over the KV host tier: retention policies against vLLM's defaults.

Replays real Claude Code sessions (kv-cache-tester traces: ``git clone
https://github.com/callanjfox/kv-cache-tester`` and pass ``--source kv-cache-tester``) arriving
as a Poisson process, in the simulator, for a sweep of session rates and these configurations:

- ``vllm-opt``: fcfs, LRU prefix cache on the GPU only (no host tier);
- ``lru-host``: fcfs, LRU over the GPU and a host tier (vLLM offloading / LMCache-like);
- ``ttl``: fcfs, CacheTTL-style pins over the host tier;
- ``program-plas`` / ``program-atlas``: pyserve's program retention with plas / atlas;
- ``8x-hbm``: fcfs + LRU, no host tier, 8x the GPU KV memory (a bound).

The host tier is ``--cpu-cache-gib`` (1 TiB by default). Per run it prints a JSON line: mean /
P95 session latency, mean TTFT, mean latency per token, prefix hit rate (GPU + host), host hits,
and the simulator's speed (simulated hours per wall minute). Then, per configuration, the
sustainable session rate: the highest rate (linear interpolation over the sweep) whose mean
session latency stays within 2x the unloaded one (the same sessions replayed one at a time). Writes
``benchmarks/results/sessions.jsonl``, ``sessions.md`` and ``sessions.png``.

    python benchmarks/bench_sessions.py --source DIR [--preset llama3-70b-4xh100]
        [--sessions 30] [--rates 0.01,0.03,0.1] [--max-calls 30] [--configs ...]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from pyserve.sim.executor import SimSetup, simulate
from pyserve.sim.report import summarize
from pyserve.sim.sessions import import_sessions

RESULTS = Path(__file__).parent / "results"
CONFIGS = {
    # name: (policy, kv_retention, host tier?, KV capacity scale)
    "vllm-opt": ("vllm-opt", "lru", False, 1.0),
    "lru-host": ("fcfs", "lru", True, 1.0),
    "ttl": ("fcfs", "ttl", True, 1.0),
    "program-plas": ("plas", "program", True, 1.0),
    "program-atlas": ("atlas", "program", True, 1.0),
    "8x-hbm": ("fcfs", "lru", False, 8.0),
}


def run(programs, config: str, preset: str, host_gib: float) -> dict:
    """One simulated replay; the figures the benchmark reports."""
    policy, retention, host, scale = CONFIGS[config]
    setup = SimSetup(preset=preset, preemption_mode="recompute", kv_retention=retention,
                     swap_space_gib=host_gib if host else 0.0, kv_capacity_scale=scale)  # fmt: skip
    t0 = time.perf_counter()
    r = simulate(programs, policy, setup)
    wall = time.perf_counter() - t0
    s = summarize(r)
    st = r.stats
    query = max(1, st["prefix_query_tokens"])
    return {
        "config": config,
        "preset": preset,
        "sessions": len(programs),
        "calls": s["calls"],
        "session_latency_mean_s": s["latency_s"]["mean"],
        "session_latency_p95_s": s["latency_s"]["p95"],
        "ttft_mean_s": s["ttft_s"]["mean"],
        "latency_per_token_mean_s": s["latency_per_token_s"]["mean"],
        "hit_rate": st["prefix_hit_tokens"] / query,
        "host_hit_rate": st.get("host_hit_tokens", 0) / query,
        "blocks_offloaded": st.get("blocks_offloaded", 0),
        "blocks_prefetched": st.get("blocks_prefetched", 0),
        "sim_hours_per_wall_min": (r.meta["sim_s"] / 3600) / (wall / 60),
        "wall_s": wall,
    }


def unloaded_latency(programs, config: str, preset: str, host_gib: float) -> float:
    """Mean session latency with the sessions replayed one at a time (no contention)."""
    spaced = [type(p)(p.program_id, 0.0, p.calls) for p in programs]
    lat = [run([p], config, preset, host_gib)["session_latency_mean_s"] for p in spaced]
    return float(np.mean(lat))


def sustainable_rate(rates: list[float], latencies: list[float], limit: float) -> float:
    """Highest rate whose mean latency is <= limit, linearly interpolated (0 if none)."""
    best = 0.0
    for i, (r, lat) in enumerate(zip(rates, latencies, strict=True)):
        if lat <= limit:
            best = r
            continue
        if i > 0 and latencies[i - 1] <= limit:
            r0, l0 = rates[i - 1], latencies[i - 1]
            best = r0 + (r - r0) * (limit - l0) / (lat - l0)
        break
    return best


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for config in CONFIGS:
        sel = [r for r in rows if r["config"] == config and "rate" in r]
        if not sel:
            continue
        x = [r["rate"] for r in sel]
        for ax, key in zip(axes, ("latency_per_token_mean_s", "ttft_mean_s", "hit_rate"),
                           strict=True):  # fmt: skip
            ax.plot(x, [r[key] for r in sel], marker="o", label=config)
            ax.set_xlabel("sessions / s")
            ax.set_title(key)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"coding-agent sessions, {rows[0]['preset']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, help="kv-cache-tester checkout or its traces/")
    ap.add_argument("--preset", default="llama3-70b-4xh100")
    ap.add_argument("--sessions", type=int, default=30)
    ap.add_argument("--rates", default="0.01,0.03,0.1")
    ap.add_argument("--max-calls", type=int, default=30, help="calls kept per session")
    ap.add_argument("--max-prompt-tokens", type=int, default=131072,
                    help="end a session before a longer request (Llama-3.1's 128K context)")  # fmt: skip
    ap.add_argument("--cpu-cache-gib", type=float, default=1024.0)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "sessions"))
    ap.add_argument("--from-log", default=None,
                    help="re-render the tables and plot from this script's printed JSON lines")  # fmt: skip
    args = ap.parse_args()
    if args.from_log:
        render_log(args)
        return
    rates = [float(x) for x in args.rates.split(",")]
    configs = args.configs.split(",")
    rows = []
    t0 = time.perf_counter()
    # NOTE: the sessions (files and order) depend on the seed only, not on the rate.
    same = import_sessions(args.source, args.sessions, 1.0, args.seed, args.max_calls,
                           args.max_prompt_tokens)  # fmt: skip
    base = unloaded_latency(same, "vllm-opt", args.preset, args.cpu_cache_gib)
    print(json.dumps({"unloaded_session_latency_s": base, "preset": args.preset}), flush=True)
    for rate in rates:
        programs = import_sessions(args.source, args.sessions, rate, args.seed, args.max_calls,
                                   args.max_prompt_tokens)  # fmt: skip
        for config in configs:
            row = {"rate": rate, **run(programs, config, args.preset, args.cpu_cache_gib)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = []
    for config in configs:
        sel = [r for r in rows if r["config"] == config]
        rate = sustainable_rate([r["rate"] for r in sel],
                                [r["session_latency_mean_s"] for r in sel], 2 * base)  # fmt: skip
        summary.append({"config": config, "sustainable_rate": rate, "preset": args.preset})
        print(json.dumps(summary[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".jsonl"), "w") as f:
        for r in rows + summary:
            f.write(json.dumps(r) + "\n")
    write_table(rows, summary, base, args, out.with_suffix(".md"))
    plot(rows, out.with_suffix(".png"))
    print(f"wall {time.perf_counter() - t0:.0f} s; wrote {out}.jsonl/.md/.png")


def render_log(args) -> None:
    """Tables and plot from the JSON lines a (possibly interrupted) run printed (rows of other
    session counts in the same file are skipped)."""
    lines = []
    for text in Path(args.from_log).read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue  # not a result line (a progress message)
    base = next(x["unloaded_session_latency_s"] for x in lines if "unloaded_session_latency_s" in x)
    rows = [x for x in lines if "rate" in x and x.get("sessions") == args.sessions]
    summary = []
    for config in dict.fromkeys(r["config"] for r in rows):
        sel = [r for r in rows if r["config"] == config]
        rate = sustainable_rate([r["rate"] for r in sel],
                                [r["session_latency_mean_s"] for r in sel], 2 * base)  # fmt: skip
        summary.append({"config": config, "sustainable_rate": rate, "preset": args.preset})
    out = Path(args.out)
    with open(out.with_suffix(".jsonl"), "w") as f:
        for r in [{"unloaded_session_latency_s": base}, *rows, *summary]:
            f.write(json.dumps(r) + "\n")
    write_table(rows, summary, base, args, out.with_suffix(".md"))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out}.jsonl/.md/.png from {args.from_log}")


def write_table(rows, summary, base, args, path: Path) -> None:
    keys = ("session_latency_mean_s", "session_latency_p95_s", "ttft_mean_s",
            "latency_per_token_mean_s", "hit_rate", "host_hit_rate", "sim_hours_per_wall_min")  # fmt: skip
    lines = [
        f"# Sessions: {args.preset}, {args.sessions} sessions (<= {args.max_calls} calls), "
        f"host tier {args.cpu_cache_gib:g} GiB",
        "",
        f"Unloaded mean session latency: {base:.1f} s (limit for the sustainable rate: 2x).",
        "",
        "| rate | config | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 2) + "|",
    ]
    for r in rows:
        vals = " | ".join(f"{r[k]:.3g}" if not math.isnan(r[k]) else "-" for k in keys)
        lines.append(f"| {r['rate']:g} | {r['config']} | {vals} |")
    lines += ["", "| config | sustainable sessions/s |", "|---|---|"]
    top = max(r["rate"] for r in rows)
    # NOTE: a config still within the limit at the highest swept rate only has a lower bound
    lines += [f"| {s['config']} | {'>= ' if s['sustainable_rate'] >= top else ''}"
              f"{s['sustainable_rate']:.4g} |" for s in summary]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
