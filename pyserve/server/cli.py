"""``pyserve serve [MODEL]``: the OpenAI-compatible server (``python -m pyserve.server.cli serve``).

``register(subparsers)`` adds the subcommand to the main CLI; ``main(argv)`` runs it alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pyserve.engine.components import EXECUTORS
from pyserve.server.app import API_KEY_ENV, DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_REQUEST_BYTES
from pyserve.server.connections import ConnectionLimits
from pyserve.server.tool_parsers import PARSERS

_LIMITS = ConnectionLimits()
DEFAULT_MAX_PROGRAMS = 1_000_000

# CLI flag -> EngineConfig.from_kwargs keyword (only the ones given are passed on).
ENGINE_OPTIONS = {
    "block_size": int,
    "num_gpu_blocks": int,
    "kv_cache_bytes": int,
    "swap_space_bytes": int,
    "gpu_memory_utilization": float,
    "max_num_batched_tokens": int,
    "max_num_seqs": int,
    "max_model_len": int,
    "preemption_mode": str,
    "kv_retention": str,
    "dtype": str,
    "device": str,
    "attention_backend": str,
    "seed": int,
    "ltr_model": str,
}


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``serve`` to an argparse subparsers object; the parser's ``func`` runs it."""
    p = subparsers.add_parser("serve", help="run the OpenAI-compatible HTTP server",
                              description="Serve MODEL over an OpenAI-compatible HTTP API with "
                              "program sessions, SSE streaming and Prometheus metrics.")  # fmt: skip
    p.add_argument("model", nargs="?", default="builtin:tiny",
                   help="model folder or builtin:<name> (default builtin:tiny); under "
                   "--executor sim only its tokenizer and chat template are used")  # fmt: skip
    p.add_argument("--executor", choices=EXECUTORS, default="real",
                   help="real: run the model (default); sim: no model, each step takes the "
                   "--preset GPU's cost-model time in wall time and draws its tokens as the "
                   "simulator does (docs/sessions.md)")  # fmt: skip
    p.add_argument("--preset", default=None,
                   help="cost-model preset of --executor sim (llama3-8b-h100, ... or a .json)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 (or set {API_KEY_ENV})")  # fmt: skip
    p.add_argument("--policy", default="fcfs", help="scheduling policy (fcfs, priority, plas, gittins, ...)")
    p.add_argument("--served-model-name", default=None, help="model name clients must send")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    p.add_argument("--tool-call-parser", default=None, choices=sorted(PARSERS),
                   help="tool-call format of the model's answers (default: read from the chat "
                   "template)")  # fmt: skip
    p.add_argument("--shutdown-timeout", type=float, default=_LIMITS.shutdown_timeout_s,
                   help="on SIGTERM, drain requests for at most this many seconds, then abort "
                   "the rest (a second SIGTERM exits at once; default %(default)s)")  # fmt: skip
    p.add_argument("--timeout-header", type=float, default=_LIMITS.header_timeout_s,
                   help="close connections whose request headers take longer (s)")  # fmt: skip
    p.add_argument("--timeout-body", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                   help="answer 408 to request bodies that take longer (s)")  # fmt: skip
    p.add_argument("--timeout-keep-alive", type=float, default=_LIMITS.keep_alive_s,
                   help="close idle keep-alive connections after this many seconds")  # fmt: skip
    p.add_argument("--max-connections", type=int, default=_LIMITS.max_connections,
                   help="concurrent connections or requests beyond this get 503")  # fmt: skip
    p.add_argument("--max-programs", type=int, default=DEFAULT_MAX_PROGRAMS,
                   help="live programs; POST /v1/programs beyond this gets 429 (0: no cap)")  # fmt: skip
    p.add_argument("--no-prefix-caching", action="store_true", help="disable the prefix cache")
    p.add_argument("--policy-option", action="append", default=[], metavar="KEY=VALUE",
                   help="scheduler policy knob, e.g. starvation_beta=8 (repeatable)")  # fmt: skip
    p.add_argument("--cpu-threads", type=int, default=None,
                   help="CPU intra-op threads (default: the usable cores minus one, at least 1)")  # fmt: skip
    p.add_argument("--cpu-cache-gib", type=float, default=None,
                   help="host pool (GiB): swap space and the host tier of the prefix cache")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    for name, typ in ENGINE_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    from pyserve.cluster.cli import register_serve_args

    register_serve_args(p)  # --replicas K [--ray-address ADDR]: replicas on Ray behind the router
    p.set_defaults(func=run_serve)
    return p


