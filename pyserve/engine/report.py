"""StepReport: everything one engine step produced, in arrays (no per-request objects)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StepReport:
    """One step's results, filled from the core's report in one ``update()`` call.

    NOTE: row ``i`` of ``request_ids``/``token_ids``/``logprobs``/``topn_*`` is one new token
    (one per sequence that sampled, decodes first). Arrays are copies owned by the report, so it
    may be read on another thread after the next step. Times are on the engine clock (s).
    """

    step: int
    start_time: float
    end_time: float
    request_ids: np.ndarray  # object [n]
    token_ids: np.ndarray  # int32 [n]
    logprobs: np.ndarray | None = None  # float32 [n]: the sampled token's logprob
    topn_ids: np.ndarray | None = None  # int64 [n, k]
    topn_logprobs: np.ndarray | None = None  # float32 [n, k]
    first_scheduled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    first_cached_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    finished: list = field(default_factory=list)  # _core.FinishedCall, in finishing order
    num_seqs: int = 0
    num_prefills: int = 0
    num_tokens: int = 0
    kv_free_blocks: int = 0
    kv_total_blocks: int = 0
    # (request id, PromptLogprobArrays) of the requests whose prompt logprobs completed this step
    prompt_logprobs: list = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # schedule/execute/update seconds

    @property
    def num_new_tokens(self) -> int:
        return int(self.token_ids.shape[0])
