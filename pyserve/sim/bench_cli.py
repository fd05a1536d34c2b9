"""``pyserve bench run`` and ``pyserve bench compare``: replay traces and compare policies.

The main CLI mounts them with :func:`register_run` and :func:`register_compare`;
``python -m pyserve.sim.bench_cli run|compare ...`` runs them standalone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

from pyserve import _core
from pyserve.config import parse_policy_options
from pyserve.sim.executor import SimSetup, policy_choices, replay_real, simulate
from pyserve.sim.presets import preset_names
from pyserve.sim.report import plot_sweep, run_table, summarize, sweep_tables
from pyserve.sim.trace import load_trace
from pyserve.sim.workloads import SHAREGPT_SOURCES, WORKLOADS, generate

DEFAULT_POLICIES = "vllm,vllm-opt,plas,atlas,gittins,srpt"
# Enough rates to resolve the knee of the default Mixed sweep (vllm-opt bends near 1-2/s).
DEFAULT_RATES = "0.25,0.5,1,1.5,2,3,4"


def _add_setup_args(p: argparse.ArgumentParser) -> None:
    d = SimSetup()
    p.add_argument(
        "--preset",
        default=d.preset,
        help=f"cost-model preset ({', '.join(preset_names())}) or a preset .json",
    )
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
    p.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    p.add_argument("--preemption-mode", choices=("swap", "recompute"), default=d.preemption_mode)
    p.add_argument(
        "--cpu-cache-gib",
        "--swap-space-gib",
        dest="cpu_cache_gib",
        type=float,
        default=d.swap_space_gib,
        help="host pool (GiB): swap space and the host tier of the prefix cache "
        "(vllm-opt runs without one)",
    )
    p.add_argument(
        "--kv-retention",
        choices=tuple(_core.retention_names()),
        default=d.kv_retention,
        help="what happens to a program's KV between its calls (docs/sessions.md)",
    )
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument(
        "--policy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra SchedulerConfig field for the policy (repeatable)",
    )
    p.add_argument(
        "--ltr-sigma",
        type=float,
        default=d.ltr_sigma,
        help="noise of the simulated ranker: ltr_score = output * exp(sigma * z)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def setup_from_args(args: argparse.Namespace) -> SimSetup:
    """The :class:`SimSetup` the shared options describe."""
    return SimSetup(
        preset=args.preset,
        block_size=args.block_size,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        preemption_mode=args.preemption_mode,
        swap_space_gib=args.cpu_cache_gib,
        kv_retention=args.kv_retention,
        enable_prefix_caching=not args.no_prefix_caching,
        policy_options=parse_policy_options(args.policy_option),
        ltr_sigma=args.ltr_sigma,
    )


def register_run(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``run``: replay one trace under one policy and print its aggregates."""
    p = subparsers.add_parser("run", help="replay a program trace under one policy")
    p.add_argument("--trace", required=True, help="program trace (JSONL, docs/traces.md)")
    p.add_argument("--policy", required=True, help=f"one of {', '.join(policy_choices())}")
    p.add_argument("--executor", choices=("sim", "real"), default="sim")
    p.add_argument("--model", default="builtin:tiny", help="model of --executor real")
    p.add_argument("--engine-executor", choices=("real", "sim"), default="real",
                   help="what runs the steps of --executor real: the model (real) or the "
                   "simulated --preset GPU in wall time, as `pyserve serve --executor sim`")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the aggregates as JSON")
    _add_setup_args(p)
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    programs = load_trace(args.trace)
    setup = setup_from_args(args)
    progress = not args.no_progress and not args.json
    if args.executor == "sim":
        result = simulate(programs, args.policy, setup, progress=progress)
    else:
        result = replay_real(programs, args.policy, setup, args.model, progress=progress,
                             engine_executor=args.engine_executor)
    summary = summarize(result)
    if args.json:
        print(json.dumps(summary, indent=2, default=float))
    else:
        meta = result.meta
        print(
            f"policy {args.policy} on {args.trace} ({meta['executor']}, {meta.get('preset', args.model)})"
        )
        print(run_table(summary))
        if args.executor == "sim":
            print(
                f"\nsimulated {meta['sim_s']:.1f} s in {meta['wall_s']:.2f} s wall "
                f"({meta['speedup']:.0f}x real time)"
            )
        elif args.engine_executor == "sim":
            st = result.stats
            print(
                f"\n{meta['wall_s']:.1f} s wall on the simulated {meta['preset']}: "
                f"{st['sim_steps']} steps, {st['sim_modeled_seconds_total']:.1f} s of GPU time; "
                f"lag max {st['sim_lag_seconds_max'] * 1e3:.1f} ms, "
                f"{st['sim_late_steps']} late steps"
            )
    return 0


