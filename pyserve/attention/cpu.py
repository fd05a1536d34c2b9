"""C++ paged attention for CPU (``csrc/kernels``): reads K/V through the block table, no gather."""

from __future__ import annotations

import numpy as np
import torch

from pyserve import _core
from pyserve.attention.base import AttentionBackend, AttentionMetadata

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A zero-copy numpy view; bfloat16 as its int16 bit pattern (numpy has no bfloat16)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.detach().numpy()


class CpuAttention(AttentionBackend):
    """Paged attention on CPU with the C++ kernel of ``pyserve._core.attention``.

    One call per layer writes the step's K/V at ``slot_mapping`` and attends every sequence
    (decodes and prefill chunks alike) straight from the paged cache with an online softmax,
    in parallel over (sequence, kv head, 16-row query tile) on ``num_threads`` threads (default:
    ``torch.get_num_threads()`` at each call). fp32 and bf16 caches; bf16 accumulates in fp32.
    """

    def __init__(self, kv_cache, num_heads: int, head_dim: int, scale: float | None = None,
                 num_threads: int | None = None) -> None:  # fmt: skip
        super().__init__(kv_cache, num_heads, head_dim, scale)
        if kv_cache.device.type != "cpu":
            raise ValueError(f"CpuAttention needs a CPU KV cache, got {kv_cache.device}")
        if kv_cache.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"CpuAttention supports float32 and bfloat16 caches, "
                            f"got {kv_cache.dtype}")  # fmt: skip
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.num_threads = num_threads
        self._index: tuple[np.ndarray, ...] | None = None

    def plan(self, meta: AttentionMetadata) -> None:
        """Keeps the step's index arrays as int32 numpy views (the kernel validates them)."""
        if meta.block_size != self.kv_cache.block_size:
            raise ValueError(f"metadata block_size {meta.block_size} != KV cache block_size "
                             f"{self.kv_cache.block_size}")  # fmt: skip
        if meta.kv_indices.device.type != "cpu":
            raise ValueError(f"CpuAttention needs CPU metadata, got {meta.kv_indices.device}")
        # NOTE: (qo_indptr, kv_indptr, kv_indices, seq_lens), int32, valid for this step only.
        self._index = (
            np.ascontiguousarray(meta.qo_indptr_host, dtype=np.int32),
            np.ascontiguousarray(meta.kv_indptr_host, dtype=np.int32),
            _as_numpy(meta.kv_indices.to(torch.int32).contiguous()),
            np.ascontiguousarray(meta.seq_lens_host, dtype=np.int32),
        )
        self._slots = _as_numpy(meta.slot_mapping.to(torch.int64).contiguous())

    def forward(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Write ``k``/``v`` at the step's slots, then attend; returns ``[T, Hq, D]``."""
        if self._index is None:
            raise ValueError("CpuAttention.forward called before plan()")
        self._check(q, k, v)
        cache = _as_numpy(self.kv_cache.layer(layer_idx))
        _core.attention.write_kv(cache, _as_numpy(k.contiguous()), _as_numpy(v.contiguous()),
                                 self._slots)  # fmt: skip
        q = q.contiguous()
        out = torch.empty_like(q)
        threads = self.num_threads or torch.get_num_threads()
        _core.attention.paged_attention(_as_numpy(q), cache, _as_numpy(out), *self._index,
                                        self.scale, threads)  # fmt: skip
        return out

    def _check(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        dtype = self.kv_cache.dtype
        for name, t, heads in (("q", q, self.num_heads), ("k", k, self.num_kv_heads),
                               ("v", v, self.num_kv_heads)):  # fmt: skip
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.device.type != "cpu":
                raise ValueError(f"{name} must be on the CPU, got {t.device}")
            if t.dtype != dtype:
                raise TypeError(f"{name} dtype {t.dtype} != KV cache dtype {dtype}")
            if t.dim() != 3 or t.shape[1:] != (heads, self.head_dim) or t.shape[0] != q.shape[0]:
                raise ValueError(f"{name} must be [{q.shape[0]}, {heads}, {self.head_dim}], "
                                 f"got {list(t.shape)}")  # fmt: skip
