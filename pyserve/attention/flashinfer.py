"""FlashInfer paged attention (CUDA, fp16/bf16): the fast backend of the attention interface.

One float workspace is shared by a ``BatchDecodeWithPagedKVCacheWrapper`` (tensor cores on) for
the step's decodes and a ``BatchPrefillWithPagedKVCacheWrapper`` (causal) for its prefill chunks.
``plan()`` runs once per step from the StepPlan's int32 arrays (decodes first: the decode wrapper
gets sequences ``[0, num_decodes)``, the prefill wrapper the rest with its indptrs rebased to 0);
``forward()`` per layer appends the new K/V with ``flashinfer.append_paged_kv_cache`` and runs
both wrappers into one output. The host-side argument construction, :func:`build_plan_args`, is
plain numpy so it is tested without a GPU.

Verified against flashinfer-python 0.6.4 (the ``gpu`` extra pins it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from pyserve.attention.base import AttentionBackend, AttentionMetadata

DEFAULT_WORKSPACE_BYTES = 128 << 20


@functools.cache
def flashinfer_available() -> bool:
    """True when CUDA is available and ``flashinfer`` imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class WrapperArgs:
    """Host arrays for one wrapper's ``plan()``; sequences rebased to start at 0.

    ``kv_lo:kv_hi`` is the slice of the step's ``kv_indices`` this wrapper reads.
    """

    qo_indptr: np.ndarray  # int32 [n+1]
    kv_indptr: np.ndarray  # int32 [n+1]
    kv_last_page_len: np.ndarray  # int32 [n], 1..page_size
    kv_lo: int
    kv_hi: int

    @property
    def num_seqs(self) -> int:
        """Sequences this wrapper plans."""
        return len(self.kv_last_page_len)


@dataclass(frozen=True)
class FlashInferPlanArgs:
    """Everything ``plan()`` needs for one step, built on the host."""

    num_decodes: int
    decode: WrapperArgs | None  # sequences [0, num_decodes); one query token each
    prefill: WrapperArgs | None  # sequences [num_decodes, num_seqs)
    batch_indices: np.ndarray  # int32 [num_tokens]: sequence of each query token
    positions: np.ndarray  # int32 [num_tokens]: position each token's K/V is appended at


