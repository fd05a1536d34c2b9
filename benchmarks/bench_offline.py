"""Offline throughput of LLM.generate on this machine.

256 requests of 128 prompt + 128 output tokens (ignore_eos) on `builtin:tiny` and on a ~100M
parameter Llama-shaped random-weight folder (built once with transformers' save_pretrained).
Reports output tokens/s and the fraction of step time spent outside the model forward (Python +
C++ core + sampling + metadata), at the largest decode batch. One JSON line per case.

    python benchmarks/bench_offline.py [--requests 256] [--models tiny,100m]
        [--attention-backends auto]   # e.g. reference,cpu: each backend in turn, per model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pyserve import LLM, SamplingParams
from pyserve.model.loader import resolve_model_path

PROMPT, OUTPUT = 128, 128


def llama_100m() -> str:
    """A ~100M-parameter Llama folder with seeded random weights (cached)."""
    root = Path(os.environ.get("PYSERVE_CACHE", Path.home() / ".cache" / "pyserve"))
    folder = root / "bench-llama-100m"
    if not (folder / "config.json").exists():
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=16000, hidden_size=768, intermediate_size=2048,
                          num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                          max_position_embeddings=2048, tie_word_embeddings=False)  # fmt: skip
        LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
        # The prompts are token ids; borrow builtin:tiny's byte-level tokenizer for the folder.
        tiny = resolve_model_path("builtin:tiny")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny / name, folder / name)
    return str(folder)


def run(model: str, n: int, budget: int, attention_backend: str = "auto") -> dict:
    llm = LLM(model, kv_cache_bytes=2 << 30, max_num_seqs=n, max_num_batched_tokens=budget,
              max_model_len=PROMPT + OUTPUT + 16,
              attention_backend=attention_backend)  # fmt: skip
    vocab = llm.engine.model.config.vocab_size
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, vocab, size=PROMPT).tolist() for _ in range(n)]
    params = SamplingParams(max_tokens=OUTPUT, temperature=0.0, ignore_eos=True)
    eng = llm.engine
    for rid, p in enumerate(prompts):
        eng.add_request(f"b{rid}", p, params)
    steps = []
    t0 = time.perf_counter()
    produced = 0
    while eng.has_unfinished():
        s0 = time.perf_counter()
        outs = eng.step()
        total = time.perf_counter() - s0
        produced += sum(len(o.delta_token_ids) for o in outs)
        steps.append((eng.last_step["num_tokens"], total, eng.runner.last_forward_s))
    wall = time.perf_counter() - t0
    decode = [(t, f) for (nt, t, f) in steps if nt == n]  # full-batch decode steps
    frac = statistics.median([(t - f) / t for t, f in decode]) if decode else None
    return {
        "model": model,
        "attention": type(eng.runner.attn).__name__,
        "requests": n,
        "output_tokens": produced,
        "output_tokens_per_s": round(produced / wall, 1),
        "wall_s": round(wall, 2),
        "steps": len(steps),
        "decode_batch": n,
        "median_decode_step_ms": round(statistics.median(t for t, _ in decode) * 1e3, 2)
        if decode
        else None,
        "outside_forward_fraction": round(frac, 4) if frac is not None else None,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--models", default="tiny,100m")
    ap.add_argument("--budget", type=int, default=8192)
    ap.add_argument("--attention-backends", default="auto",
                    help="comma list of attention_backend values, run in turn per model")  # fmt: skip
    args = ap.parse_args()
    names = {"tiny": lambda: "builtin:tiny", "100m": llama_100m}
    for key in args.models.split(","):
        for backend in args.attention_backends.split(","):
            row = run(names[key](), args.requests, args.budget, backend)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
