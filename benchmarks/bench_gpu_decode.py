"""Decode step time and prefill throughput of a Llama-3.1-8B-shaped random-weight model (bf16).

Decode: batch 1-256 x context 1K-8K (points whose KV does not fit are skipped), each step timed
with CUDA events (attention plan + forward + logits) and compared with the HBM roofline: weight +
KV bytes over the device-to-device copy bandwidth measured in the same run. Prefill: tokens/s of
2K-token chunks (fresh and after a 6K cached prefix) against the bf16 matmul ceiling measured in
the same run. Prints JSON lines; writes benchmarks/results/gpu_decode.md and, for the
simulator's ``calibrate``, benchmarks/results/gpu_steps.jsonl.

    python benchmarks/bench_gpu_decode.py [--batches 1 8 64] [--contexts 1024 4096]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from pyserve.attention.base import build_attention_metadata
from pyserve.kv.cache import KVCache
from pyserve.model.config import ModelConfig
from pyserve.model.registry import get_model_class

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 16
LLAMA_3_1_8B = {  # the Hugging Face config.json fields of meta-llama/Llama-3.1-8B
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip


def event_ms(fn, repeat: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` on the current stream, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _copy_ms() -> float:
    src = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
    dst = torch.empty_like(src)
    return event_ms(lambda: dst.copy_(src), repeat=10)


def _matmul_ms() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return event_ms(lambda: a @ b, repeat=10)


def ceilings() -> dict:
    """Device-to-device copy bandwidth (read + write bytes) and bf16 matmul rate, measured."""
    copy_ms, mm_ms = _copy_ms(), _matmul_ms()
    torch.cuda.empty_cache()
    return {
        "copy_bytes_per_s": 2 * 2 * (1 << 30) / (copy_ms / 1e3),
        "bf16_flops_per_s": 2 * 8192**3 / (mm_ms / 1e3),
    }


def build_model(config: ModelConfig) -> torch.nn.Module:
    """The registry's model class on CUDA in bf16 with random weights (std 0.02, norms 1)."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = get_model_class(config.architecture)(config)
        finally:
            torch.set_default_dtype(previous)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model.eval()


def attention_backend(cache: KVCache, cfg: ModelConfig):
    from pyserve.attention.flashinfer import FlashInferAttention, flashinfer_available
    from pyserve.attention.reference import ReferenceAttention

    cls = FlashInferAttention if flashinfer_available() else ReferenceAttention
    return cls(cache, cfg.num_attention_heads, cfg.head_dim)