def _as_int_vector(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {arr.shape} {arr.dtype}")
    return arr.astype(np.int64)


def _check_indptr(indptr: np.ndarray, num_seqs: int, name: str) -> None:
    if len(indptr) != num_seqs + 1 or indptr[0] != 0:
        raise ValueError(f"{name} must have num_seqs + 1 = {num_seqs + 1} entries starting at 0")
    if (np.diff(indptr) < 0).any():
        raise ValueError(f"{name} must be non-decreasing")


def _slice(qo: np.ndarray, kv: np.ndarray, last: np.ndarray, lo: int, hi: int) -> WrapperArgs:
    i32 = np.int32
    return WrapperArgs(
        qo_indptr=(qo[lo : hi + 1] - qo[lo]).astype(i32),
        kv_indptr=(kv[lo : hi + 1] - kv[lo]).astype(i32),
        kv_last_page_len=last[lo:hi].astype(i32),
        kv_lo=int(kv[lo]),
        kv_hi=int(kv[hi]),
    )


def build_plan_args(
    qo_indptr, kv_indptr, seq_lens, num_decodes: int, page_size: int, num_kv_indices: int
) -> FlashInferPlanArgs:
    """Split a step (decodes first) into decode / prefill wrapper arguments.

    FlashInfer's definitions: sequence ``s`` owns pages ``kv_indices[kv_indptr[s]:kv_indptr[s+1]]``
    holding ``(pages - 1) * page_size + last_page_len`` tokens, ``1 <= last_page_len <=
    page_size``; its queries are rows ``qo_indptr[s]:qo_indptr[s+1]``, the last tokens of that
    context (so a causal chunk sees its cached prefix). Raises ValueError when the arrays break
    these rules.
    """
    qo = _as_int_vector(qo_indptr, "qo_indptr")
    kv = _as_int_vector(kv_indptr, "kv_indptr")
    lens = _as_int_vector(seq_lens, "seq_lens")
    num_seqs = len(lens)
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    if not 0 <= num_decodes <= num_seqs:
        raise ValueError(f"num_decodes {num_decodes} must be in [0, num_seqs = {num_seqs}]")
    _check_indptr(qo, num_seqs, "qo_indptr")
    _check_indptr(kv, num_seqs, "kv_indptr")
    if kv[-1] != num_kv_indices:
        raise ValueError(f"kv_indptr[-1] = {kv[-1]} != len(kv_indices) = {num_kv_indices}")
    q_lens = np.diff(qo)
    if (q_lens <= 0).any() or (q_lens > lens).any():
        raise ValueError("each sequence needs 1..seq_len query tokens")
    if (q_lens[:num_decodes] != 1).any():
        raise ValueError("decode sequences (the first num_decodes) must have one query token")
    pages = np.diff(kv)
    if (pages != -(-lens // page_size)).any():
        raise ValueError("kv_indptr must give each sequence ceil(seq_len / page_size) pages")
    last = lens - (pages - 1) * page_size
    batch = np.repeat(np.arange(num_seqs), q_lens)
    positions = np.arange(qo[-1]) - qo[batch] + (lens - q_lens)[batch]
    return FlashInferPlanArgs(
        num_decodes=num_decodes,
        decode=_slice(qo, kv, last, 0, num_decodes) if num_decodes else None,
        prefill=_slice(qo, kv, last, num_decodes, num_seqs) if num_decodes < num_seqs else None,
        batch_indices=batch.astype(np.int32),
        positions=positions.astype(np.int32),
    )


def _host(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr))


class FlashInferAttention(AttentionBackend):
    """Paged attention through FlashInfer on a CUDA :class:`~pyserve.kv.cache.KVCache`.

    NOTE: q, k, v and the cache must share the cache's dtype (float16 or bfloat16); the cache
    layout is NHD ``[num_blocks, 2, block_size, H_kv, D]`` per layer.
    """

    def __init__(
        self,
        kv_cache,
        num_heads: int,
        head_dim: int,
        scale: float | None = None,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    ) -> None:
        super().__init__(kv_cache, num_heads, head_dim, scale)
        if kv_cache.device.type != "cuda":
            raise ValueError(f"FlashInfer needs a CUDA KV cache, got device {kv_cache.device}")
        if kv_cache.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"FlashInfer supports float16/bfloat16 caches, got {kv_cache.dtype}")
        if not 1 << 20 <= workspace_bytes <= 1 << 30:
            raise ValueError(f"workspace_bytes must be in [1 MiB, 1 GiB], got {workspace_bytes}")
        import flashinfer

        self._fi = flashinfer
        # NOTE: one float workspace for both wrappers: they run one after the other on the same
        # stream, so their split-k scratch never overlaps in time.
        self.workspace = torch.zeros(workspace_bytes, dtype=torch.uint8, device=kv_cache.device)
        self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, kv_layout="NHD", use_tensor_cores=True
        )
        self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            self.workspace, kv_layout="NHD"
        )
        self._args: FlashInferPlanArgs | None = None

    def plan(self, meta: AttentionMetadata) -> None:
        """Plan both wrappers for the step and stage the K/V append indices."""
        if meta.block_size != self.kv_cache.block_size:
            raise ValueError(f"metadata block_size {meta.block_size} != KV cache block_size "
                             f"{self.kv_cache.block_size}")  # fmt: skip
        args = build_plan_args(meta.qo_indptr_host, meta.kv_indptr_host, meta.seq_lens_host,
                               meta.num_decodes, meta.block_size, meta.kv_indices.shape[0])  # fmt: skip
        common = dict(
            num_qo_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            page_size=meta.block_size,
            pos_encoding_mode="NONE",
            sm_scale=self.scale,
            q_data_type=self.kv_cache.dtype,
            kv_data_type=self.kv_cache.dtype,
        )
        # NOTE: indptrs / last_page_len go in as host tensors (plan() reads them on the host
        # anyway); kv_indices stay on the device (sliced, no copy).
        if args.decode is not None:
            d = args.decode
            self._decode.plan(
                indptr=_host(d.kv_indptr),
                indices=meta.kv_indices[d.kv_lo : d.kv_hi],
                last_page_len=_host(d.kv_last_page_len),
                head_dim=self.head_dim,
                **common,
            )
        if args.prefill is not None:
            p = args.prefill
            self._prefill.plan(
                qo_indptr=_host(p.qo_indptr),
                paged_kv_indptr=_host(p.kv_indptr),
                paged_kv_indices=meta.kv_indices[p.kv_lo : p.kv_hi],
                paged_kv_last_page_len=_host(p.kv_last_page_len),
                head_dim_qk=self.head_dim,
                causal=True,
                **common,
            )
        dev = self.kv_cache.device
        self._batch_indices = _host(args.batch_indices).pin_memory().to(dev, non_blocking=True)
        self._positions = meta.positions.to(torch.int32)
        self._kv_indptr = meta.kv_indptr
        self._kv_indices = meta.kv_indices
        self._kv_last_page_len = meta.kv_last_page_len
        self._args = args

    def forward(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Append this step's K/V to layer ``layer_idx``'s cache and attend; ``[T, Hq, D]``."""
        if self._args is None:
            raise ValueError("plan() must be called before forward()")
        cache = self.kv_cache.layer(layer_idx)
        self._fi.append_paged_kv_cache(
            k.contiguous(),
            v.contiguous(),
            self._batch_indices,
            self._positions,
            cache,
            self._kv_indices,
            self._kv_indptr,
            self._kv_last_page_len,
            kv_layout="NHD",
        )
        q = q.contiguous()
        out = torch.empty_like(q)
        nd = self._args.num_decodes
        if self._args.decode is not None:
            self._decode.run(q[:nd], cache, out=out[:nd])
        if self._args.prefill is not None:
            self._prefill.run(q[nd:], cache, out=out[nd:])
        return out
