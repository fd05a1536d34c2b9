"""Prompt logprobs (vLLM's ``SamplingParams.prompt_logprobs``): the model's log-probability of
each prompt token given the tokens before it, gathered from the prefill steps.

Position ``p`` of a prompt of ``L`` tokens is scored by the logits at position ``p - 1``, so a
prefill chunk covering positions ``[s, e)`` scores tokens ``s + 1 .. e`` (those below ``L``).
Chunked prefill therefore fills a request's positions over several steps; the result is handed
out once every position ``1 .. L-1`` is filled. Position 0 has no logprob (None, as in vLLM).

NOTE: the logprobs are those of the raw model distribution (``log_softmax`` of the logits, in
float32), not of the temperature-scaled / penalised one the sampler draws from. A request asking
for them never reads the prefix cache (``Engine`` gives it a cache salt of its own), so every
prompt position is computed; a recompute after preemption may read back its own blocks, whose
positions were filled by the first pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

SCORE_ROWS = 256  # prompt rows scored per logits slice


@dataclass
class PromptLogprobArrays:
    """One request's prompt logprobs as arrays over prompt positions ``[L]``.

    NOTE: row 0 is unused (position 0 has no logprob); ``ranks`` are 1-based (1 = argmax);
    ``top_ids`` / ``top_logprobs`` are ``[L, k]`` (k may be 0).
    """

    token_ids: np.ndarray  # int64 [L]: the prompt
    logprobs: np.ndarray  # float32 [L]
    ranks: np.ndarray  # int64 [L]
    top_ids: np.ndarray  # int64 [L, k]
    top_logprobs: np.ndarray  # float32 [L, k]

    @classmethod
    def empty(cls, prompt_ids, k: int) -> PromptLogprobArrays:
        n = len(prompt_ids)
        return cls(np.asarray(prompt_ids, dtype=np.int64), np.zeros(n, np.float32),
                   np.zeros(n, np.int64), np.zeros((n, k), np.int64),
                   np.zeros((n, k), np.float32))  # fmt: skip


@dataclass
class PromptRows:
    """The token rows of one step whose logits score prompt tokens, and (after
    ``ModelRunner.execute``) their results.

    NOTE: ``rows`` index the step's flattened tokens (int64, on the device); ``targets`` are the
    prompt tokens they score; ``owners[i]`` / ``positions[i]`` say which slot and prompt position
    row ``i`` fills. The runner writes the four result arrays (CPU numpy, ``[R]`` / ``[R, k]``).
    """

    rows: torch.Tensor
    targets: torch.Tensor
    k: int
    owners: np.ndarray
    positions: np.ndarray
    logprobs: np.ndarray | None = None
    ranks: np.ndarray | None = None
    top_ids: np.ndarray | None = None
    top_logprobs: np.ndarray | None = None

    def score(self, logits_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Fills the results; ``logits_of(rows)`` gives those rows' raw logits ``[r, V]``.

        NOTE: rows are scored ``SCORE_ROWS`` at a time, so a long prefill chunk never holds a
        ``[chunk, V]`` float32 logits tensor (1 GiB for 2048 rows of a 128k vocabulary)."""
        parts = []
        for start in range(0, self.rows.shape[0], SCORE_ROWS):
            sl = slice(start, start + SCORE_ROWS)
            lps = logits_of(self.rows[sl]).float().log_softmax(dim=1)
            target = lps.gather(1, self.targets[sl, None])
            top = lps.topk(min(self.k, lps.shape[1]), dim=1)
            parts.append((target[:, 0], (lps > target).sum(dim=1) + 1, top.indices, top.values))
        self.logprobs, self.ranks, self.top_ids, self.top_logprobs = (
            torch.cat(col).cpu().numpy() for col in zip(*parts))


@dataclass
class _Pending:
    request_id: str
    k: int
    arrays: PromptLogprobArrays
    missing: int  # positions 1 .. L-1 not yet filled
    filled: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


class PromptLogprobTracker:
    """The requests still waiting for prompt logprobs, by core seq id (slot)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: dict[int, _Pending] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, slot: int, request_id: str, prompt_ids, k: int) -> None:
        """Tracks a new request. NOTE: a 1-token prompt has nothing to score and is not
        tracked (the consumer gives it ``[None]``)."""
        n = len(prompt_ids)
        if n <= 1:
            return
        filled = np.zeros(n, bool)
        filled[0] = True
        arrays = PromptLogprobArrays.empty(prompt_ids, k)
        self._pending[slot] = _Pending(request_id, k, arrays, n - 1, filled)

    def remove(self, slot: int) -> None:
        """Forgets a slot (its request finished or was aborted)."""
        self._pending.pop(slot, None)

    def rows(self, plan) -> PromptRows | None:
        """The rows of ``plan`` that score prompt tokens of pending requests (None if none)."""
        if not self._pending:
            return None
        seq_ids = np.asarray(plan.seq_ids)
        qo = np.asarray(plan.qo_indptr)
        positions = np.asarray(plan.positions)
        rows, owners, pos = [], [], []
        k = 0
        for i, sid in enumerate(seq_ids.tolist()):
            p = self._pending.get(sid)
            if p is None:
                continue
            r = np.arange(qo[i], qo[i + 1])
            nxt = positions[r].astype(np.int64) + 1  # NOTE: the position each row scores
            keep = nxt < p.arrays.token_ids.shape[0]
            rows.append(r[keep])
            pos.append(nxt[keep])
            owners.append(np.full(int(keep.sum()), sid, np.int64))
            k = max(k, p.k)
        if not rows or not sum(r.shape[0] for r in rows):
            return None
        owners_a, pos_a = np.concatenate(owners), np.concatenate(pos)
        targets = np.array([self._pending[s].arrays.token_ids[q]
                            for s, q in zip(owners_a.tolist(), pos_a.tolist())], np.int64)  # fmt: skip
        return PromptRows(torch.from_numpy(np.concatenate(rows)).to(self.device),
                          torch.from_numpy(targets).to(self.device), k, owners_a, pos_a)  # fmt: skip

    def record(self, pr: PromptRows) -> list[tuple[str, PromptLogprobArrays]]:
        """Stores a step's results; returns the requests whose prompt is now fully scored."""
        done = []
        for sid in np.unique(pr.owners).tolist():
            p = self._pending[sid]
            sel = np.nonzero(pr.owners == sid)[0]
            q = pr.positions[sel]
            a = p.arrays
            a.logprobs[q], a.ranks[q] = pr.logprobs[sel], pr.ranks[sel]
            a.top_ids[q] = pr.top_ids[sel, : p.k]
            a.top_logprobs[q] = pr.top_logprobs[sel, : p.k]
            p.missing -= int((~p.filled[q]).sum())
            p.filled[q] = True
            if p.missing == 0:
                done.append((p.request_id, a))
                del self._pending[sid]
        return done
