"""`pyserve` command line: serve | generate | bench (gen, run, compare) | calibrate | ltr."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# (command, module, function): the function adds the subcommand; its parser sets
# `func(args) -> int | None`.
_TOP = [("serve", "pyserve.server.cli", "register"),
        ("calibrate", "pyserve.sim.cli", "register_calibrate"),
        ("ltr", "pyserve.ltr.cli", "register")]  # fmt: skip
_BENCH = [("gen", "pyserve.sim.cli", "register_gen"),
          ("run", "pyserve.sim.bench_cli", "register_run"),
          ("compare", "pyserve.sim.bench_cli", "register_compare")]  # fmt: skip


def _mount(sub, hooks) -> None:
    for command, module, fn in hooks:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # an optional extra is missing: say so only when used
            p = sub.add_parser(command, help=f"(unavailable: needs {exc.name})")
            p.set_defaults(func=lambda args, e=exc: _missing(e))
            continue
        getattr(mod, fn)(sub)


def _missing(exc: ImportError) -> int:
    print(f"error: this command needs the optional dependency {exc.name!r}", file=sys.stderr)
    return 2


def _generate(args: argparse.Namespace) -> int:
    from pyserve import LLM, SamplingParams

    llm = LLM(args.model, policy=args.policy)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            seed=args.seed)  # fmt: skip
    for out in llm.generate(args.prompt, params, use_tqdm=False):
        c = out.outputs[0]
        print(json.dumps({"prompt": out.prompt, "text": c.text, "finish_reason": c.finish_reason,
                          "ttft_s": out.metrics.ttft}))  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyserve", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="offline generation for a few prompts")
    gen.add_argument("prompt", nargs="+")
    gen.add_argument("--model", default="builtin:tiny")
    gen.add_argument("--max-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--policy", default="fcfs")
    gen.set_defaults(func=_generate)
    bench = sub.add_parser("bench", help="program traces, simulator and benchmark driver")
    _mount(bench.add_subparsers(dest="bench_command", required=True), _BENCH)
    _mount(sub, _TOP)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
