"""``pyserve ltr train|eval``: train the prompt ranker on ShareGPT V3 and report Kendall's tau.

Wire-up (pyserve/cli.py): ``pyserve.ltr.cli.register(sub)`` where ``sub`` is the object returned
by ``parser.add_subparsers()``; each leaf parser sets ``func=`` taking the parsed ``args``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


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
    tr.add_argument("--max-length", type=_positive_int, default=128, help="minilm: prompt tokens")
    tr.add_argument(
        "--tokenizer",
        choices=["auto", "minilm", "whitespace"],
        default="auto",
        help="how output lengths are counted",
    )
    tr.add_argument("--seed", type=int, default=0)
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

    kind = args.encoder
    kwargs = (
        {"max_length": args.max_length, "train_layers": args.train_layers}
        if kind == "minilm"
        else {}
    )
    data = load_sharegpt(tokenizer=args.tokenizer)
    train, _ = split_by_conversation(data)
    train = train.subset(subsample(len(train.prompts), args.max_train, args.seed))
    _log(
        f"{data.n_conversations} complete conversations, {len(train.prompts)} training pairs, "
        f"lengths counted with {data.tokenizer} tokens; encoder {kind}"
    )
    ranker = Ranker.create(kind, **kwargs)
    ranker.fit(
        train.prompts,
        train.lengths,
        epochs=args.epochs,
        list_size=args.list_size,
        lr=args.lr,
        seed=args.seed,
        log=_log,
    )
    ranker.meta.update(
        dataset="sharegpt_v3", n_conversations=data.n_conversations, length_tokenizer=data.tokenizer
    )
    ranker.save(args.out)
    print(json.dumps({"out": str(args.out), **ranker.meta}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Print JSON: Kendall's tau on ShareGPT's last 20%, n, and latency per request (ms)."""
    from pyserve.ltr.data import load_sharegpt, split_by_conversation
    from pyserve.ltr.ranker import Ranker

    ranker = Ranker.load(args.dir)
    data = load_sharegpt(tokenizer=ranker.meta.get("length_tokenizer", "auto"))
    _, ev = split_by_conversation(data)
    ev = ev.subset(subsample(len(ev.prompts), args.max_eval, args.seed))
    result = ranker.evaluate(ev.prompts, ev.lengths)
    result.update(
        encoder=ranker.kind,
        length_tokenizer=data.tokenizer,
        latency_ms_batch1=ranker.latency_ms(ev.prompts, 1, max_batches=100),
        latency_ms_batch32=ranker.latency_ms(ev.prompts, 32, max_batches=10),
    )
    print(json.dumps(result))
    return 0
