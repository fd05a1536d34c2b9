"""Per-engine structured-output state: one xgrammar matcher per constrained sequence, the batch
token bitmask of each step, and the matchers advanced by the sampled tokens.

The engine calls, for each step: ``fill_async(rows)`` before the forward (the mask is filled on
a worker thread while the model runs), the sampler applies the mask, then ``accept(rows,
tokens)`` advances the matchers and returns the rows whose grammar has terminated.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from pyserve.structured.compiler import GrammarCache, tokenizer_info
from pyserve.structured.errors import require_xgrammar
from pyserve.structured.params import StructuredOutputsParams


class StructuredOutputManager:
    """Matchers keyed by sequence id (the engine's row identity).

    NOTE (threading): one thread (the engine loop) calls every method; ``fill_async`` hands the
    fill to a private worker and the caller must resolve its future before ``accept``.
    """

    def __init__(self, info, max_threads: int = 2) -> None:
        """``info``: the ``xgrammar.TokenizerInfo`` of the model (see :meth:`for_tokenizer`)."""
        self._xgr = require_xgrammar()
        self.vocab_size = info.vocab_size
        self.grammars = GrammarCache(info, max_threads=max_threads)
        self._matchers: dict[int, object] = {}
        self._batch = self._xgr.BatchGrammarMatcher(max_threads)
        self._bitmask = self._xgr.allocate_token_bitmask(1, self.vocab_size)  # grows with the batch
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size: int, stop_token_ids: Sequence[int],
                      max_threads: int = 2) -> StructuredOutputManager:  # fmt: skip
        """A manager for a model's tokenizer, logits width and EOS ids."""
        return cls(tokenizer_info(tokenizer, vocab_size, stop_token_ids), max_threads)

    # -- sequences -----------------------------------------------------------------------------
    def compile(self, params: StructuredOutputsParams):
        """The compiled grammar (cached); call before the sequence is queued (ValueError)."""
        return self.grammars.get(params)

    def add(self, seq_id: int, compiled) -> None:
        """Starts a matcher for ``seq_id`` over a grammar from :meth:`compile`."""
        self._matchers[seq_id] = self._xgr.GrammarMatcher(compiled)

    def remove(self, seq_id: int) -> None:
        """Forgets a finished or aborted sequence (no-op if it had no constraint)."""
        self._matchers.pop(seq_id, None)

    def __len__(self) -> int:
        return len(self._matchers)

    # -- the step ------------------------------------------------------------------------------
    def bitmask_for(self, rows: Sequence[int]) -> torch.Tensor | None:
        """The int32 ``[len(rows), ceil(vocab / 32)]`` mask of allowed tokens (bit set =
        allowed; all bits set for unconstrained rows), or None when no row is constrained.

        NOTE: the tensor is a view of a buffer reused by the next call.
        """
        live = self._live(rows)
        return self._fill(len(rows), live) if live else None

    def fill_async(self, rows: Sequence[int]) -> Future | None:
        """:meth:`bitmask_for` on a worker thread (None when no row is constrained).

        NOTE: the live matchers are picked here, on the caller's thread, so the worker never
        reads the matcher table while the engine adds or removes sequences.
        """
        live = self._live(rows)
        if not live:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="pyserve-grammar")
        return self._pool.submit(self._fill, len(rows), live)

    def _live(self, rows: Sequence[int]) -> list[tuple[int, object]]:
        """(row index, matcher) of the constrained rows whose grammar still runs."""
        out = []
        for i, s in enumerate(rows):
            m = self._matchers.get(int(s))
            if m is not None and not m.is_terminated():
                out.append((i, m))
        return out

    def _fill(self, n: int, live: list[tuple[int, object]]) -> torch.Tensor:
        if self._bitmask.shape[0] < n:
            rows = max(n, 2 * self._bitmask.shape[0])
            self._bitmask = self._xgr.allocate_token_bitmask(rows, self.vocab_size)
        mask = self._bitmask[:n]
        mask.fill_(-1)
        idx, matchers = zip(*live)
        self._batch.batch_fill_next_token_bitmask(list(matchers), mask, list(idx))
        return mask

    def accept(self, rows: Sequence[int], tokens: Sequence[int]) -> list[int]:
        """Advances each constrained row by its sampled token; returns the sequence ids whose
        grammar has terminated (they finish with ``stop``)."""
        done = []
        for s, t in zip(rows, tokens):
            m = self._matchers.get(int(s))
            if m is None or m.is_terminated():
                continue
            if not m.accept_token(int(t)):
                # NOTE: the sampler only draws allowed tokens, so this is a broken invariant.
                raise RuntimeError(f"sequence {int(s)}: token {int(t)} violates its grammar")
            if m.is_terminated():
                done.append(int(s))
        return done

    def close(self) -> None:
        """Stops the worker thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
