"""KV block moves with the batched CUDA kernels of ``pyserve._cuda`` (torch copies otherwise).

:class:`CudaSwapper` moves blocks of every layer between per-layer GPU caches and a pinned CPU
pool: one kernel launch per direction on its own CUDA stream, ordered against the compute stream
with events (GPU-side waits; the host never blocks). Without the module, or on CPU tensors, it
falls back to torch index copies with the same semantics. :class:`CudaSwapOps` plugs it into
:class:`pyserve.kv.cache.KVCache` via ``KVCache.set_swap_ops``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

try:  # NOTE: the module is built only where nvcc was found at install time.
    from pyserve import _cuda
except ImportError:  # pragma: no cover - depends on the build
    _cuda = None


def kernels_available() -> bool:
    """True when ``pyserve._cuda`` is importable and a CUDA device is visible."""
    return _cuda is not None and torch.cuda.is_available()


def as_pairs(pairs: Any, what: str) -> np.ndarray:
    """Return ``pairs`` as a C-contiguous int32 ``[n, 2]`` array (``n`` may be 0)."""
    if torch.is_tensor(pairs):
        pairs = pairs.detach().cpu().numpy()
    arr = np.asarray(pairs)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{what}: pairs must have shape [n, 2], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: pairs must be integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_pairs(pairs: np.ndarray, src_limit: int, dst_limit: int, what: str, same_pool: bool):
    """Raise ValueError unless ids are in range and the pairs of one call do not collide.

    NOTE: all pairs of a call are copied concurrently, so destinations must be distinct and,
    within one pool, no destination may also be a source.
    """
    if len(pairs) == 0:
        return
    src, dst = pairs[:, 0], pairs[:, 1]
    if src.min() < 0 or src.max() >= src_limit or dst.min() < 0 or dst.max() >= dst_limit:
        raise ValueError(
            f"{what}: block id out of range (source < {src_limit}, destination < {dst_limit})"
        )
    if len(np.unique(dst)) != len(dst):
        raise ValueError(f"{what}: destination blocks must be distinct")
    if same_pool and np.intersect1d(src, dst).size:
        raise ValueError(f"{what}: a block is both a source and a destination")


def _check_caches(caches: Sequence[torch.Tensor], what: str) -> tuple[torch.Size, torch.dtype]:
    if len(caches) == 0:
        raise ValueError(f"{what} must hold one tensor per layer, got none")
    shape, dtype = caches[0].shape, caches[0].dtype
    for i, t in enumerate(caches):
        if t.shape != shape or t.dtype != dtype or t.device != caches[0].device:
            raise ValueError(f"{what}[{i}] differs in shape, dtype or device from layer 0")
        if not t.is_contiguous():
            raise ValueError(f"{what}[{i}] must be contiguous")
    return shape, dtype


class CudaSwapper:
    """Applies swap-out / swap-in / copy block pairs to per-layer KV caches.

    ``gpu_caches[l]`` is layer ``l``'s cache ``[num_gpu_blocks, ...]`` and ``cpu_caches[l]`` its
    CPU pool ``[num_cpu_blocks, ...]`` with the same per-block shape and dtype (may be empty:
    copy-on-write only). Pairs are int32 ``[n, 2]`` as in docs/interfaces.md.

    NOTE: with the kernels, moves are asynchronous: later work on the compute stream (the current
    stream when the move is issued) waits for them on the GPU, but the host must call
    :meth:`synchronize` before reading the CPU pool itself. The caches must outlive the swapper,
    and the CPU pool must be pinned for the kernel path.
    """

    def __init__(
        self,
        gpu_caches: Sequence[torch.Tensor],
        cpu_caches: Sequence[torch.Tensor] = (),
        *,
        use_kernels: bool | None = None,
    ) -> None:
        shape, dtype = _check_caches(gpu_caches, "gpu_caches")
        self.num_gpu_blocks = shape[0]
        self.num_cpu_blocks = 0
        if len(cpu_caches):
            cpu_shape, cpu_dtype = _check_caches(cpu_caches, "cpu_caches")
            if len(cpu_caches) != len(gpu_caches):
                raise ValueError(f"cpu_caches has {len(cpu_caches)} layers, "
                                 f"gpu_caches {len(gpu_caches)}")  # fmt: skip
            if cpu_shape[1:] != shape[1:] or cpu_dtype != dtype:
                raise ValueError(
                    "cpu_caches blocks must match gpu_caches blocks in shape and dtype"
                )
            if cpu_caches[0].device.type != "cpu":
                raise ValueError("cpu_caches must live in CPU memory")
            self.num_cpu_blocks = cpu_shape[0]
        self.gpu_caches = list(gpu_caches)
        self.cpu_caches = list(cpu_caches)
        self.device = self.gpu_caches[0].device
        can_use = (
            kernels_available()
            and self.device.type == "cuda"
            and all(t.is_pinned() for t in self.cpu_caches)
        )
        if use_kernels and not can_use:
            raise ValueError("use_kernels=True needs pyserve._cuda, CUDA caches and a pinned pool")
        self.uses_kernels = can_use if use_kernels is None else bool(use_kernels)
        if self.uses_kernels:
            self._init_kernels()

    def _init_kernels(self) -> None:
        block_bytes = self.gpu_caches[0][0].numel() * self.gpu_caches[0].element_size()
        self._swapper = _cuda.KvSwapper(
            [t.data_ptr() for t in self.gpu_caches],
            [t.data_ptr() for t in self.cpu_caches],
            block_bytes,
            self.num_gpu_blocks,
            self.num_cpu_blocks,
            self.device.index if self.device.index is not None else torch.cuda.current_device(),
        )
        self.stream = torch.cuda.Stream(self.device)
        self._before = _cuda.StreamFence()  # compute -> swap stream
        self._after = _cuda.StreamFence()  # swap stream -> compute

    @property
    def kernel(self) -> Any:
        """The ``pyserve._cuda.KvSwapper`` in use (None on the torch path), e.g. for benchmarks."""
        return self._swapper if self.uses_kernels else None

    def swap_out(self, pairs: Any) -> None:
        """Copy ``(gpu_block, cpu_block)`` pairs GPU → CPU."""
        self.apply(swap_out=pairs)

    def swap_in(self, pairs: Any) -> None:
        """Copy ``(cpu_block, gpu_block)`` pairs CPU → GPU."""
        self.apply(swap_in=pairs)

    def copy(self, pairs: Any) -> None:
        """Copy ``(src_gpu_block, dst_gpu_block)`` pairs within the GPU cache (copy-on-write)."""
        self.apply(copy=pairs)

    def apply(self, swap_out: Any = None, swap_in: Any = None, copy: Any = None) -> None:
        """Apply one step's moves in the interface's order: swap-out, swap-in, copy."""
        ng, nc = self.num_gpu_blocks, self.num_cpu_blocks
        out = as_pairs(swap_out if swap_out is not None else (), "swap_out")
        inn = as_pairs(swap_in if swap_in is not None else (), "swap_in")
        cow = as_pairs(copy if copy is not None else (), "copy")
        check_pairs(out, ng, nc, "swap_out", same_pool=False)
        check_pairs(inn, nc, ng, "swap_in", same_pool=False)
        check_pairs(cow, ng, ng, "copy", same_pool=True)
        if len(out) + len(inn) + len(cow) == 0:
            return
        if self.uses_kernels:
            self._apply_kernels(out, inn, cow)
        else:
            self._apply_torch(out, inn, cow)

    def _apply_kernels(self, out: np.ndarray, inn: np.ndarray, cow: np.ndarray) -> None:
        compute = torch.cuda.current_stream(self.device).cuda_stream
        swap = self.stream.cuda_stream
        # NOTE: the swap stream first waits for the K/V writes already queued on the compute
        # stream; the compute stream's later work (the forward) waits for all three moves.
        _cuda.stream_wait_stream(swap, compute, self._before)
        if len(out):
            self._swapper.swap_out(out, swap)
        if len(inn):
            self._swapper.swap_in(inn, swap)
        if len(cow):
            self._swapper.copy(cow, swap)
        _cuda.stream_wait_stream(compute, swap, self._after)

    def _apply_torch(self, out: np.ndarray, inn: np.ndarray, cow: np.ndarray) -> None:
        dev = self.device
        for layer, gpu in enumerate(self.gpu_caches):
            if len(out):
                cpu = self.cpu_caches[layer]
                src = torch.from_numpy(out[:, 0]).long().to(dev)
                cpu.index_copy_(
                    0, torch.from_numpy(out[:, 1]).long(), gpu.index_select(0, src).cpu()
                )
            if len(inn):
                moved = self.cpu_caches[layer].index_select(0, torch.from_numpy(inn[:, 0]).long())
                gpu.index_copy_(0, torch.from_numpy(inn[:, 1]).long().to(dev), moved.to(dev))
            if len(cow):
                idx = torch.from_numpy(cow).long().to(dev)
                gpu.index_copy_(0, idx[:, 1], gpu.index_select(0, idx[:, 0]))

    def synchronize(self) -> None:
        """Block the host until every queued move has finished (e.g. before reading the pool)."""
        if self.uses_kernels:
            self.stream.synchronize()
        elif self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class CudaSwapOps:
    """The :class:`pyserve.kv.cache.SwapOps` hook backed by :class:`CudaSwapper`.

    Usage: ``cache.set_swap_ops(CudaSwapOps(cache))`` on a CUDA :class:`KVCache` (whose
    ``device_pool [L, N, ...]`` / pinned ``cpu_pool [L, M, ...]`` hold all layers).
    """

    def __init__(self, cache: Any) -> None:
        gpu = [cache.device_pool[i] for i in range(cache.num_layers)]
        cpu = [cache.cpu_pool[i] for i in range(cache.num_layers)] if cache.num_cpu_blocks else []
        self.swapper = CudaSwapper(gpu, cpu)
        self._cache = cache

    def _same(self, cache: Any) -> None:
        if cache is not self._cache:
            raise ValueError("CudaSwapOps was built for another KVCache")

    def swap_out(self, cache: Any, pairs: torch.Tensor) -> None:
        """Copy device blocks ``pairs[:, 0]`` into CPU blocks ``pairs[:, 1]``."""
        self._same(cache)
        self.swapper.swap_out(pairs)

    def swap_in(self, cache: Any, pairs: torch.Tensor) -> None:
        """Copy CPU blocks ``pairs[:, 0]`` into device blocks ``pairs[:, 1]``."""
        self._same(cache)
        self.swapper.swap_in(pairs)

    def copy(self, cache: Any, pairs: torch.Tensor) -> None:
        """Copy device blocks ``pairs[:, 0]`` into device blocks ``pairs[:, 1]``."""
        self._same(cache)
        self.swapper.copy(pairs)
