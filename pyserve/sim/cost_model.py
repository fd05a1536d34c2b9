"""Analytical step-time model for the simulator.

A step runs a batch of sequences; sequence ``i`` runs ``q_lens[i]`` query tokens and has
``ctx_lens[i]`` tokens of context *after* the step (cached prefix + this step's tokens). Its time is

    max(linear FLOPs / linear_flops_per_s, weight bytes / hbm_bytes_per_s)      linear layers
  + sum_i max(attn FLOPs_i / attn_flops_per_s, KV bytes_i / hbm_bytes_per_s)      attention
  + num_tokens * token_overhead_s + step_overhead_s                              everything else

All rates are for the whole deployment (every GPU of a tensor-parallel group together). The rates
and overheads live in :class:`CostParams`, which presets derive from published hardware specs
(``presets.py``) and ``calibrate.py`` fits to step times logged by the real engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Rows (beyond the decodes) up to which step_time uses Python scalars instead of numpy calls.
_SCALAR_ROWS = 8


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer (Llama family: GQA attention, gated MLP)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int = 2
    tie_embeddings: bool = False
    context_len: int = 131072  # the model's context window (Llama-3.1: 128K tokens)

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, field) < 1:
                raise ValueError(f"ModelSpec.{field} must be >= 1, got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("ModelSpec.num_heads must be a multiple of num_kv_heads")
        if self.intermediate_size < 1 or self.vocab_size < 1 or self.dtype_bytes < 1:
            raise ValueError("ModelSpec intermediate_size, vocab_size, dtype_bytes must be >= 1")

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer (attention projections, gated MLP, two RMSNorms)."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attn = self.hidden_size * (q + 2 * kv) + q * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return attn + mlp + 2 * self.hidden_size

    @property
    def num_params(self) -> int:
        """All weights: layers, embedding, LM head (unless tied), final norm."""
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_embeddings else embed
        return self.num_layers * self.layer_params + embed + head + self.hidden_size

    @property
    def weight_bytes(self) -> int:
        """Bytes resident in GPU memory for the weights."""
        return self.num_params * self.dtype_bytes

    @property
    def weight_read_bytes(self) -> int:
        """Bytes read per step: every layer and the LM head (the embedding is only gathered)."""
        return (self.num_layers * self.layer_params + self.vocab_size * self.hidden_size) * (
            self.dtype_bytes
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def linear_flops_per_token(self) -> int:
        """Matmul FLOPs of the decoder layers for one token (2 FLOPs per multiply-add)."""
        return 2 * self.num_layers * (self.layer_params - 2 * self.hidden_size)

    @property
    def head_flops_per_seq(self) -> int:
        """LM-head FLOPs: logits are computed for the last token of each sequence only."""
        return 2 * self.hidden_size * self.vocab_size

    @property
    def attn_flops_per_pair(self) -> int:
        """Attention FLOPs per (query token, key token) pair over all layers (QK^T and PV)."""
        return 4 * self.num_layers * self.num_heads * self.head_dim


@dataclass(frozen=True)
class HardwareSpec:
    """Published per-GPU numbers of one deployment (``num_gpus`` GPUs in one TP group)."""

    name: str
    peak_flops: float  # dense bf16 FLOP/s per GPU
    hbm_bandwidth: float  # bytes/s per GPU
    hbm_bytes: float  # bytes per GPU
    host_link_bandwidth: float  # bytes/s per GPU, one direction (PCIe)
    num_gpus: int = 1
    interconnect_bus_bandwidth: float = 0.0  # NCCL all-reduce bus bandwidth per GPU, bytes/s
    interconnect_latency_s: float = 0.0  # latency of one small all-reduce

    def __post_init__(self) -> None:
        for field in ("peak_flops", "hbm_bandwidth", "hbm_bytes", "host_link_bandwidth"):
            if not getattr(self, field) > 0:
                raise ValueError(f"HardwareSpec.{field} must be > 0, got {getattr(self, field)}")
        if self.num_gpus < 1:
            raise ValueError(f"HardwareSpec.num_gpus must be >= 1, got {self.num_gpus}")
        if self.num_gpus > 1 and not self.interconnect_bus_bandwidth > 0:
            raise ValueError("HardwareSpec with num_gpus > 1 needs interconnect_bus_bandwidth > 0")


@dataclass(frozen=True)
class CostParams:
    """The coefficients of the step-time formula (whole deployment). Rates may be ``inf``."""

    linear_flops_per_s: float
    attn_flops_per_s: float
    hbm_bytes_per_s: float
    host_bytes_per_s: float
    step_overhead_s: float
    token_overhead_s: float
    swap_latency_s: float = 0.0

    def __post_init__(self) -> None:
        for field in ("linear_flops_per_s", "attn_flops_per_s", "hbm_bytes_per_s"):
            if not getattr(self, field) > 0:
                raise ValueError(f"CostParams.{field} must be > 0, got {getattr(self, field)}")
        if not self.host_bytes_per_s > 0:
            raise ValueError(
                f"CostParams.host_bytes_per_s must be > 0, got {self.host_bytes_per_s}"
            )
        for field in ("step_overhead_s", "token_overhead_s", "swap_latency_s"):
            value = getattr(self, field)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"CostParams.{field} must be finite and >= 0, got {value}")


@dataclass(frozen=True)
class Preset:
    """A model on a deployment with its cost coefficients and memory budget."""

    name: str
    model: ModelSpec
    hardware: HardwareSpec
    params: CostParams
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: float = 2 * 2**30  # per GPU: activations, workspace, CUDA graphs
    description: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                "Preset.gpu_memory_utilization must be in (0, 1], "
                f"got {self.gpu_memory_utilization}"
            )
        if self.activation_reserve_bytes < 0:
            raise ValueError("Preset.activation_reserve_bytes must be >= 0")


class CostModel:
    """Step and swap times of one preset. Cheap to call: a handful of numpy ops per step."""

    def __init__(self, preset: Preset, block_size: int = 16) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.preset = preset
        self.block_size = block_size
        m, p = preset.model, preset.params
        # NOTE: everything below is seconds per unit, so step_time is only multiply-adds.
        self._s_per_token_flop = m.linear_flops_per_token / p.linear_flops_per_s
        self._s_per_seq_flop = m.head_flops_per_seq / p.linear_flops_per_s
        self._s_weights = m.weight_read_bytes / p.hbm_bytes_per_s
        self._s_per_kv_token = m.kv_bytes_per_token / p.hbm_bytes_per_s
        # attn FLOPs of a chunk of q queries ending at context c: pairs = q * (2c - q + 1) / 2
        self._s_per_half_pair = m.attn_flops_per_pair / p.attn_flops_per_s / 2.0
        self._s_per_decode_ctx = max(2.0 * self._s_per_half_pair, self._s_per_kv_token)
        self._s_per_token = p.token_overhead_s
        self._s_step = p.step_overhead_s

    def step_time(self, q_lens: np.ndarray, ctx_lens: np.ndarray, num_decodes: int = 0) -> float:
        """Seconds to run one step.

        ``q_lens[i]`` (>= 1) is the number of tokens sequence i runs this step and ``ctx_lens[i]``
        (>= q_lens[i]) its context length after the step: 1-D integer arrays of equal length (the
        StepPlan's ``np.diff(qo_indptr)`` and ``seq_lens``). An empty batch costs 0.
        ``num_decodes``: the first rows that are decodes (q = 1), as the StepPlan orders them;
        passing it skips per-row work for them (same result, fewer numpy calls).
        NOTE: elements are not checked here (hot path); use :func:`check_batch` on untrusted input.
        """
        n = q_lens.shape[0]
        if n != ctx_lens.shape[0]:
            raise ValueError(f"q_lens has {n} entries but ctx_lens has {ctx_lens.shape[0]}")
        if not 0 <= num_decodes <= n:
            raise ValueError(f"num_decodes must be in [0, {n}], got {num_decodes}")
        if n == 0:
            return 0.0
        tokens = float(num_decodes)
        attn = 0.0
        if num_decodes:
            # a decode attends to its whole context: FLOP time 2*half_pair*c vs KV time kv*c
            attn = float(ctx_lens[:num_decodes].sum()) * self._s_per_decode_ctx
        if num_decodes < n:
            t, a = self._rows_time(q_lens[num_decodes:], ctx_lens[num_decodes:])
            tokens += t
            attn += a
        linear = max(tokens * self._s_per_token_flop + n * self._s_per_seq_flop, self._s_weights)
        return linear + attn + tokens * self._s_per_token + self._s_step

    def _rows_time(self, q_lens: np.ndarray, ctx_lens: np.ndarray) -> tuple[float, float]:
        """(tokens, attention seconds) of rows with any q: per row max(FLOP time, KV read time)."""
        hp, kv = self._s_per_half_pair, self._s_per_kv_token
        if q_lens.shape[0] <= _SCALAR_ROWS:
            # NOTE: a few prefill chunks: Python floats beat the fixed cost of numpy calls.
            qs, cs = q_lens.tolist(), ctx_lens.tolist()
            attn = sum(max((c + c - q + 1) * q * hp, c * kv) for q, c in zip(qs, cs, strict=True))
            return float(sum(qs)), attn
        q = q_lens.astype(np.float64)
        c = ctx_lens.astype(np.float64)
        compute = (c + c - q + 1.0) * q
        compute *= hp
        c *= kv
        return float(q.sum()), float(np.maximum(compute, c, out=c).sum())

    def swap_time(self, num_blocks: int, block_size: int | None = None) -> float:
        """Seconds to move ``num_blocks`` KV blocks across the host link in one batched copy."""
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if num_blocks == 0:
            return 0.0
        bs = self.block_size if block_size is None else block_size
        moved = num_blocks * bs * self.preset.model.kv_bytes_per_token
        return self.preset.params.swap_latency_s + moved / self.preset.params.host_bytes_per_s

    def with_transfers(self, step_s: float, num_blocks: int) -> float:
        """A step of ``step_s`` forward seconds that also moves ``num_blocks`` blocks across the
        host link (swap-outs and swap-ins of its plan).

        NOTE: the copies run on their own stream layer by layer (the CUDA swap kernel, vLLM's
        offloading connector and LMCache do the same), so they overlap the forward: the step takes
        the longer of the two plus one copy launch, not their sum.
        """
        moved = self.swap_time(num_blocks) - self.preset.params.swap_latency_s
        return max(step_s, moved) + self.preset.params.swap_latency_s

    def kv_capacity_blocks(self, block_size: int | None = None) -> int:
        """GPU KV blocks that fit after the weights and the activation reserve."""
        bs = self.block_size if block_size is None else block_size
        if bs < 1:
            raise ValueError(f"block_size must be >= 1, got {bs}")
        p = self.preset
        hw = p.hardware
        budget = hw.num_gpus * (
            hw.hbm_bytes * p.gpu_memory_utilization - p.activation_reserve_bytes
        )
        free = budget - p.model.weight_bytes
        if free <= 0:
            raise ValueError(f"preset {p.name!r}: the weights do not fit in GPU memory")
        return int(free // (bs * p.model.kv_bytes_per_token))


def check_batch(q_lens: np.ndarray, ctx_lens: np.ndarray) -> None:
    """Raise ValueError unless the arrays describe a valid batch for :meth:`CostModel.step_time`."""
    q = np.asarray(q_lens)
    c = np.asarray(ctx_lens)
    if q.ndim != 1 or c.ndim != 1 or q.shape != c.shape:
        raise ValueError(
            f"q_lens and ctx_lens must be 1-D of equal length, got {q.shape}, {c.shape}"
        )
    if q.size and not (np.issubdtype(q.dtype, np.integer) and np.issubdtype(c.dtype, np.integer)):
        raise ValueError("q_lens and ctx_lens must be integer arrays")
    if q.size and q.min() < 1:
        raise ValueError("every q_lens entry must be >= 1")
    if q.size and (c < q).any():
        raise ValueError("every ctx_lens entry must be >= its q_lens entry")
