"""Configuration: one frozen dataclass tree, built once and passed down (no hidden globals)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pyserve import _core


@dataclass(frozen=True)
class ModelConfig:
    """Which model to run and how."""

    model: str = "builtin:tiny"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    # auto | reference | cpu | flashinfer. auto: flashinfer on CUDA with fp16/bf16 when it
    # imports, the C++ kernel (cpu) on CPU with fp32/bf16, the torch reference otherwise.
    attention_backend: str = "auto"
    # CPU intra-op threads (torch and the attention kernel; process-wide). None: the cores this
    # process may run on minus one kept for the frontend, at least 1 (vLLM CPU's rule);
    # LLM (offline, no frontend) passes every usable core instead.
    cpu_threads: int | None = None
    # real: run the model. sim: no weights; each step sleeps the cost-model time of `preset` and
    # draws its tokens as the simulator does (pyserve/sim/realtime.py); `model` gives the tokenizer.
    executor: str = "real"
    preset: str | None = None  # a pyserve.sim preset name or preset .json (executor sim only)


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache sizing."""

    block_size: int = 16
    num_gpu_blocks: int | None = None  # None: derived from the memory budget
    gpu_memory_utilization: float = 0.85  # CUDA: fraction of free memory for weights + KV
    kv_cache_bytes: int = 256 << 20  # CPU: byte budget of the KV cache
    # Host pool (pinned on CUDA): swap space for preempted calls and the host tier of the prefix
    # cache (`--cpu-cache-gib`).
    swap_space_bytes: int = 64 << 20
    enable_prefix_caching: bool = True


_CORE_DEFAULTS = _core.SchedulerConfig()  # NOTE: the one source of the scheduler's defaults


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits, preemption and policy; defaults are the C++ core's
    (csrc/include/pyserve/config.h)."""

    max_num_batched_tokens: int = _CORE_DEFAULTS.max_num_batched_tokens
    max_num_seqs: int = _CORE_DEFAULTS.max_num_seqs
    policy: str = _CORE_DEFAULTS.policy
    preemption_mode: str = _CORE_DEFAULTS.preemption_mode  # recompute | swap
    kv_retention: str = _CORE_DEFAULTS.kv_retention  # lru | ttl | program (docs/sessions.md)
    max_preemptions_per_step: int = _CORE_DEFAULTS.max_preemptions_per_step
    min_steps_between_preemptions: int = _CORE_DEFAULTS.min_steps_between_preemptions
    policy_options: dict[str, Any] = field(default_factory=dict)
    # A ranker folder (`pyserve ltr train --out DIR`): scores each request on arrival for `ltr`.
    ltr_model: str | None = None


@dataclass(frozen=True)
class EngineConfig:
    """The whole tree handed to the engine."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    @classmethod
    def from_kwargs(cls, model: str = "builtin:tiny", **kwargs: Any) -> EngineConfig:
        """Builds the tree from flat keyword arguments (`LLM(model, block_size=32, ...)`).

        Raises ValueError for an unknown keyword.
        """
        parts: dict[str, dict[str, Any]] = {"model": {"model": model}, "cache": {}, "scheduler": {}}
        owners = {
            f.name: name
            for name, klass in (
                ("model", ModelConfig),
                ("cache", CacheConfig),
                ("scheduler", SchedulerConfig),
            )
            for f in dataclasses.fields(klass)
        }
        for key, value in kwargs.items():
            if key not in owners:
                raise ValueError(f"unknown engine option '{key}'")
            parts[owners[key]][key] = value
        return cls(
            model=ModelConfig(**parts["model"]),
            cache=CacheConfig(**parts["cache"]),
            scheduler=SchedulerConfig(**parts["scheduler"]),
        )


def parse_policy_options(items: list[str]) -> dict[str, Any]:
    """``--policy-option`` values (serve and bench share this parser): ``["beta=8",
    "plas_ltr_first_call=true"]`` -> ``{"beta": 8, ...}``; ints, floats and true/false are
    converted. ValueError for a malformed item or a key that is not a core config field."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--policy-option must be KEY=VALUE, got {item!r}")
        if not hasattr(_CORE_DEFAULTS, key):
            raise ValueError(f"unknown policy option {key!r} (not a SchedulerConfig field)")
        out[key] = _parse_value(value)
    return out


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def core_config(
    sched: SchedulerConfig,
    cache: CacheConfig,
    *,
    num_gpu_blocks: int,
    num_cpu_blocks: int,
    max_model_len: int,
) -> _core.SchedulerConfig:
    """Builds and validates the C++ scheduler config. Raises ValueError when invalid."""
    c = _core.SchedulerConfig()
    c.num_gpu_blocks = num_gpu_blocks
    c.num_cpu_blocks = num_cpu_blocks
    c.block_size = cache.block_size
    c.enable_prefix_caching = cache.enable_prefix_caching
    c.max_num_batched_tokens = sched.max_num_batched_tokens
    c.max_num_seqs = sched.max_num_seqs
    c.max_model_len = max_model_len
    c.preemption_mode = sched.preemption_mode
    c.max_preemptions_per_step = sched.max_preemptions_per_step
    c.min_steps_between_preemptions = sched.min_steps_between_preemptions
    c.policy = sched.policy
    c.kv_retention = sched.kv_retention
    for key, value in sched.policy_options.items():
        if not hasattr(c, key):
            raise ValueError(f"unknown policy option '{key}'")
        setattr(c, key, value)
    c.validate()
    return c