# Options that mean nothing without a model: refused under --executor sim.
MODEL_ONLY = ("dtype", "device", "attention_backend", "kv_cache_bytes", "gpu_memory_utilization",
              "cpu_threads")  # fmt: skip
SIM_SWAP_GIB = 16.0  # the host pool of --executor sim without --cpu-cache-gib (SimSetup's)


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The engine options given on the command line, as EngineConfig.from_kwargs keywords.
    ValueError for a bad combination (e.g. --executor sim without --preset)."""
    kw = {name: getattr(args, name) for name in ENGINE_OPTIONS if getattr(args, name) is not None}
    kw["policy"] = args.policy
    if getattr(args, "cpu_threads", None) is not None:
        kw["cpu_threads"] = args.cpu_threads
    kw.update(_executor_kwargs(args))
    if args.cpu_cache_gib is not None:
        if not args.cpu_cache_gib >= 0:
            raise ValueError(f"--cpu-cache-gib must be >= 0, got {args.cpu_cache_gib}")
        kw["swap_space_bytes"] = int(args.cpu_cache_gib * 2**30)
    if args.no_prefix_caching:
        kw["enable_prefix_caching"] = False
    options = {}
    if args.policy_option:
        from pyserve.config import parse_policy_options

        options = parse_policy_options(args.policy_option)
    if getattr(args, "max_programs", None) is not None:
        options.setdefault("max_programs", args.max_programs)
    if options:
        kw["policy_options"] = options
    return kw


def _executor_kwargs(args: argparse.Namespace) -> dict:
    executor = getattr(args, "executor", "real")
    preset = getattr(args, "preset", None)
    if executor == "real":
        if preset is not None:
            raise ValueError("--preset needs --executor sim")
        return {}
    if preset is None:
        from pyserve.sim.presets import preset_names

        raise ValueError(f"--executor sim needs --preset NAME ({', '.join(preset_names())} or "
                         "a preset .json)")  # fmt: skip
    from pyserve.sim.presets import get_preset

    get_preset(preset)  # NOTE: ValueError naming the known presets, before anything loads
    given = [n for n in MODEL_ONLY if getattr(args, n, None) is not None]
    if given:
        raise ValueError(f"--{given[0].replace('_', '-')} has no effect under --executor sim "
                         "(no model runs)")  # fmt: skip
    kw = {"executor": "sim", "preset": preset}
    if args.cpu_cache_gib is None and args.swap_space_bytes is None:
        kw["swap_space_bytes"] = int(SIM_SWAP_GIB * 2**30)
    return kw


def run_serve(args: argparse.Namespace) -> int:
    """Loads the model, starts the async engine and serves until interrupted."""
    from pyserve.cluster.cli import build_cluster, wants_cluster
    from pyserve.config import EngineConfig
    from pyserve.engine.async_engine import AsyncEngine
    from pyserve.server.app import build_app
    from pyserve.server.runner import make_server

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.cpu_threads is not None and args.cpu_threads < 1:
        print("pyserve serve: error: --cpu-threads must be >= 1", file=sys.stderr)
        return 2
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():
        print("pyserve serve: error: --api-key (or $PYSERVE_API_KEY) is empty; omit it to serve "
              "without auth", file=sys.stderr)  # fmt: skip
        return 2
    try:
        limits = ConnectionLimits(header_timeout_s=args.timeout_header,
                                  keep_alive_s=args.timeout_keep_alive,
                                  max_connections=args.max_connections,
                                  shutdown_timeout_s=args.shutdown_timeout)  # fmt: skip
        if not args.timeout_body > 0:
            raise ValueError(f"--timeout-body must be > 0, got {args.timeout_body}")
        config = EngineConfig.from_kwargs(args.model, **engine_kwargs(args))
        if wants_cluster(args):
            client = build_cluster(args, config, model_name=args.served_model_name)
        else:
            client = AsyncEngine.from_config(config)
        app = build_app(client, api_key=api_key, max_request_bytes=args.max_request_bytes,
                        served_model_name=args.served_model_name,
                        tool_call_parser=args.tool_call_parser,
                        shutdown_timeout_s=args.shutdown_timeout,
                        body_timeout_s=args.timeout_body)  # fmt: skip
    except ValueError as exc:
        print(f"pyserve serve: error: {exc}", file=sys.stderr)
        return 2
    make_server(app, limits, host=args.host, port=args.port, log_level=args.log_level).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pyserve.server.cli serve ...``."""
    parser = argparse.ArgumentParser(prog="pyserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
