"""Builds the executor's parts from the config: device, KV cache, attention backend."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from pyserve.attention.cpu import SUPPORTED_DTYPES as CPU_DTYPES
from pyserve.attention.cpu import CpuAttention
from pyserve.attention.reference import ReferenceAttention
from pyserve.config import CacheConfig
from pyserve.kv.cache import KVCache, block_bytes

log = logging.getLogger("pyserve")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU. Raises ValueError for an unusable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_cpu_threads() -> int:
    """The cores this process may run on, minus one kept for the frontend; at least 1."""
    return max(1, usable_cores() - 1)


def apply_cpu_threads(requested: int | None, device: torch.device) -> None:
    """Sets torch's intra-op threads: ``requested`` on any device, the default on CPU only
    (the attention kernel follows torch).

    NOTE: process-wide. On a shared or small host, fork-join threads that lose their core to
    another process stall every parallel region; one core is kept free for the frontend (HTTP,
    detokenizing) as vLLM CPU does. ValueError for a count below 1.
    """
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int)
                                  or requested < 1):  # fmt: skip
        raise ValueError(f"cpu_threads must be an integer >= 1, got {requested!r}")
    if requested is not None:  # honoured on any device: host-side torch work uses them too
        torch.set_num_threads(requested)
    elif device.type == "cpu":
        torch.set_num_threads(default_cpu_threads())


def make_kv_cache(model_cfg, cache: CacheConfig, dtype: torch.dtype, device: torch.device,
                  max_model_len: int) -> KVCache:  # fmt: skip
    """Sizes the KV pools from the budget (or the explicit block count) and plugs the CUDA swap
    kernels in when they are available."""
    args = (model_cfg.num_hidden_layers, model_cfg.num_key_value_heads, model_cfg.head_dim,
            cache.block_size)  # fmt: skip
    per_block = block_bytes(*args, dtype)
    if cache.num_gpu_blocks is not None:
        kv = KVCache(*args, cache.num_gpu_blocks, cache.swap_space_bytes // per_block, dtype,
                     device)  # fmt: skip
    else:
        kv = KVCache.from_budget(
            *args,
            dtype,
            device,
            gpu_memory_fraction=cache.gpu_memory_utilization,
            cpu_budget_bytes=cache.kv_cache_bytes,
            swap_budget_bytes=cache.swap_space_bytes,
        )
    need = -(-max_model_len // cache.block_size)
    if kv.num_blocks < need:
        raise ValueError(f"KV cache of {kv.num_blocks} blocks cannot hold one request of "
                         f"max_model_len={max_model_len} ({need} blocks): raise the KV budget "
                         "or lower max_model_len")  # fmt: skip
    if device.type == "cuda":
        from pyserve.kv.cuda_swap import CudaSwapOps, kernels_available

        if kernels_available():
            kv.set_swap_ops(CudaSwapOps(kv))
    return kv


ATTENTION_BACKENDS = ("auto", "reference", "cpu", "flashinfer")


def make_attention(model_cfg, kv: KVCache, dtype: torch.dtype, device: torch.device,
                   backend: str = "auto"):  # fmt: skip
    """The attention backend named by ``backend`` (see ``ModelConfig.attention_backend``).

    ``auto``: FlashInfer on CUDA with fp16/bf16 when it imports, the C++ CPU kernel on CPU with
    fp32/bf16, the torch reference otherwise. Raises ValueError for an unknown name or a
    backend that cannot run on this device/dtype.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention_backend {backend!r}; "
                         f"expected one of {', '.join(ATTENTION_BACKENDS)}")  # fmt: skip
    heads, head_dim = model_cfg.num_attention_heads, model_cfg.head_dim
    if backend == "reference":
        return ReferenceAttention(kv, heads, head_dim)
    if backend == "cpu" or (backend == "auto" and device.type == "cpu"):
        if device.type == "cpu" and dtype in CPU_DTYPES:
            return CpuAttention(kv, heads, head_dim)
        if backend == "cpu":
            raise ValueError(f"attention_backend 'cpu' needs device cpu and dtype float32 or "
                             f"bfloat16, got {device.type} and {dtype}")  # fmt: skip
        return ReferenceAttention(kv, heads, head_dim)
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        from pyserve.attention.flashinfer import FlashInferAttention, flashinfer_available

        if flashinfer_available():
            return FlashInferAttention(kv, heads, head_dim)
        if backend == "flashinfer":
            raise ValueError("attention_backend 'flashinfer' but flashinfer does not import")
        log.warning("FlashInfer not importable; using the reference attention backend")
    elif backend == "flashinfer":
        raise ValueError(f"attention_backend 'flashinfer' needs CUDA with float16 or bfloat16, "
                         f"got {device.type} and {dtype}")  # fmt: skip
    return ReferenceAttention(kv, heads, head_dim)


