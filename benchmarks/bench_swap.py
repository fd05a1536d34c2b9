"""KV swap bandwidth on a CUDA GPU: batched kernel vs per-block cudaMemcpyAsync vs pinned memcpy.

Llama-3.1-8B KV shape (32 layers, 8 KV heads, head dim 128, bf16, block 16: 64 KiB per block
per layer, 128 KiB per token) and requests of 1K-32K tokens, swapped to / from scattered
blocks of a pinned CPU pool. The ceiling is one cudaMemcpyAsync of the same bytes between a
contiguous device buffer and a contiguous pinned buffer, measured in the same run. Prints one
JSON line per measurement and writes benchmarks/results/gpu_swap.md.

    python benchmarks/bench_swap.py [--tokens 1024 4096 ...] [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from pyserve.kv.cuda_swap import kernels_available

LAYERS, BLOCK, KV_HEADS, HEAD_DIM = 32, 16, 8, 128
DTYPE = torch.bfloat16
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_swap.md"


def time_ms(fn, stream: torch.cuda.Stream, repeat: int) -> float:
    """Median milliseconds of ``fn`` on ``stream`` (events; includes host enqueue gaps)."""
    fn()  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_pools(max_blocks: int):
    """GPU cache [L, 2*max_blocks, ...] (random) and pinned CPU pool [L, max_blocks + 64, ...]."""
    shape = (2, BLOCK, KV_HEADS, HEAD_DIM)
    gpu = torch.randn((LAYERS, 2 * max_blocks, *shape), device="cuda", dtype=DTYPE)
    cpu = torch.empty((LAYERS, max_blocks + 64, *shape), dtype=DTYPE, pin_memory=True)
    cpu.normal_()
    return gpu, cpu


def check_round_trip(swapper, gpu: torch.Tensor, n: int, rng: np.random.Generator) -> None:
    """Swap n scattered blocks out and back into other blocks; raise unless bit-exact."""
    src = rng.choice(gpu.shape[1], size=2 * n, replace=False)
    cpu_ids = rng.choice(swapper.num_cpu_blocks, size=n, replace=False)
    out = np.stack([src[:n], cpu_ids], axis=1).astype(np.int32)
    back = np.stack([cpu_ids, src[n:]], axis=1).astype(np.int32)
    want = gpu[:, torch.from_numpy(src[:n]).long().cuda()].clone()
    swapper.swap_out(out)
    swapper.swap_in(back)
    torch.cuda.synchronize()
    if not torch.equal(gpu[:, torch.from_numpy(src[n:]).long().cuda()], want):
        raise RuntimeError("swap round trip is not exact")


def measure(tokens: int, raw, gpu, cpu, stream, repeat, rng) -> list[dict]:
    """All methods for one request size; returns one record per (direction, method)."""
    n = tokens // BLOCK
    g = rng.choice(gpu.shape[1], size=n, replace=False)
    c = rng.choice(cpu.shape[1], size=n, replace=False)
    out = np.stack([g, c], axis=1).astype(np.int32)
    inn = np.stack([c, g], axis=1).astype(np.int32)
    nbytes = n * LAYERS * raw.block_bytes
    dev_buf = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host_buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    s = stream.cuda_stream
    methods = {
        ("out", "kernel"): lambda: raw.swap_out(out, s),
        ("out", "per_block"): lambda: raw.swap_out_per_block(out, s),
        ("out", "memcpy_ceiling"): lambda: host_buf.copy_(dev_buf, non_blocking=True),
        ("in", "kernel"): lambda: raw.swap_in(inn, s),
        ("in", "per_block"): lambda: raw.swap_in_per_block(inn, s),
        ("in", "memcpy_ceiling"): lambda: dev_buf.copy_(host_buf, non_blocking=True),
    }
    records = []
    with torch.cuda.stream(stream):
        for (direction, method), fn in methods.items():
            ms = time_ms(fn, stream, repeat)
            records.append({"tokens": tokens, "blocks": n, "direction": direction,
                            "method": method, "ms": ms, "gb_per_s": nbytes / ms / 1e6})  # fmt: skip
    return records


def versions() -> dict:
    from pyserve import _cuda

    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda_runtime(pyserve._cuda)": _cuda.runtime_version(),
        "cuda_driver": _cuda.driver_version(),
    }


def write_markdown(records: list[dict], info: dict, command: str) -> None:
    by = {(r["tokens"], r["direction"], r["method"]): r for r in records}
    lines = ["# KV swap bandwidth (batched kernel vs per-block memcpy vs pinned memcpy)", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- command: `{command}`", f"- KV shape: {LAYERS} layers x [2, {BLOCK}, "
              f"{KV_HEADS}, {HEAD_DIM}] {DTYPE}; scattered blocks on both sides", ""]  # fmt: skip
    lines += ["| tokens | dir | kernel GB/s | per-block GB/s | memcpy ceiling GB/s | "
              "kernel / ceiling | kernel speed-up vs per-block |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for tokens in sorted({r["tokens"] for r in records}):
        for d in ("out", "in"):
            k, p, c = (by[(tokens, d, m)] for m in ("kernel", "per_block", "memcpy_ceiling"))
            lines.append(f"| {tokens} | {d} | {k['gb_per_s']:.1f} | {p['gb_per_s']:.1f} | "
                         f"{c['gb_per_s']:.1f} | {k['gb_per_s'] / c['gb_per_s']:.0%} | "
                         f"{p['ms'] / k['ms']:.1f}x |")  # fmt: skip
    lines += ["", "Targets (issue 7): kernel >= 80% of the ceiling and >= 3x the per-block loop "
              "at 4K tokens.", ""]  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+",
                        default=[1024, 2048, 4096, 8192, 16384, 32768])  # fmt: skip
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    if not kernels_available():
        print("bench_swap needs a CUDA device and pyserve._cuda", file=sys.stderr)
        return 2
    if any(t <= 0 or t % BLOCK for t in args.tokens):
        raise ValueError(f"--tokens must be positive multiples of {BLOCK}")
    from pyserve.kv.cuda_swap import CudaSwapper

    rng = np.random.default_rng(0)
    max_blocks = max(args.tokens) // BLOCK
    gpu, cpu = make_pools(max_blocks)
    swapper = CudaSwapper(list(gpu), list(cpu))
    check_round_trip(swapper, gpu, min(max_blocks, 256), rng)
    stream = torch.cuda.Stream()
    records = []
    for tokens in args.tokens:
        for rec in measure(tokens, swapper.kernel, gpu, cpu, stream, args.repeat, rng):
            print(json.dumps(rec), flush=True)
            records.append(rec)
    write_markdown(records, versions(), "python " + " ".join(sys.argv))
    print(RESULTS.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
