"""Aggregates, tables and plots of benchmark runs.

``summarize`` turns a :class:`~pyserve.sim.driver.RunResult` into flat aggregates. A rate sweep
(``{policy: {rate: summary}}``) is compared by **throughput at equal latency**: for a metric
(mean or P95 program latency per token) the *latency line* is ``slo_factor`` times the best
policy's value at the lowest swept rate (its low-load latency); a policy *sustains* the highest
arrival rate at which its metric is still under the line, interpolated linearly between the last
swept rate under the line and the first one above it. A policy that stays under the line at every
swept rate is *censored*: it sustains at least the highest swept rate (shown as ``>=``), and its
gains are lower bounds. A policy already over the line at the lowest swept rate sustains less than
that rate (shown as ``<``): gains over it are lower bounds (``>``), its own gains upper bounds.
The gain of policy A over baseline B is sustained(A) / sustained(B); ``?`` when both are bounds
in the same direction.

A program's *wait* is the longest queueing delay (release to first step) of any of its calls;
*starvation* is the longest wait of any program.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from pyserve.sim.driver import RunResult

PERCENTILES = (50, 95, 99)
BASELINE_ORDER = ("vllm", "vllm-opt", "fcfs", "mlfq")


def dist(values: np.ndarray) -> dict[str, float]:
    """mean / p50 / p95 / p99 of a sample (NaN when empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, **{f"p{q}": math.nan for q in PERCENTILES}}
    out = {"mean": float(v.mean())}
    for q, x in zip(PERCENTILES, np.percentile(v, PERCENTILES), strict=True):
        out[f"p{q}"] = float(x)
    return out


def summarize(r: RunResult) -> dict:
    """Aggregates of one run: distributions, makespan, throughput, preemptions, swap, caching."""
    st, meta = r.stats, r.meta
    makespan = float(r.program_finish.max() - r.arrival.min())
    tokens = int(r.output_tokens.sum())
    waits = program_waits(r)
    block_bytes = meta.get("block_size", 0) * meta.get("kv_bytes_per_token", 0)
    swapped = st.get("blocks_swapped_out", 0) + st.get("blocks_swapped_in", 0)
    query = st.get("prefix_query_tokens", 0)
    return {
        "policy": meta.get("policy", ""),
        "programs": len(r.program_ids),
        "calls": len(r.call_ids),
        "output_tokens": tokens,
        "latency_s": dist(r.latency),
        "latency_per_token_s": dist(r.latency_per_token),
        "ttft_s": dist(r.ttft),
        "inter_token_s": dist(r.inter_token_times()),
        "queueing_delay_s": dist(r.queueing_delay),
        "program_wait_s": dist(waits),
        "starvation_s": float(waits.max()) if waits.size else math.nan,
        "makespan_s": makespan,
        "throughput_programs_per_s": len(r.program_ids) / makespan if makespan > 0 else math.nan,
        "throughput_tokens_per_s": tokens / makespan if makespan > 0 else math.nan,
        "preemptions": st.get("num_preemptions_recompute", 0) + st.get("num_preemptions_swap", 0),
        "swap_blocks": swapped,
        "swap_bytes": swapped * block_bytes,  # 0 when the executor does not report KV sizes
        "prefix_hit_rate": st.get("prefix_hit_tokens", 0) / query if query else 0.0,
        "steps": r.num_steps,
        "sim_s": meta.get("sim_s", math.nan),
        "wall_s": meta.get("wall_s", math.nan),
        "meta": {k: v for k, v in meta.items() if k != "timings"},
    }


def program_waits(r: RunResult) -> np.ndarray:
    """Per program: the longest queueing delay of any of its calls (s)."""
    out = np.zeros(len(r.program_ids))
    np.maximum.at(out, r.program, r.queueing_delay)
    return out


def _fmt(x: float, digits: int = 3) -> str:
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub markdown table; floats get 3 significant digits."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def run_table(summary: dict) -> str:
    """The aggregates of one run as a markdown table (times in ms)."""
    rows = []
    keys = ("latency_s", "latency_per_token_s", "ttft_s", "inter_token_s", "queueing_delay_s",
            "program_wait_s")  # fmt: skip
    for key in keys:
        d = summary[key]
        rows.append([key.removesuffix("_s") + " (ms)", *(1e3 * d[k] for k in d)])
    table = markdown_table(["metric", "mean", "p50", "p95", "p99"], rows)
    scalars = [
        [
            "programs / calls / output tokens",
            f"{summary['programs']} / {summary['calls']} / {summary['output_tokens']}",
        ],
        ["starvation: longest program wait (s)", summary["starvation_s"]],
        ["makespan (s)", summary["makespan_s"]],
        [
            "throughput (programs/s, tokens/s)",
            f"{_fmt(summary['throughput_programs_per_s'])}, "
            f"{_fmt(summary['throughput_tokens_per_s'])}",
        ],
        ["preemptions", summary["preemptions"]],
        ["swap (GiB)", summary["swap_bytes"] / 2**30],
        ["prefix hit rate", summary["prefix_hit_rate"]],
        ["steps", summary["steps"]],
    ]
    return table + "\n\n" + markdown_table(["", "value"], scalars)


def sustained_rate(rates: Sequence[float], values: Sequence[float], line: float) -> tuple:
    """(rate, bound) over a sweep (see the module docstring): the highest rate with value <= line
    and bound ``""`` when interpolated, ``">="`` when under the line at every swept rate (rate =
    the highest), ``"<"`` when over it already at the lowest one (rate = the lowest).
    """
    order = np.argsort(rates)
    r = np.asarray(rates, dtype=float)[order]
    v = np.asarray(values, dtype=float)[order]
    over = np.flatnonzero(~(v <= line))
    if over.size == 0:
        return float(r[-1]), ">="
    i = int(over[0])
    if i == 0:
        return float(r[0]), "<"
    r0, r1, v0, v1 = r[i - 1], r[i], v[i - 1], v[i]
    if not math.isfinite(v1) or v1 <= v0:
        return float(r0), ""
    return float(r0 + (line - v0) * (r1 - r0) / (v1 - v0)), ""