def resolve_max_model_len(requested: int | None, native: int) -> int:
    """The context limit: the model's own unless a smaller one is requested."""
    if requested is None:
        return native
    if requested < 1 or requested > native:
        raise ValueError(f"max_model_len must be in [1, {native}] for this model, got {requested}")
    return requested


EXECUTORS = ("real", "sim")


@dataclass
class ExecutorParts:
    """What the engine needs from its executor: the step runner and the model's facts.

    ``runner`` has ``execute(plan, batch, mask, prompt_rows) -> SamplerOutput | None``,
    ``last_forward_s``,
    ``admit(seq_id, request_id, params, num_prompt_tokens)`` (called once per added call) and
    ``stats() -> dict`` (merged into ``Engine.stats()``). ``core_options`` are extra
    ``_core.SchedulerConfig`` fields the executor sets (e.g. the simulated GPU's reload cost).
    """

    runner: Any
    tokenizer: Any
    vocab_size: int
    max_model_len: int
    eos_token_ids: list[int]
    device: torch.device
    num_gpu_blocks: int
    num_cpu_blocks: int
    model: torch.nn.Module | None = None  # None when nothing runs a model (executor sim)
    core_options: dict[str, Any] = field(default_factory=dict)


def build_executor(config) -> ExecutorParts:
    """The parts of ``config.model.executor``: ``real`` loads the model; ``sim`` paces steps by
    a cost-model preset (:mod:`pyserve.sim.realtime`). ValueError for an unknown executor."""
    mc = config.model
    if mc.executor == "sim":
        from pyserve.sim.realtime import build_realtime_executor

        return build_realtime_executor(config)
    if mc.executor != "real":
        raise ValueError(f"unknown executor {mc.executor!r}; expected one of "
                         f"{', '.join(EXECUTORS)}")  # fmt: skip
    if mc.preset is not None:
        raise ValueError("a cost-model preset needs executor 'sim' (--executor sim)")
    return _build_model_executor(config)


def _build_model_executor(config) -> ExecutorParts:
    from pyserve.engine.model_runner import ModelRunner
    from pyserve.model.loader import load_model, parse_dtype
    from pyserve.model.tokenizer import load_tokenizer

    mc = config.model
    device = resolve_device(mc.device)
    apply_cpu_threads(mc.cpu_threads, device)
    torch.manual_seed(mc.seed)
    model = load_model(mc.model, mc.dtype, device)
    dtype = parse_dtype(mc.dtype, model.config)
    cfg = model.config
    max_model_len = resolve_max_model_len(mc.max_model_len, cfg.max_model_len)
    kv = make_kv_cache(cfg, config.cache, dtype, device, max_model_len)
    attention = make_attention(cfg, kv, dtype, device, mc.attention_backend)
    return ExecutorParts(
        runner=ModelRunner(model, kv, attention, device), tokenizer=load_tokenizer(mc.model),
        vocab_size=int(cfg.vocab_size), max_model_len=max_model_len,
        eos_token_ids=list(cfg.eos_token_ids), device=device, num_gpu_blocks=kv.num_blocks,
        num_cpu_blocks=kv.num_cpu_blocks, model=model,
    )  # fmt: skip
