"""Command-line hooks for serving a Ray cluster of replicas.

The server CLI calls :func:`register_serve_args` on its ``serve`` parser and, when
:func:`wants_cluster` is true, :func:`build_cluster` instead of a single-process engine.
Run it as ``pyserve serve builtin:tiny --replicas 2 [--ray-address ADDR]``.
"""

from __future__ import annotations

import argparse

from pyserve.cluster.router import LOAD_SIGNALS, ROUTING_POLICIES, RouterOptions
from pyserve.config import EngineConfig


def register_serve_args(parser: argparse.ArgumentParser) -> None:
    """Adds ``--replicas K --ray-address ADDR --routing --load-signal --short-call-tokens``."""
    g = parser.add_argument_group("cluster (Ray)")
    g.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="engine replicas behind the program-aware router (> 1 uses Ray)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        help="address of a running Ray cluster (default: start one locally)",
    )
    g.add_argument("--routing", choices=ROUTING_POLICIES, default="locality")
    g.add_argument("--load-signal", choices=LOAD_SIGNALS, default="calls")
    g.add_argument("--short-call-tokens", type=int, default=2048,
                   help="locality: calls with at most this many prompt tokens are balanced")  # fmt: skip


def wants_cluster(args: argparse.Namespace) -> bool:
    """Whether the arguments ask for a Ray cluster (more than one replica or a Ray address)."""
    return args.replicas > 1 or args.ray_address is not None


def build_cluster(args: argparse.Namespace, config: EngineConfig, model_name: str | None = None):
    """A :class:`~pyserve.cluster.cluster.RayCluster` from the parsed arguments. ValueError for bad
    values or when ray is missing."""
    from pyserve.cluster.cluster import RayCluster

    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    options = RouterOptions(routing=args.routing, load_signal=args.load_signal,
                            short_call_tokens=args.short_call_tokens,
                            block_size=config.cache.block_size)  # fmt: skip
    return RayCluster(config, args.replicas, ray_address=args.ray_address, router=options,
                      model_name=model_name)  # fmt: skip
