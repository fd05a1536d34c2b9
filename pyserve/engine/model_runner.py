"""Executes a StepPlan on the model: block moves, attention plan, forward, sampling."""

from __future__ import annotations

import time
from concurrent.futures import Future

import numpy as np
import torch

from pyserve.attention.base import build_attention_metadata
from pyserve.engine.prompt_logprobs import PromptRows
from pyserve.model.sampler import Sampler, SamplerOutput, SamplingBatch


class ModelRunner:
    """Owns the model, the KV cache and the attention backend for one engine.

    NOTE: `execute` must run before the next `schedule()`: the plan's arrays are views into the
    core's buffers.
    """

    def __init__(self, model: torch.nn.Module, cache, attention, device: torch.device) -> None:
        self.model = model
        self.cache = cache
        self.attn = attention
        self.device = device
        self.sampler = Sampler()
        self.last_forward_s = 0.0  # model forward + logits of the last step (benchmarks)

    def admit(self, seq_id: int, request_id: str, params, num_prompt_tokens: int) -> None:
        """A call was added in ``seq_id``: the model keeps nothing per call outside the KV."""

    def stats(self) -> dict:
        """The model runner adds no counters to ``Engine.stats()``."""
        return {}

    @torch.inference_mode()
    def execute(
        self,
        plan,
        batch: SamplingBatch | None,
        token_bitmask: torch.Tensor | Future | None = None,
        prompt_rows: PromptRows | None = None,
    ) -> SamplerOutput | None:
        """Runs one step; returns the sampled rows (None when the plan samples nothing).

        ``token_bitmask`` (structured outputs) may be a Future: it is resolved after the forward,
        so a mask filled on another thread overlaps the model. ``prompt_rows`` (prompt logprobs)
        get their results written into them from the raw logits of their rows."""
        self.cache.apply(swap_out=plan.swap_out, swap_in=plan.swap_in, copy=plan.copy)
        if plan.num_tokens == 0:
            return None
        meta = build_attention_metadata(plan, self.cache.block_size, self.device)
        self.attn.plan(meta)
        ids = torch.from_numpy(np.asarray(plan.input_ids, dtype=np.int64)).to(self.device)
        rows = torch.from_numpy(np.asarray(plan.sample_token_idx, dtype=np.int64)).to(self.device)
        t0 = time.perf_counter()
        hidden = self.model(ids, meta.positions, self.attn)
        logits = self.model.compute_logits(hidden.index_select(0, rows)) if batch else None
        if prompt_rows is not None:
            prompt_rows.score(lambda r: self.model.compute_logits(hidden.index_select(0, r)))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_forward_s = time.perf_counter() - t0
        if batch is None:
            return None
        if isinstance(token_bitmask, Future):
            token_bitmask = token_bitmask.result()
        if token_bitmask is not None:
            batch.token_bitmask = token_bitmask
        return self.sampler(logits, batch)
