"""Vectorised token sampling: penalties, temperature, top-k / top-p / min-p, seeds, logprobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pyserve.sampling_params import SamplingParams

_SEED_MIX = 0x9E3779B97F4A7C15  # spreads (seed, step) over the generator's 64-bit seed space


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Generator for draw ``step`` of a seeded request: the same (seed, step) ⇒ the same draw."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * _SEED_MIX + step) % (1 << 63))
    return gen


@dataclass
class SamplingBatch:
    """Per-row sampling settings as tensors on the logits' device (rows = sampled sequences).

    ``top_k <= 0`` disables top-k. Penalties read the tokens seen so far either as
    ``output_token_ids`` / ``prompt_token_ids`` (``[N, L]`` int64 padded with -1) or, from the
    engine's persistent per-slot state, as ``output_counts`` (float32 ``[N, V]``) and
    ``prompt_seen`` (bool ``[N, V]``); ``None`` when no penalties are used.
    ``banned_token_ids`` ``[N, B]`` (-1 padded) are masked out, e.g. EOS before ``min_tokens``.
    ``generators[i]`` (optional) draws row ``i``'s randomness; other rows use the global (or
    ``generator``) RNG. ``token_bitmask`` (optional, int32 ``[N, ceil(V / 32)]``, xgrammar's
    layout: bit ``j % 32`` of word ``j // 32`` set = token ``j`` allowed) restricts each row to
    the tokens a structured-output matcher allows; it is applied before everything else.
    """

    temperature: torch.Tensor  # float32 [N]
    top_p: torch.Tensor  # float32 [N]
    top_k: torch.Tensor  # int64 [N]
    min_p: torch.Tensor  # float32 [N]
    repetition_penalty: torch.Tensor  # float32 [N]
    presence_penalty: torch.Tensor  # float32 [N]
    frequency_penalty: torch.Tensor  # float32 [N]
    output_token_ids: torch.Tensor | None = None
    prompt_token_ids: torch.Tensor | None = None
    output_counts: torch.Tensor | None = None
    prompt_seen: torch.Tensor | None = None
    banned_token_ids: torch.Tensor | None = None
    token_bitmask: torch.Tensor | None = None
    generators: Sequence[torch.Generator | None] | None = None
    num_logprobs: int = 0
    need_logprobs: bool = False
    all_greedy: bool = False
    any_filter: bool = True
    any_penalty: bool = True

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        output_ids: Sequence[Sequence[int]],
        prompt_ids: Sequence[Sequence[int]] | None = None,
        eos_token_ids: Sequence[int] = (),
        device: torch.device | str = "cpu",
    ) -> SamplingBatch:
        """Build from each row's params and tokens so far (``output_ids`` sets the seed step)."""
        if len(output_ids) != len(params) or (
            prompt_ids is not None and len(prompt_ids) != len(params)
        ):
            raise ValueError("params, output_ids and prompt_ids must have one entry per row")
        dev = torch.device(device)

        def col(name: str, dtype=torch.float32) -> torch.Tensor:
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=dev)

        any_penalty = any(
            p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty for p in params
        )
        banned = [
            _min_tokens_ban(p, len(out), eos_token_ids)
            for p, out in zip(params, output_ids, strict=True)
        ]
        return cls(
            temperature=col("temperature"),
            top_p=col("top_p"),
            top_k=col("top_k", torch.int64),
            min_p=col("min_p"),
            repetition_penalty=col("repetition_penalty"),
            presence_penalty=col("presence_penalty"),
            frequency_penalty=col("frequency_penalty"),
            output_token_ids=pad_token_ids(output_ids, dev) if any_penalty else None,
            prompt_token_ids=pad_token_ids(prompt_ids, dev) if any_penalty and prompt_ids else None,
            banned_token_ids=pad_token_ids(banned, dev) if any(banned) else None,
            generators=[
                None if p.seed is None else step_generator(p.seed, len(out), dev)
                for p, out in zip(params, output_ids, strict=True)
            ],
            num_logprobs=max((p.logprobs or 0) for p in params),
            need_logprobs=any(p.logprobs is not None for p in params),
            all_greedy=all(p.temperature == 0.0 for p in params),
            any_filter=any(p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0 for p in params),
            any_penalty=any_penalty,
        )


def _min_tokens_ban(p: SamplingParams, num_out: int, eos: Sequence[int]) -> tuple[int, ...]:
    """Tokens that would end the request, banned while it is below ``min_tokens``."""
    if num_out >= p.min_tokens:
        return ()
    return (() if p.ignore_eos else tuple(eos)) + tuple(p.stop_token_ids)


def pad_token_ids(rows: Sequence[Sequence[int]] | None, device: torch.device) -> torch.Tensor:
    """``[N, max_len]`` int64 tensor of the rows, padded with -1."""
    rows = rows or []
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), -1, dtype=torch.int64)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.int64)
    return out.to(device)


@dataclass
class SamplerOutput:
    """Sampled tokens and, when requested, logprobs of the processed distribution."""

    token_ids: torch.Tensor  # int64 [N]
    logprobs: torch.Tensor | None = None  # float32 [N], the sampled token's logprob
    topn_ids: torch.Tensor | None = None  # int64 [N, num_logprobs]
    topn_logprobs: torch.Tensor | None = None  # float32 [N, num_logprobs]