def register_compare(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``compare``: sweep arrival rates for several policies; table + PNG."""
    p = subparsers.add_parser("compare", help="compare policies over a sweep of arrival rates")
    p.add_argument("--workload", choices=WORKLOADS, default="mixed")
    p.add_argument("--programs", type=int, default=200, help="programs per run")
    p.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help="comma-separated; unknown names are skipped with a warning",
    )
    p.add_argument("--rates", default=DEFAULT_RATES, help="comma-separated programs/s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sharegpt-source", choices=SHAREGPT_SOURCES, default="synthetic")
    p.add_argument(
        "--slo-factor",
        default="2,5",
        help="latency lines = these x the best policy's low-load latency per token (comma list)",
    )
    p.add_argument("--out", default="bench_out", help="directory for the PNG, table and JSON")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="simulations run in parallel worker processes",
    )
    _add_setup_args(p)
    p.set_defaults(func=_compare)
    return p


def parse_rates(text: str, option: str = "--rates") -> list[float]:
    """``"0.5,1,2"`` -> sorted unique positive floats; ValueError naming ``option`` if bad."""
    try:
        rates = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not rates or not all(r > 0 and math.isfinite(r) for r in rates):
        raise ValueError(f"{option} needs at least one positive number, got {text!r}")
    return rates


def known_policies(text: str) -> list[str]:
    """The listed policies that exist; warns on stderr about the others."""
    names, known = [x.strip() for x in text.split(",") if x.strip()], policy_choices()
    for n in names:
        if n not in known:
            print(
                f"warning: skipping unknown policy {n!r} (known: {', '.join(known)})",
                file=sys.stderr,
            )
    keep = list(dict.fromkeys(n for n in names if n in known))
    if not keep:
        raise ValueError(f"no known policy in {text!r}")
    return keep


@functools.lru_cache(maxsize=4)
def _programs(workload: str, num_programs: int, rate: float, seed: int, source: str) -> tuple:
    return tuple(generate(workload, num_programs, rate, seed, source))


def _one_run(args: tuple) -> tuple:
    workload, num_programs, rate, seed, source, policy, setup = args
    programs = _programs(workload, num_programs, rate, seed, source)
    return policy, rate, summarize(simulate(programs, policy, setup))


def run_sweep(
    workload: str,
    num_programs: int,
    policies: list[str],
    rates: list[float],
    setup: SimSetup,
    seed: int = 0,
    sharegpt_source: str = "synthetic",
    progress: bool = True,
    jobs: int = 1,
) -> dict:
    """{policy: {rate: summary}}; every policy sees the same trace at a given rate.
    ``jobs`` > 1 runs the simulations in that many worker processes."""
    from tqdm import tqdm

    tasks = [
        (workload, num_programs, rate, seed, sharegpt_source, policy, setup)
        for rate in rates
        for policy in policies
    ]
    sweep: dict = {p: {} for p in policies}
    bar = tqdm(total=len(tasks), unit="run", desc="compare", disable=not progress)
    if jobs <= 1:
        results = map(_one_run, tasks)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs)
        futures = [pool.submit(_one_run, t) for t in tasks]
        results = (f.result() for f in concurrent.futures.as_completed(futures))
    try:
        for policy, rate, summary in results:
            sweep[policy][rate] = summary
            bar.set_postfix_str(f"{policy} @ {rate:g}/s")
            bar.update()
    finally:
        bar.close()
        if jobs > 1:
            pool.shutdown(cancel_futures=True)
    return {p: dict(sorted(v.items())) for p, v in sweep.items()}


def _compare(args: argparse.Namespace) -> int:
    if args.programs < 1:
        raise ValueError(f"--programs must be >= 1, got {args.programs}")
    rates, policies = parse_rates(args.rates), known_policies(args.policies)
    factors = parse_rates(args.slo_factor, "--slo-factor")
    setup = setup_from_args(args)
    t0 = time.perf_counter()
    sweep = run_sweep(
        args.workload,
        args.programs,
        policies,
        rates,
        setup,
        args.seed,
        args.sharegpt_source,
        progress=not args.no_progress,
        jobs=args.jobs,
    )
    title = f"{args.workload}, {args.programs} programs, {setup.preset}"
    tables = sweep_tables(sweep, factors)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(f"# {title}\n\n{tables}\n")
    (out / "compare.json").write_text(
        json.dumps(
            {p: {str(r): s for r, s in v.items()} for p, v in sweep.items()},
            indent=1,
            default=float,
        )
    )
    plot_sweep(sweep, str(out / "compare.png"), factors, title)
    print(f"# {title}\n\n{tables}\n")
    print(f"wrote {out / 'compare.md'}, {out / 'compare.png'}, {out / 'compare.json'}")
    runs = len(policies) * len(rates)
    print(f"{runs} simulations in {time.perf_counter() - t0:.0f} s wall ({args.jobs} jobs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m pyserve.sim.bench_cli run|compare ...`` (= ``pyserve bench``)."""
    from pyserve.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