def step_plan(q_lens: list[int], ctx_lens: list[int], num_decodes: int, blocks: np.ndarray):
    """A StepPlan-like step: sequence i owns consecutive ids of the shuffled ``blocks``."""
    i32 = np.int32
    qo = np.concatenate([[0], np.cumsum(q_lens)]).astype(i32)
    pages = [-(-c // BLOCK) for c in ctx_lens]
    kv = np.concatenate([[0], np.cumsum(pages)]).astype(i32)
    if kv[-1] > len(blocks):
        raise ValueError("not enough KV blocks for this step")
    indices = blocks[: kv[-1]].astype(i32)
    pos = np.concatenate([np.arange(c - q, c) for q, c in zip(q_lens, ctx_lens, strict=True)])
    seq = np.repeat(np.arange(len(q_lens)), q_lens)
    slots = indices[kv[seq] + pos // BLOCK].astype(np.int64) * BLOCK + pos % BLOCK
    # NOTE: build_attention_metadata reads these StepPlan fields by name (docs/interfaces.md).
    return SimpleNamespace(
        num_decodes=num_decodes, num_prefills=len(q_lens) - num_decodes,
        input_ids=np.zeros(len(pos), i32), positions=pos.astype(i32), slot_mapping=slots,
        qo_indptr=qo, kv_indptr=kv, kv_indices=indices,
        kv_last_page_len=(np.array(ctx_lens) - (np.array(pages) - 1) * BLOCK).astype(i32),
        seq_lens=np.array(ctx_lens, i32), sample_token_idx=(qo[1:] - 1).astype(i32),
    )  # fmt: skip


def time_step(model, attn, plan, repeat: int) -> float:
    meta = build_attention_metadata(plan, BLOCK, "cuda")
    ids = torch.randint(0, model.config.vocab_size, (len(plan.positions),), device="cuda")
    rows = torch.from_numpy(plan.sample_token_idx).long().cuda()

    def step():
        attn.plan(meta)
        hidden = model(ids, meta.positions, attn)
        model.compute_logits(hidden[rows])

    return event_ms(step, repeat)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads: every parameter except the embedding table (rows only)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters()
               if "embed_tokens" not in n)  # fmt: skip


def run(args, cfg, model, cache, attn, ceil) -> list[dict]:
    kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
    blocks = np.random.default_rng(0).permutation(cache.num_blocks)
    wbytes, records = weight_bytes(model), []
    for batch in args.batches:
        for ctx in args.contexts:
            if batch * -(-(ctx + 1) // BLOCK) > cache.num_blocks:
                records.append({"kind": "decode", "batch": batch, "context": ctx, "skipped": "KV"})
                continue
            plan = step_plan([1] * batch, [ctx + 1] * batch, batch, blocks)
            ms = time_step(model, attn, plan, args.repeat)
            roof = (wbytes + batch * (ctx + 1) * kv_per_token) / ceil["copy_bytes_per_s"] * 1e3
            records.append({"kind": "decode", "batch": batch, "context": ctx, "ms": ms,
                            "roofline_ms": roof, "ratio": ms / roof,
                            "q_lens": [1] * batch, "ctx_lens": [ctx + 1] * batch})  # fmt: skip
    params = wbytes // 2
    for prefix in (0, 6144):
        t = args.chunk
        plan = step_plan([t], [prefix + t], 0, blocks)
        ms = time_step(model, attn, plan, args.repeat)
        flops = 2 * params * t + 4 * cfg.num_hidden_layers * cfg.num_attention_heads * (
            cfg.head_dim * (t * prefix + t * (t + 1) // 2)
        )
        records.append({"kind": "prefill", "chunk": t, "prefix": prefix, "ms": ms,
                        "tokens_per_s": t / ms * 1e3, "tflops": flops / ms / 1e9,
                        "ceiling_tflops": ceil["bf16_flops_per_s"] / 1e12,
                        "q_lens": [t], "ctx_lens": [prefix + t]})  # fmt: skip
    return records


def write_results(records, info, command) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "gpu_steps.jsonl", "w") as f:
        for r in records:
            if "ms" in r:
                f.write(json.dumps({"q_lens": r["q_lens"], "ctx_lens": r["ctx_lens"],
                                    "seconds": r["ms"] / 1e3}) + "\n")  # fmt: skip
    lines = ["# GPU decode / prefill (Llama-3.1-8B shape, random bf16 weights)", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()] + [f"- command: `{command}`", ""]
    lines += ["| batch | context | step ms | HBM roofline ms | ratio |", "|---|---|---|---|---|"]
    for r in (r for r in records if r["kind"] == "decode"):
        if "skipped" in r:
            lines.append(f"| {r['batch']} | {r['context']} | KV does not fit | | |")
        else:
            lines.append(f"| {r['batch']} | {r['context']} | {r['ms']:.2f} | "
                         f"{r['roofline_ms']:.2f} | {r['ratio']:.2f}x |")  # fmt: skip
    lines += ["", "| prefill chunk | cached prefix | ms | tokens/s | TFLOP/s | matmul ceiling |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in (r for r in records if r["kind"] == "prefill"):
        lines.append(f"| {r['chunk']} | {r['prefix']} | {r['ms']:.1f} | {r['tokens_per_s']:.0f} "
                     f"| {r['tflops']:.0f} | {r['ceiling_tflops']:.0f} |")  # fmt: skip
    lines += ["", "Target (issue 7): decode within 1.5x of the roofline at batch 64.", ""]
    (RESULTS / "gpu_decode.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--kv-fraction", type=float, default=0.8,
                        help="fraction of free GPU memory (after weights) for the KV cache")  # fmt: skip
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu_decode needs a CUDA device", file=sys.stderr)
        return 2
    ceil = ceilings()
    cfg = ModelConfig.from_dict(LLAMA_3_1_8B)
    model = build_model(cfg)
    cache = KVCache.from_budget(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                                BLOCK, torch.bfloat16, "cuda", args.kv_fraction)  # fmt: skip
    cache.device_pool.normal_()  # NOTE: never time on zeros
    attn = attention_backend(cache, cfg)
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "attention": type(attn).__name__, "kv_blocks": cache.num_blocks,
            "copy_GB_per_s": round(ceil["copy_bytes_per_s"] / 1e9),
            "bf16_matmul_TFLOP_per_s": round(ceil["bf16_flops_per_s"] / 1e12)}  # fmt: skip
    try:
        import flashinfer

        info["flashinfer"] = flashinfer.__version__
    except ImportError:
        info["flashinfer"] = "not installed"
    print(json.dumps(info), flush=True)
    records = run(args, cfg, model, cache, attn, ceil)
    for r in records:
        print(json.dumps({k: v for k, v in r.items() if k not in ("q_lens", "ctx_lens")}))
    write_results(records, info, "python " + " ".join(sys.argv))
    print((RESULTS / "gpu_decode.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
