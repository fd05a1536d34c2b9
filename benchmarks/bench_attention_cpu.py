"""Per-layer-call time of the C++ CPU paged attention vs the torch reference backend.

Cases (one layer call = write the step's K/V + attend), both backends on the same random block
table, measured alternately in one run:
  decode   256 sequences x 256 context tokens, one query token each
  prefill  4 chunks of 512 new tokens over a 256-token cached prefix
Shapes (SHAPES): builtin:tiny (4/2 heads x 32) and a 125M-class Llama (12/4 x 64). Also times
the KV write alone: torch advanced-index assignment (reference) vs the kernel's write_kv.
One JSON line per case.

    python benchmarks/bench_attention_cpu.py [--reps 20] [--shapes tiny,125m] [--dtypes float32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch

from pyserve import _core
from pyserve.attention import CpuAttention, ReferenceAttention, build_attention_metadata
from pyserve.kv import KVCache

# (q heads, kv heads, head dim) of the models bench_offline runs.
SHAPES = {"tiny": (4, 2, 32), "125m": (12, 4, 64)}
CASES = {"decode": (256, 1, 256), "prefill": (4, 512, 768)}  # (seqs, new tokens, context)
BLOCK = 16


def make_plan(seqs: int, new: int, context: int, rng: np.random.Generator):
    """A StepPlan-like step: `seqs` sequences, each `new` query tokens ending at `context`."""
    per_seq = -(-context // BLOCK)
    blocks = rng.permutation(seqs * per_seq).astype(np.int32)
    pos = np.tile(np.arange(context - new, context), seqs)
    seq_idx = np.repeat(np.arange(seqs), new)
    table = blocks.reshape(seqs, per_seq)
    slots = table[seq_idx, pos // BLOCK].astype(np.int64) * BLOCK + pos % BLOCK
    decodes = seqs if new == 1 else 0
    return SimpleNamespace(
        num_decodes=decodes, num_prefills=seqs - decodes, positions=pos, slot_mapping=slots,
        qo_indptr=np.arange(0, seqs * new + 1, new, dtype=np.int32),
        kv_indptr=np.arange(0, seqs * per_seq + 1, per_seq, dtype=np.int32), kv_indices=blocks,
        kv_last_page_len=np.full(seqs, (context - 1) % BLOCK + 1, np.int32),
        seq_lens=np.full(seqs, context, np.int32),
    ), seqs * per_seq  # fmt: skip


def time_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench(shape: str, case: str, dtype: torch.dtype, reps: int) -> dict:
    hq, hkv, d = SHAPES[shape]
    seqs, new, context = CASES[case]
    plan, num_blocks = make_plan(seqs, new, context, np.random.default_rng(0))
    meta = build_attention_metadata(plan, BLOCK, "cpu")
    cache = KVCache(1, hkv, d, BLOCK, num_blocks, dtype=dtype)
    cache.device_pool.copy_(torch.randn(cache.device_pool.shape))
    t = seqs * new
    q = torch.randn(t, hq, d).to(dtype)
    k, v = torch.randn(2, t, hkv, d).to(dtype)
    ref, ours = ReferenceAttention(cache, hq, d), CpuAttention(cache, hq, d)
    ref.plan(meta)
    ours.plan(meta)
    err = (ours.forward(0, q, k, v).float() - ref.forward(0, q, k, v).float()).abs().max().item()
    timings = {"reference_ms": [], "cpu_ms": [], "write_torch_ms": [], "write_kernel_ms": []}
    layer = cache.layer(0)
    kv_np = (layer.view(torch.int16) if dtype == torch.bfloat16 else layer).numpy()
    k_np, v_np = ((x.view(torch.int16) if dtype == torch.bfloat16 else x).numpy() for x in (k, v))
    slots = meta.slot_mapping.numpy()
    blk, off = meta.slot_mapping // BLOCK, meta.slot_mapping % BLOCK

    def write_torch():
        layer[blk, :, off] = torch.stack((k, v), dim=1)

    for _ in range(3):  # alternate the backends so machine noise hits both
        timings["reference_ms"].append(time_ms(lambda: ref.forward(0, q, k, v), reps))
        timings["cpu_ms"].append(time_ms(lambda: ours.forward(0, q, k, v), reps))
        timings["write_torch_ms"].append(time_ms(write_torch, reps))
        timings["write_kernel_ms"].append(
            time_ms(lambda: _core.attention.write_kv(kv_np, k_np, v_np, slots), reps)
        )
    row = {"shape": shape, "heads": f"{hq}/{hkv}x{d}", "case": case, "dtype": str(dtype)[6:],
           "seqs": seqs, "new_tokens": new, "context": context}  # fmt: skip
    row.update({name: round(min(vals), 3) for name, vals in timings.items()})
    row["speedup"] = round(row["reference_ms"] / row["cpu_ms"], 2)
    row["max_abs_diff"] = float(f"{err:.2e}")
    row.update(threads=torch.get_num_threads(), isa=_core.attention.isa())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--shapes", default="tiny,125m")
    ap.add_argument("--cases", default="decode,prefill")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for shape in args.shapes.split(","):
        for case in args.cases.split(","):
            for dtype in args.dtypes.split(","):
                row = bench(shape, case, getattr(torch, dtype), args.reps)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
