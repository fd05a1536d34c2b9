"""A small Python page table that builds StepPlan-like objects without the C++ core.

Test helper (not shipped in the package): drives a model through paged attention with a
hand-made block layout (blocks handed out in a shuffled order, so pages of one sequence are not
contiguous).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StepPlanLike:
    """The StepPlan fields of docs/interfaces.md that the attention metadata needs."""

    num_decodes: int
    num_prefills: int
    input_ids: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    qo_indptr: np.ndarray
    kv_indptr: np.ndarray
    kv_indices: np.ndarray
    kv_last_page_len: np.ndarray
    seq_lens: np.ndarray
    sample_token_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))


class PageTable:
    """Hands out KV blocks to sequences and lays out steps (decodes first, then prefills)."""

    def __init__(self, num_blocks: int, block_size: int, seed: int = 0) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self._free = list(np.random.default_rng(seed).permutation(num_blocks))
        self.blocks: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}

    def _grow(self, seq: int, new_len: int) -> None:
        blocks = self.blocks.setdefault(seq, [])
        while len(blocks) * self.block_size < new_len:
            if not self._free:
                raise ValueError("page table is out of blocks")
            blocks.append(int(self._free.pop()))

    def free(self, seq: int) -> None:
        """Return a sequence's blocks."""
        self._free.extend(self.blocks.pop(seq, []))
        self.lengths.pop(seq, None)

    def step(self, decodes: dict[int, int], prefills: dict[int, list[int]]) -> StepPlanLike:
        """Lay out one step: ``decodes`` maps seq → its one new token, ``prefills`` seq → chunk.

        A prefill chunk extends whatever the sequence already holds (a cached prefix).
        """
        order = [(s, [t]) for s, t in decodes.items()] + list(prefills.items())
        ids, pos, slots, qo, kv_ptr, kv_idx, last, lens = [], [], [], [0], [0], [], [], []
        bs = self.block_size
        for seq, toks in order:
            if not toks:
                raise ValueError(f"sequence {seq} has no tokens in this step")
            start = self.lengths.get(seq, 0)
            end = start + len(toks)
            self._grow(seq, end)
            blocks = self.blocks[seq]
            for p in range(start, end):
                slots.append(blocks[p // bs] * bs + p % bs)
            ids.extend(toks)
            pos.extend(range(start, end))
            qo.append(len(ids))
            used = blocks[: -(-end // bs)]
            kv_idx.extend(used)
            kv_ptr.append(len(kv_idx))
            last.append(end - (len(used) - 1) * bs)
            lens.append(end)
            self.lengths[seq] = end
        i32 = np.int32
        return StepPlanLike(
            num_decodes=len(decodes),
            num_prefills=len(prefills),
            input_ids=np.array(ids, i32),
            positions=np.array(pos, i32),
            slot_mapping=np.array(slots, np.int64),
            qo_indptr=np.array(qo, i32),
            kv_indptr=np.array(kv_ptr, i32),
            kv_indices=np.array(kv_idx, i32),
            kv_last_page_len=np.array(last, i32),
            seq_lens=np.array(lens, i32),
            sample_token_idx=np.array(qo[1:], i32) - 1,
        )
