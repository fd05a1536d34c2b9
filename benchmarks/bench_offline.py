"""Offline throughput of LLM.generate on this machine.

256 requests of 128 prompt + 128 output tokens (ignore_eos) on `builtin:tiny` and on a ~100M
parameter Llama-shaped random-weight folder (built once with transformers' save_pretrained).
Drives the engine as ``LLM.generate`` does (messages in, StepReports out, the offline
OutputProcessor between steps). Reports output tokens/s and, over full-batch decode steps, the
median share of step time spent outside the model forward (core + sampling + metadata +
post-processing) and the share spent in post-processing alone (building the report from the
core's and consuming it: detokenizing, stop strings, outputs), with the per-step host
milliseconds. One JSON line per case.

    python benchmarks/bench_offline.py [--requests 256] [--models tiny,100m]
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
from pyserve.engine.messages import AddCall, CallSpec
from pyserve.engine.output_processor import OutputProcessor
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


def run(model: str, n: int, budget: int) -> dict:
    llm = LLM(model, kv_cache_bytes=2 << 30, max_num_seqs=n, max_num_batched_tokens=budget,
              max_model_len=PROMPT + OUTPUT + 16)  # fmt: skip
    vocab = llm.engine.model.config.vocab_size
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, vocab, size=PROMPT).tolist() for _ in range(n)]
    params = SamplingParams(max_tokens=OUTPUT, temperature=0.0, ignore_eos=True)
    eng = llm.engine
    proc = OutputProcessor(eng.tokenizer, stream=False)
    for rid, p in enumerate(prompts):
        proc.add(eng.handle(AddCall(CallSpec(f"b{rid}", p, params))))
    steps = []
    t0 = time.perf_counter()
    produced = 0
    while eng.has_unfinished():
        s0 = time.perf_counter()
        rep = eng.step()
        s1 = time.perf_counter()
        proc.process(rep)
        s2 = time.perf_counter()
        produced += rep.num_new_tokens
        post = rep.timings["report_s"] + (s2 - s1)
        steps.append((rep.num_tokens, s2 - s0, rep.timings["forward_s"], post))
    wall = time.perf_counter() - t0
    decode = [(t, f, p) for (nt, t, f, p) in steps if nt == n]  # full-batch decode steps

    def med(values) -> float | None:
        return statistics.median(values) if decode else None

    outside, post = med([(t - f) / t for t, f, _ in decode]), med([p / t for t, _, p in decode])
    host_ms = med([(t - f) * 1e3 for t, f, _ in decode])
    step_ms = med([t * 1e3 for t, _, _ in decode])
    return {
        "model": model,
        "requests": n,
        "output_tokens": produced,
        "output_tokens_per_s": round(produced / wall, 1),
        "wall_s": round(wall, 2),
        "steps": len(steps),
        "decode_batch": n,
        "median_decode_step_ms": None if step_ms is None else round(step_ms, 2),
        "median_host_ms_per_step": None if host_ms is None else round(host_ms, 2),
        "outside_forward_fraction": None if outside is None else round(outside, 4),
        "postprocess_fraction": None if post is None else round(post, 4),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--models", default="tiny,100m")
    ap.add_argument(
        "--batches",
        default="",
        help="comma list of request counts to run instead of --requests (scaling)",
    )
    ap.add_argument("--budget", type=int, default=8192)
    args = ap.parse_args()
    names = {"tiny": lambda: "builtin:tiny", "100m": llama_100m}
    counts = [int(b) for b in args.batches.split(",") if b] or [args.requests]
    for key in args.models.split(","):
        for n in counts:
            print(json.dumps(run(names[key](), n, args.budget)), flush=True)


if __name__ == "__main__":
    main()
