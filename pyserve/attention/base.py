"""Attention backend interface and the per-step metadata it is planned with."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class AttentionMetadata:
    """Tensors describing one step's sequences, on the model's device.

    NOTE: sequences are ordered decodes first (one token each), then prefill chunks. Index
    tensors keep the StepPlan dtypes (int32, slot_mapping int64). ``qo_indptr_host`` and
    ``seq_lens_host`` are CPU numpy copies so backends can loop over prefills without device syncs.
    """

    positions: torch.Tensor  # int64 [T]
    slot_mapping: torch.Tensor  # int64 [T]
    qo_indptr: torch.Tensor  # int32 [S+1]
    kv_indptr: torch.Tensor  # int32 [S+1]
    kv_indices: torch.Tensor  # int32 [kv_indptr[-1]]
    kv_last_page_len: torch.Tensor  # int32 [S]
    seq_lens: torch.Tensor  # int32 [S]
    num_decodes: int
    num_prefills: int
    block_size: int
    qo_indptr_host: np.ndarray
    kv_indptr_host: np.ndarray
    seq_lens_host: np.ndarray

    @property
    def num_seqs(self) -> int:
        """Number of sequences in the step."""
        return self.num_decodes + self.num_prefills

    @property
    def num_tokens(self) -> int:
        """Number of query tokens in the step."""
        return int(self.qo_indptr_host[-1])


_FIELDS = ("qo_indptr", "kv_indptr", "kv_indices", "kv_last_page_len", "seq_lens")


def build_attention_metadata(
    plan: Any, block_size: int, device: torch.device | str
) -> AttentionMetadata:
    """Make :class:`AttentionMetadata` from a StepPlan-like object (numpy or list fields).

    ``plan`` needs the fields of docs/interfaces.md: ``num_decodes``, ``num_prefills``,
    ``positions``, ``slot_mapping``, ``qo_indptr``, ``kv_indptr``, ``kv_indices``,
    ``kv_last_page_len``, ``seq_lens``. NOTE: on CPU the tensors may alias the plan's buffers,
    which are only valid until the next ``schedule()``; the metadata is for this step only.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    dev = torch.device(device)
    host = {name: np.asarray(getattr(plan, name), dtype=np.int32) for name in _FIELDS}
    num_seqs = int(plan.num_decodes) + int(plan.num_prefills)
    for name in ("qo_indptr", "kv_indptr"):
        if host[name].shape != (num_seqs + 1,):
            raise ValueError(f"{name} must have num_seqs + 1 = {num_seqs + 1} entries")
    tensors = {name: _to_device(arr, dev) for name, arr in host.items()}
    positions = np.asarray(plan.positions)
    slots = np.asarray(plan.slot_mapping, dtype=np.int64)
    if positions.shape != slots.shape or positions.shape[0] != host["qo_indptr"][-1]:
        raise ValueError("positions and slot_mapping must have qo_indptr[-1] entries each")
    return AttentionMetadata(
        positions=_to_device(positions, dev).long(),
        slot_mapping=_to_device(slots, dev),
        num_decodes=int(plan.num_decodes),
        num_prefills=int(plan.num_prefills),
        block_size=block_size,
        qo_indptr_host=host["qo_indptr"],
        kv_indptr_host=host["kv_indptr"],
        seq_lens_host=host["seq_lens"],
        **tensors,
    )


def _to_device(arr: np.ndarray, dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if dev.type == "cpu":
        return t
    return t.pin_memory().to(dev, non_blocking=True) if torch.cuda.is_available() else t.to(dev)


class AttentionBackend(ABC):
    """Paged attention over a :class:`~pyserve.kv.cache.KVCache` the backend is given.

    ``plan(meta)`` is called once per step before the forward; ``forward(layer_idx, q, k, v)``
    once per layer: it writes ``k``/``v`` into the layer's cache at ``meta.slot_mapping`` and
    returns the attention output ``[T, Hq, D]`` for ``q [T, Hq, D]``, ``k``/``v [T, Hkv, D]``.
    """

    def __init__(self, kv_cache: Any, num_heads: int, head_dim: int, scale: float | None = None):
        if num_heads % kv_cache.num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must be a multiple of the cache's "
                f"num_kv_heads ({kv_cache.num_kv_heads})"
            )
        if head_dim != kv_cache.head_dim:
            raise ValueError(f"head_dim {head_dim} != KV cache head_dim {kv_cache.head_dim}")
        self.kv_cache = kv_cache
        self.num_heads = num_heads
        self.num_kv_heads = kv_cache.num_kv_heads
        self.head_dim = head_dim
        self.scale = scale if scale is not None else head_dim**-0.5

    @abstractmethod
    def plan(self, meta: AttentionMetadata) -> None:
        """Prepare for one step (index tensors, masks) shared by all layers."""

    @abstractmethod
    def forward(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Write this step's K/V for ``layer_idx`` and attend; returns ``[T, Hq, D]``."""
