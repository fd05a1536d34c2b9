"""Paged KV cache: device pool, CPU swap pool and block copies."""

from pyserve.kv.cache import KVCache, SwapOps, TorchSwapOps, block_bytes

__all__ = ["KVCache", "SwapOps", "TorchSwapOps", "block_bytes"]
