"""Plain-torch paged attention (CPU and CUDA): the reference every faster backend must match."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pyserve.attention.base import AttentionBackend, AttentionMetadata


@dataclass
class _PrefillPlan:
    """One prefill chunk: its query rows, its context blocks and the causal mask."""

    start: int
    end: int
    seq_len: int
    blocks: torch.Tensor  # int64 [ceil(seq_len / block_size)]
    mask: torch.Tensor | None  # bool [q_len, seq_len]; None when the chunk is the whole context


@dataclass
class _DecodePlan:
    """All decodes of the step, padded to the longest context."""

    blocks: torch.Tensor  # int64 [num_decodes, max_blocks], contiguous
    mask: torch.Tensor  # bool [num_decodes, 1, 1, max_blocks * block_size]


class ReferenceAttention(AttentionBackend):
    """Paged attention with torch ops.

    Decodes are batched: their blocks are gathered into a padded ``[num_decodes, L, H_kv, D]``
    context and attended with one masked SDPA call. Prefill chunks run one sequence at a time;
    a chunk of ``q_len`` tokens ending at context length ``seq_len`` lets query ``i`` see keys
    ``0 .. seq_len - q_len + i``.
    """

    def plan(self, meta: AttentionMetadata) -> None:
        """Precompute write indices, gather indices and masks shared by all layers."""
        bs = meta.block_size
        if bs != self.kv_cache.block_size:
            raise ValueError(f"metadata block_size {bs} != KV cache block_size "
                             f"{self.kv_cache.block_size}")  # fmt: skip
        self._meta = meta
        self._write_block = torch.div(meta.slot_mapping, bs, rounding_mode="floor")
        self._write_offset = meta.slot_mapping - self._write_block * bs
        self._decode = self._plan_decodes(meta) if meta.num_decodes else None
        self._prefills = [
            self._plan_prefill(meta, s) for s in range(meta.num_decodes, meta.num_seqs)
        ]

    @staticmethod
    def _plan_decodes(meta: AttentionMetadata) -> _DecodePlan:
        nd, bs = meta.num_decodes, meta.block_size
        starts = meta.kv_indptr[:nd].long()
        counts = meta.kv_indptr[1 : nd + 1].long() - starts
        host_counts = meta.kv_indptr_host[1 : nd + 1] - meta.kv_indptr_host[:nd]
        if (meta.qo_indptr_host[1 : nd + 1] - meta.qo_indptr_host[:nd] != 1).any():
            raise ValueError("every decode sequence must have exactly one query token")
        max_blocks = int(host_counts.max())
        j = torch.arange(max_blocks, device=starts.device)
        # NOTE: padding columns point at the sequence's first block; the mask hides them.
        idx = torch.where(
            j[None, :] < counts[:, None], starts[:, None] + j[None, :], starts[:, None]
        )
        blocks = meta.kv_indices.long()[idx]
        cols = torch.arange(max_blocks * bs, device=starts.device)
        mask = cols[None, :] < meta.seq_lens[:nd].long()[:, None]
        return _DecodePlan(blocks=blocks, mask=mask[:, None, None, :])

    @staticmethod
    def _plan_prefill(meta: AttentionMetadata, s: int) -> _PrefillPlan:
        start, end = int(meta.qo_indptr_host[s]), int(meta.qo_indptr_host[s + 1])
        seq_len = int(meta.seq_lens_host[s])
        q_len = end - start
        if q_len <= 0 or q_len > seq_len:
            raise ValueError(f"sequence {s}: {q_len} query tokens for context length {seq_len}")
        kv_lo, kv_hi = int(meta.kv_indptr_host[s]), int(meta.kv_indptr_host[s + 1])
        blocks = meta.kv_indices[kv_lo:kv_hi].long()
        mask = None
        if q_len != seq_len:
            dev = meta.positions.device
            rows = torch.arange(seq_len - q_len, seq_len, device=dev)
            mask = torch.arange(seq_len, device=dev)[None, :] <= rows[:, None]
        return _PrefillPlan(start, end, seq_len, blocks, mask)

    def forward(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Write ``k``/``v`` at the step's slots, then attend over the paged cache."""
        cache = self.kv_cache.layer(layer_idx)
        if k.dtype != cache.dtype:
            raise ValueError(f"K/V dtype {k.dtype} != KV cache dtype {cache.dtype}")
        # NOTE: advanced indices around a slice: the target is [T, 2, H_kv, D].
        cache[self._write_block, :, self._write_offset] = torch.stack((k, v), dim=1)
        out = torch.empty_like(q)
        if self._decode is not None:
            nd = self._meta.num_decodes
            out[:nd] = self._attend_decodes(cache, q[:nd], self._decode)
        for p in self._prefills:
            out[p.start : p.end] = self._attend_prefill(cache, q, k, v, p)
        return out

    def _attend_decodes(self, cache: torch.Tensor, q: torch.Tensor, d: _DecodePlan) -> torch.Tensor:
        nd = d.blocks.shape[0]
        # NOTE: cache[:, 0] is a strided view [num_blocks, bs, H_kv, D]; indexing it by blocks
        # yields a contiguous [nd * nb, bs, H_kv, D], so the reshape below is free.
        flat = d.blocks.view(-1)
        keys = cache[:, 0].index_select(0, flat).view(nd, -1, self.num_kv_heads, self.head_dim)
        values = cache[:, 1].index_select(0, flat).view(nd, -1, self.num_kv_heads, self.head_dim)
        o = F.scaled_dot_product_attention(
            q[:, :, None, :],
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=d.mask,
            scale=self.scale,
            enable_gqa=True,
        )
        return o[:, :, 0, :]

    def _attend_prefill(self, cache, q, k, v, p: _PrefillPlan) -> torch.Tensor:
        qs = q[p.start : p.end].transpose(0, 1)  # [Hq, q_len, D]
        if p.mask is None:
            # The chunk is the whole context: its own K/V are exactly what was just cached.
            keys, values = k[p.start : p.end], v[p.start : p.end]
        else:
            shape = (-1, self.num_kv_heads, self.head_dim)
            keys = cache[:, 0].index_select(0, p.blocks).view(shape)[: p.seq_len]
            values = cache[:, 1].index_select(0, p.blocks).view(shape)[: p.seq_len]
        o = F.scaled_dot_product_attention(
            qs,
            keys.transpose(0, 1),
            values.transpose(0, 1),
            attn_mask=p.mask,
            is_causal=p.mask is None,
            scale=self.scale,
            enable_gqa=True,
        )
        return o.transpose(0, 1)
