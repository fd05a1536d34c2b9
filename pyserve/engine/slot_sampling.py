"""Per-slot sampling settings kept as persistent arrays, updated on add and finish.

The core's dense seq ids are the slots. A step gathers its rows' settings with one index per
array, so the step's Python cost does not grow with the number of running requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pyserve.model.sampler import SamplingBatch, step_generator
from pyserve.sampling_params import SamplingParams

_FLOATS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty")  # fmt: skip


class SlotSampling:
    """Sampling settings and per-slot token state for every live sequence.

    NOTE: numpy arrays indexed by seq id, grown by doubling; ``out_counts`` / ``prompt_seen``
    (``[slots, vocab]`` on the device) exist only while a penalised request has been seen;
    ``num_output`` counts each slot's sampled tokens (the seed step and the min_tokens ban).
    """

    def __init__(self, vocab_size: int, eos_token_ids: Sequence[int], device: torch.device,
                 capacity: int = 64) -> None:  # fmt: skip
        self.vocab = vocab_size
        self.eos = tuple(int(t) for t in eos_token_ids)
        self.device = device
        self.f = {name: np.ones(capacity, np.float32) for name in _FLOATS}
        self.top_k = np.zeros(capacity, np.int64)
        self.seed = np.full(capacity, -1, np.int64)
        self.min_tokens = np.zeros(capacity, np.int32)
        self.num_logprobs = np.full(capacity, -1, np.int32)  # -1: no logprobs
        self.num_output = np.zeros(capacity, np.int32)
        self.ban: dict[int, tuple[int, ...]] = {}  # slot -> tokens banned below min_tokens
        self.out_counts: torch.Tensor | None = None
        self.prompt_seen: torch.Tensor | None = None
        self.live = np.zeros(capacity, bool)
        self._penalised = np.zeros(capacity, bool)
        self._filtered = np.zeros(capacity, bool)

    # -- add / finish ----------------------------------------------------------------------------
    def add(self, slot: int, p: SamplingParams, prompt_ids: Sequence[int]) -> None:
        """Records a new sequence's settings in ``slot``."""
        self._grow(slot + 1)
        with np.errstate(over="ignore"):  # NOTE: like torch, huge values become float32 inf
            for name in _FLOATS:
                self.f[name][slot] = getattr(p, name)
        self.top_k[slot] = p.top_k
        self.seed[slot] = -1 if p.seed is None else p.seed
        self.min_tokens[slot] = p.min_tokens
        self.num_logprobs[slot] = -1 if p.logprobs is None else p.logprobs
        self.num_output[slot] = 0
        self.live[slot] = True
        self._filtered[slot] = p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0
        self._penalised[slot] = bool(p.repetition_penalty != 1.0 or p.presence_penalty
                                     or p.frequency_penalty)  # fmt: skip
        if p.min_tokens > 0:
            self.ban[slot] = (() if p.ignore_eos else self.eos) + tuple(p.stop_token_ids or ())
        if self._penalised[slot]:
            self._ensure_penalty_state()
            self.out_counts[slot].zero_()
            self.prompt_seen[slot].zero_()
            ids = torch.as_tensor(list(prompt_ids), dtype=torch.int64, device=self.device)
            self.prompt_seen[slot, ids] = True

    def finish(self, slot: int) -> None:
        """Forgets ``slot`` (its sequence left the core)."""
        if 0 <= slot < self.live.shape[0]:
            self.live[slot] = self._penalised[slot] = self._filtered[slot] = False
            self.ban.pop(slot, None)

    def record(self, slots: np.ndarray, tokens: np.ndarray) -> None:
        """Counts each slot's newly sampled token (vectorised; one token per slot per step)."""
        self.num_output[slots] += 1
        if self.out_counts is not None and slots.shape[0]:
            s = torch.from_numpy(slots.astype(np.int64)).to(self.device)
            t = torch.from_numpy(tokens.astype(np.int64)).to(self.device)
            self.out_counts.index_put_((s, t), torch.ones_like(s, dtype=torch.float32),
                                       accumulate=True)  # fmt: skip

    # -- the step ----------------------------------------------------------------------------
    def batch(self, slots: np.ndarray) -> SamplingBatch:
        """The sampling batch of the step's sample rows (``slots`` = their seq ids)."""
        dev = self.device
        idx = torch.from_numpy(slots.astype(np.int64))

        def col(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).index_select(0, idx).to(dev)

        temps = self.f["temperature"][slots]
        penalised = bool(self._penalised[slots].any())
        nlp = self.num_logprobs[slots]
        return SamplingBatch(
            temperature=torch.from_numpy(temps).to(dev),
            top_p=col(self.f["top_p"]),
            top_k=col(self.top_k),
            min_p=col(self.f["min_p"]),
            repetition_penalty=col(self.f["repetition_penalty"]),
            presence_penalty=col(self.f["presence_penalty"]),
            frequency_penalty=col(self.f["frequency_penalty"]),
            output_counts=self.out_counts.index_select(0, idx.to(dev)) if penalised else None,
            prompt_seen=self.prompt_seen.index_select(0, idx.to(dev)) if penalised else None,
            banned_token_ids=self._banned(slots),
            generators=self._generators(slots),
            num_logprobs=int(nlp.max(initial=0)),
            need_logprobs=bool((nlp >= 0).any()),
            all_greedy=bool((temps == 0).all()),
            any_filter=bool(self._filtered[slots].any()),
            any_penalty=penalised,
        )

    def _banned(self, slots: np.ndarray) -> torch.Tensor | None:
        if not self.ban:
            return None
        below = np.nonzero(self.num_output[slots] < self.min_tokens[slots])[0]
        rows = [self.ban.get(int(slots[i]), ()) for i in below]
        if not any(rows):
            return None
        width = max(len(r) for r in rows)
        out = np.full((slots.shape[0], width), -1, np.int64)
        for i, r in zip(below, rows):
            out[i, : len(r)] = r
        return torch.from_numpy(out).to(self.device)

    def _generators(self, slots: np.ndarray) -> list[torch.Generator | None] | None:
        seeded = np.nonzero(self.seed[slots] >= 0)[0]
        if seeded.shape[0] == 0:
            return None
        gens: list[torch.Generator | None] = [None] * slots.shape[0]
        for i in seeded:
            s = int(slots[i])
            gens[i] = step_generator(int(self.seed[s]), int(self.num_output[s]), self.device)
        return gens

    def _ensure_penalty_state(self) -> None:
        n = self.live.shape[0]
        if self.out_counts is None or self.out_counts.shape[0] < n:
            counts = torch.zeros(n, self.vocab, dtype=torch.float32, device=self.device)
            seen = torch.zeros(n, self.vocab, dtype=torch.bool, device=self.device)
            if self.out_counts is not None:
                counts[: self.out_counts.shape[0]] = self.out_counts
                seen[: self.prompt_seen.shape[0]] = self.prompt_seen
            self.out_counts, self.prompt_seen = counts, seen

    def _grow(self, need: int) -> None:
        n = self.live.shape[0]
        if need <= n:
            return
        m = max(2 * n, need)

        def grow(a: np.ndarray, fill) -> np.ndarray:
            b = np.full(m, fill, a.dtype)
            b[:n] = a
            return b

        self.f = {k: grow(v, 1.0) for k, v in self.f.items()}
        self.top_k, self.seed = grow(self.top_k, 0), grow(self.seed, -1)
        self.min_tokens, self.num_output = grow(self.min_tokens, 0), grow(self.num_output, 0)
        self.num_logprobs = grow(self.num_logprobs, -1)
        self.live, self._penalised = grow(self.live, False), grow(self._penalised, False)
        self._filtered = grow(self._filtered, False)
        if self.out_counts is not None:
            self._ensure_penalty_state()