def token_counts(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """Occurrences ``[N, V]`` (float32) of each token in the -1 padded rows of ``ids``."""
    counts = torch.zeros(ids.shape[0], vocab + 1, dtype=torch.float32, device=ids.device)
    # NOTE: padding (-1) goes to the extra column `vocab`, dropped below.
    idx = torch.where(ids < 0, vocab, ids)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
    return counts[:, :vocab]


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Repetition (prompt + output), presence and frequency (output) penalties, out of place."""
    vocab = logits.shape[1]
    if batch.output_counts is not None:
        out_counts = batch.output_counts[:, :vocab]
    else:
        out_counts = token_counts(batch.output_token_ids, vocab)
    seen = out_counts > 0
    if batch.prompt_seen is not None:
        seen = seen | batch.prompt_seen[:, :vocab]
    elif batch.prompt_token_ids is not None:
        seen = seen | (token_counts(batch.prompt_token_ids, vocab) > 0)
    rep = batch.repetition_penalty[:, None]
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    logits = logits - batch.frequency_penalty[:, None] * out_counts
    return logits - batch.presence_penalty[:, None] * (out_counts > 0).float()


def apply_filters(scaled: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Mask (to -inf) tokens outside min-p, top-k and top-p of temperature-scaled logits."""
    neg_inf = torch.tensor(float("-inf"), device=scaled.device)
    vocab = scaled.shape[1]
    # min-p: p_i < min_p * p_max  <=>  z_i < z_max + log(min_p)
    floor = scaled.max(dim=1, keepdim=True).values + torch.log(batch.min_p)[:, None]
    scaled = torch.where(scaled < floor, neg_inf, scaled)
    sorted_vals, sorted_idx = scaled.sort(dim=1, descending=True)
    k = torch.where((batch.top_k <= 0) | (batch.top_k > vocab), vocab, batch.top_k)
    ranks = torch.arange(vocab, device=scaled.device)[None, :]
    sorted_vals = torch.where(ranks < k[:, None], sorted_vals, neg_inf)
    probs = sorted_vals.softmax(dim=1)
    before = probs.cumsum(dim=1) - probs  # probability mass strictly ahead of each token
    # NOTE: a token is kept while the mass ahead of it is below top_p, so the first always stays.
    drop = (before >= batch.top_p[:, None]) & (batch.top_p[:, None] < 1.0)
    sorted_vals = torch.where(drop, neg_inf, sorted_vals)
    return torch.empty_like(scaled).scatter_(1, sorted_idx, sorted_vals)


class Sampler:
    """Samples one token per row of ``logits [N, V]`` (float32) under a :class:`SamplingBatch`.

    Order: the structured-output bitmask, banned tokens, penalties, temperature (0 ⇒ greedy), min-p, top-k, top-p, then a draw
    by the exponential race ``argmax(p / E)``, ``E ~ Exp(1)`` (one draw per row from the row's
    generator when seeded). Logprobs are ``log_softmax`` of the penalised, temperature-scaled
    logits (temperature 1 for greedy rows) before the top-k/top-p/min-p filters.
    """

    def __call__(
        self, logits: torch.Tensor, batch: SamplingBatch, generator: torch.Generator | None = None
    ) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != batch.temperature.shape[0]:
            raise ValueError(f"logits must be [N, V] with N = {batch.temperature.shape[0]} rows")
        logits = logits.float()
        if batch.token_bitmask is not None:
            logits = apply_token_bitmask(logits, batch.token_bitmask)
        if batch.banned_token_ids is not None:
            logits = _ban(logits, batch.banned_token_ids)
        has_history = batch.output_token_ids is not None or batch.output_counts is not None
        if batch.any_penalty and has_history:
            logits = apply_penalties(logits, batch)
        greedy = batch.temperature == 0
        temp = torch.where(greedy, 1.0, batch.temperature)[:, None]
        scaled = logits / temp
        if batch.all_greedy:
            tokens = logits.argmax(dim=1)
        else:
            filtered = apply_filters(scaled, batch) if batch.any_filter else scaled
            sampled = self._draw(filtered.softmax(dim=1), batch.generators, generator)
            tokens = torch.where(greedy, logits.argmax(dim=1), sampled)
        return self._logprobs(scaled, tokens, batch)

    @staticmethod
    def _draw(probs: torch.Tensor, generators, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.empty_like(probs).exponential_(generator=generator)
        for row, gen in enumerate(generators or ()):
            if gen is not None:
                noise[row].exponential_(generator=gen)
        return (probs / noise).argmax(dim=1)

    @staticmethod
    def _logprobs(
        scaled: torch.Tensor, tokens: torch.Tensor, batch: SamplingBatch
    ) -> SamplerOutput:
        if not batch.need_logprobs:
            return SamplerOutput(token_ids=tokens)
        logprobs = scaled.log_softmax(dim=1)
        out = SamplerOutput(token_ids=tokens, logprobs=logprobs.gather(1, tokens[:, None])[:, 0])
        if batch.num_logprobs > 0:
            top = logprobs.topk(min(batch.num_logprobs, logprobs.shape[1]), dim=1)
            out.topn_ids, out.topn_logprobs = top.indices, top.values
        return out


def _ban(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    vocab = logits.shape[1]
    mask = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    mask.scatter_(1, torch.where(banned < 0, vocab, banned), True)
    return logits.masked_fill(mask[:, :vocab], float("-inf"))


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Masks (to -inf) the tokens whose bit is clear in ``bitmask`` (int32 ``[N, ceil(V/32)]``,
    xgrammar's layout), out of place."""
    vocab = logits.shape[1]
    if bitmask.dim() != 2 or bitmask.shape[0] != logits.shape[0] or bitmask.shape[1] * 32 < vocab:
        raise ValueError(f"token_bitmask must be [N, >= {(vocab + 31) // 32}] int32")
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    bits = (bitmask.to(logits.device)[:, :, None] >> shifts) & 1  # [N, W, 32]
    allowed = bits.reshape(logits.shape[0], -1)[:, :vocab].bool()
    return logits.masked_fill(~allowed, float("-inf"))
