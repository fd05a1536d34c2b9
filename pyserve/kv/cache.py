"""Paged KV cache tensors on the model's device plus a CPU swap pool."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class SwapOps(Protocol):
    """Block movement between the device pool and the CPU pool (replaceable by CUDA kernels)."""

    def swap_out(self, cache: KVCache, pairs: torch.Tensor) -> None:
        """Copy device blocks ``pairs[:, 0]`` into CPU blocks ``pairs[:, 1]``."""

    def swap_in(self, cache: KVCache, pairs: torch.Tensor) -> None:
        """Copy CPU blocks ``pairs[:, 0]`` into device blocks ``pairs[:, 1]``."""

    def copy(self, cache: KVCache, pairs: torch.Tensor) -> None:
        """Copy device blocks ``pairs[:, 0]`` into device blocks ``pairs[:, 1]``."""


class TorchSwapOps:
    """Swap with torch index copies: one gather and one scatter over all layers at once."""

    def swap_out(self, cache: KVCache, pairs: torch.Tensor) -> None:
        src = pairs[:, 0].to(cache.device)
        dst = pairs[:, 1]
        # NOTE: gather on the device, one bulk transfer, scatter into the CPU pool.
        cache.cpu_pool.index_copy_(1, dst, cache.device_pool.index_select(1, src).cpu())

    def swap_in(self, cache: KVCache, pairs: torch.Tensor) -> None:
        src = pairs[:, 0]
        dst = pairs[:, 1].to(cache.device)
        moved = cache.cpu_pool.index_select(1, src)
        if cache.device.type == "cuda":
            moved = moved.pin_memory()
        cache.device_pool.index_copy_(1, dst, moved.to(cache.device, non_blocking=True))

    def copy(self, cache: KVCache, pairs: torch.Tensor) -> None:
        idx = pairs.to(cache.device)
        # NOTE: index_select materialises all sources before any destination is written.
        cache.device_pool.index_copy_(1, idx[:, 1], cache.device_pool.index_select(1, idx[:, 0]))


def block_bytes(
    num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> int:
    """Bytes one block takes across all layers (K and V). Arguments in KVCache's order."""
    elem = torch.empty((), dtype=dtype).element_size()
    return num_layers * 2 * block_size * num_kv_heads * head_dim * elem


class KVCache:
    """Per-layer KV tensors ``[num_blocks, 2, block_size, H_kv, D]`` and a CPU swap pool.

    NOTE: all layers live in one tensor ``device_pool [L, num_blocks, 2, block_size, H_kv, D]``
    (index 0 = K, 1 = V; NHD), so ``layer(i)`` is a contiguous view and swaps move every layer
    with one index op. The cache owns the tensors; attention backends write into the views.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        block_size: int,
        num_blocks: int,
        num_cpu_blocks: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim), ("block_size", block_size),
                            ("num_blocks", num_blocks)):  # fmt: skip
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if num_cpu_blocks < 0:
            raise ValueError(f"num_cpu_blocks must be >= 0, got {num_cpu_blocks}")
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_cpu_blocks = num_cpu_blocks
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim)
        # NOTE: zero-filled: padded slots of a partly filled block are read (with zero attention
        # weight); uninitialised NaNs there would poison the weighted sum.
        self.device_pool = torch.zeros(shape, dtype=dtype, device=self.device)
        cpu_shape = (num_layers, num_cpu_blocks, *shape[2:])
        pin = self.device.type == "cuda"
        self.cpu_pool = torch.zeros(cpu_shape, dtype=dtype, device="cpu", pin_memory=pin)
        self.swap_ops: SwapOps = TorchSwapOps()

    @classmethod
    def from_budget(
        cls,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
        gpu_memory_fraction: float = 0.9,
        cpu_budget_bytes: int = 1 << 30,
        swap_budget_bytes: int = 0,
    ) -> KVCache:
        """Size the pools from a memory budget.

        On CUDA the device pool gets ``gpu_memory_fraction`` of the currently free memory (call
        after the weights are loaded); on CPU it gets ``cpu_budget_bytes``. The swap pool gets
        ``swap_budget_bytes``.
        """
        dev = torch.device(device)
        per_block = block_bytes(num_layers, num_kv_heads, head_dim, block_size, dtype)
        if dev.type == "cuda":
            if not 0.0 < gpu_memory_fraction <= 1.0:
                raise ValueError(
                    f"gpu_memory_fraction must be in (0, 1], got {gpu_memory_fraction}"
                )
            free, _total = torch.cuda.mem_get_info(dev)
            budget = int(free * gpu_memory_fraction)
        else:
            budget = int(cpu_budget_bytes)
        num_blocks = budget // per_block
        if num_blocks < 1:
            raise ValueError(
                f"KV cache budget of {budget} bytes is below one block ({per_block} bytes)"
            )
        if swap_budget_bytes < 0:
            raise ValueError(f"swap_budget_bytes must be >= 0, got {swap_budget_bytes}")
        return cls(num_layers, num_kv_heads, head_dim, block_size, num_blocks,
                   swap_budget_bytes // per_block, dtype, dev)  # fmt: skip

    def layer(self, layer_idx: int) -> torch.Tensor:
        """The cache of one layer, ``[num_blocks, 2, block_size, H_kv, D]`` (a view)."""
        return self.device_pool[layer_idx]

    def set_swap_ops(self, ops: SwapOps) -> None:
        """Replace the torch index-copy implementation (e.g. with a CUDA kernel module)."""
        self.swap_ops = ops

    def swap_out(self, pairs: np.ndarray | torch.Tensor) -> None:
        """Copy ``(device_block, cpu_block)`` pairs device → CPU."""
        idx = self._check(pairs, self.num_blocks, self.num_cpu_blocks, "swap_out")
        if idx is not None:
            self.swap_ops.swap_out(self, idx)

    def swap_in(self, pairs: np.ndarray | torch.Tensor) -> None:
        """Copy ``(cpu_block, device_block)`` pairs CPU → device."""
        idx = self._check(pairs, self.num_cpu_blocks, self.num_blocks, "swap_in")
        if idx is not None:
            self.swap_ops.swap_in(self, idx)

    def copy(self, pairs: np.ndarray | torch.Tensor) -> None:
        """Copy ``(src_block, dst_block)`` pairs within the device pool."""
        idx = self._check(pairs, self.num_blocks, self.num_blocks, "copy")
        if idx is not None:
            self.swap_ops.copy(self, idx)

    def apply(self, swap_out=None, swap_in=None, copy=None) -> None:
        """Apply a step's block moves in the order the interface fixes: out, in, copy."""
        if swap_out is not None:
            self.swap_out(swap_out)
        if swap_in is not None:
            self.swap_in(swap_in)
        if copy is not None:
            self.copy(copy)

    @staticmethod
    def _check(pairs, src_limit: int, dst_limit: int, what: str) -> torch.Tensor | None:
        idx = torch.as_tensor(np.asarray(pairs) if not torch.is_tensor(pairs) else pairs)
        if idx.numel() == 0:
            return None
        if idx.dim() != 2 or idx.shape[1] != 2:
            raise ValueError(f"{what}: pairs must have shape [n, 2], got {tuple(idx.shape)}")
        idx = idx.long().cpu()
        if idx.min() < 0 or idx[:, 0].max() >= src_limit or idx[:, 1].max() >= dst_limit:
            raise ValueError(f"{what}: block id out of range (source < {src_limit}, "
                             f"destination < {dst_limit})")  # fmt: skip
        return idx