def metric_curves(sweep: dict, metric: str, stat: str) -> dict[str, tuple[list, list]]:
    """{policy: (rates, values)} of ``summary[metric][stat]`` from a sweep."""
    out = {}
    for policy, by_rate in sweep.items():
        rates = sorted(by_rate)
        out[policy] = (rates, [by_rate[x][metric][stat] for x in rates])
    return out


def latency_line(curves: dict[str, tuple[list, list]], slo_factor: float) -> float:
    """``slo_factor`` times the best (lowest) value at the lowest swept rate."""
    if not slo_factor > 0:
        raise ValueError(f"slo_factor must be > 0, got {slo_factor}")
    lowest = min(rates[0] for rates, _ in curves.values())
    base = [v[0] for rates, v in curves.values() if rates[0] == lowest and math.isfinite(v[0])]
    if not base:
        raise ValueError("no policy has a finite value at the lowest rate")
    return slo_factor * min(base)


def throughput_at_equal_latency(sweep: dict, stat: str, slo_factor: float) -> dict:
    """{'line': s/token, 'rates': {policy: (sustained rate, censored)}} for one statistic."""
    curves = metric_curves(sweep, "latency_per_token_s", stat)
    line = latency_line(curves, slo_factor)
    return {"line": line, "rates": {p: sustained_rate(r, v, line) for p, (r, v) in curves.items()}}


# (bound of A, bound of B) -> bound of sustained(A) / sustained(B); None: unknown
_GAIN_BOUND = {
    ("", ""): "", (">=", ""): ">=", ("", ">="): "<=", ("", "<"): ">", (">=", "<"): ">",
    ("<", ""): "<", ("<", ">="): "<", (">=", ">="): None, ("<", "<"): None,
}  # fmt: skip


def _gain(a: tuple, b: tuple) -> str:
    (ra, ca), (rb, cb) = a, b
    bound = _GAIN_BOUND[(ca, cb)]
    if bound is None:
        return "?"
    return f"{bound}{ra / rb:.2f}x"


def _factors(slo_factors: float | Sequence[float]) -> list[float]:
    return [float(slo_factors)] if isinstance(slo_factors, (int, float)) else list(slo_factors)


def gain_table(sweep: dict, slo_factor: float) -> str:
    """Markdown: sustained rate under the mean and P95 lines, and gains over the baselines."""
    policies = list(sweep)
    baselines = [b for b in BASELINE_ORDER if b in sweep]
    head = ["policy"]
    results = {}
    for stat in ("mean", "p95"):
        results[stat] = throughput_at_equal_latency(sweep, stat, slo_factor)
        head += [f"rate @ {stat} <= {1e3 * results[stat]['line']:.3g} ms"]
        head += [f"{stat} gain vs {b}" for b in baselines]
    rows = []
    for p in policies:
        row = [p]
        for stat in ("mean", "p95"):
            rr = results[stat]["rates"]
            rate, bound = rr[p]
            row.append(f"{bound}{rate:.3g}")
            row += ["1.00x" if b == p else _gain(rr[p], rr[b]) for b in baselines]
        rows.append(row)
    return "\n".join(
        [
            f"Throughput at equal latency (line = {slo_factor:g}x the best low-load value):",
            "",
            markdown_table(head, rows),
        ]
    )


def sweep_tables(sweep: dict, slo_factors: float | Sequence[float]) -> str:
    """Markdown: latency per token (mean, P95, P99) and starvation per policy and rate, then one
    gain table per line factor."""
    policies = list(sweep)
    rates = sorted({x for by_rate in sweep.values() for x in by_rate})
    rows = []
    for p in policies:
        for stat in ("mean", "p95", "p99"):
            cells = [
                1e3 * sweep[p][x]["latency_per_token_s"][stat] if x in sweep[p] else math.nan
                for x in rates
            ]
            rows.append([p, stat, *cells])
        rows.append([p, "starvation (s)", *[
            sweep[p][x].get("starvation_s", math.nan) if x in sweep[p] else math.nan
            for x in rates]])  # fmt: skip
    parts = [
        "Program latency per output token (ms/token; starvation: the longest program wait, s)"
        " vs arrival rate (programs/s):",
        "",
        markdown_table(["policy", "stat", *[f"{x:g}" for x in rates]], rows),
    ]
    for factor in _factors(slo_factors):
        parts += ["", gain_table(sweep, factor)]
    return "\n".join(parts)


def plot_sweep(
    sweep: dict, path: str, slo_factors: float | Sequence[float], title: str = ""
) -> None:
    """PNG: mean and P95 latency per token vs rate, one line per policy, with the latency lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, stat in zip(axes, ("mean", "p95"), strict=True):
        curves = metric_curves(sweep, "latency_per_token_s", stat)
        for policy, (rates, values) in curves.items():
            ax.plot(rates, [1e3 * v for v in values], marker="o", label=policy)
        for factor, style in zip(_factors(slo_factors), ("--", ":", "-."), strict=False):
            line = latency_line(curves, factor)
            ax.axhline(
                1e3 * line,
                color="gray",
                linestyle=style,
                linewidth=1,
                label=f"{factor:g}x best low-load",
            )
        rates = sorted({x for r, _ in curves.values() for x in r})
        if rates[-1] >= 10 * rates[0]:
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arrival rate (programs/s)")
        ax.set_ylabel(f"{stat} latency per token (ms)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
