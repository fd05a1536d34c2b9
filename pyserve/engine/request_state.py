"""Per-request state on the consumer side: detokenizer, stop strings, outputs, timings."""

from __future__ import annotations

from pyserve.engine.messages import Admitted
from pyserve.engine.outputs import (
    CompletionOutput,
    Logprob,
    PromptLogprobs,
    RequestMetrics,
    RequestOutput,
    TokenLogprob,
)
from pyserve.model.tokenizer import IncrementalDetokenizer, StopStringMatcher


class RequestState:
    """What the consumer keeps about a live request (the core keeps the scheduling state).

    ``stream=False`` (offline): no incremental detokenizing unless stop strings need it; the text
    is decoded once when the request finishes.
    """

    def __init__(self, admitted: Admitted, tokenizer, stream: bool) -> None:
        spec = admitted.spec
        params = spec.params
        self.request_id = spec.request_id
        self.prompt = admitted.prompt
        self.prompt_ids = admitted.prompt_token_ids
        self.params = params
        self.index = spec.index
        self.tokenizer = tokenizer
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.stops = (StopStringMatcher(params.stop, params.include_stop_str_in_output)
                      if params.stop else None)  # fmt: skip
        incremental = stream or self.stops is not None
        self.detok = (IncrementalDetokenizer(tokenizer, self.prompt_ids,
                                             params.skip_special_tokens)
                      if incremental else None)  # fmt: skip
        self.text = ""
        self.metrics = RequestMetrics(arrival_time=admitted.arrival_time)
        self.finish_reason: str | None = None
        self.stopped = False  # a stop string matched; the core is being told
        self.num_cached_tokens = 0
        # NOTE: a 1-token prompt has no position to score: complete at once
        self.prompt_logprobs: PromptLogprobs | None = (
            [None] if params.prompt_logprobs is not None and len(self.prompt_ids) == 1 else None)
        self._delta_text = ""
        self._delta_start = 0  # index into output_ids of the first undelivered token

    def append(self, token: int, now: float, logprob: TokenLogprob | None) -> bool:
        """Adds one sampled token; returns True when a stop string matched just now."""
        if self.stopped:
            return False  # sampled before the core heard of the stop
        self.output_ids.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        m = self.metrics
        if m.first_token_time is None:
            m.first_token_time = now
        m.token_times.append(now)
        if self.detok is None:
            return False
        delta = self.detok.add(token)
        if self.stops is None:
            self._emit(delta)
            return False
        emit, self.stopped = self.stops.process(delta)
        self._emit(emit)
        return self.stopped

    def set_prompt_logprobs(self, arrays) -> None:
        """Builds vLLM-shaped prompt logprobs from the engine's ``PromptLogprobArrays``."""
        ids = arrays.token_ids.tolist()
        lps, ranks = arrays.logprobs.tolist(), arrays.ranks.tolist()
        top_ids, top_lps = arrays.top_ids.tolist(), arrays.top_logprobs.tolist()
        text: dict[int, str] = {}

        def decoded(t: int) -> str:
            if t not in text:
                text[t] = self.tokenizer.decode([t], skip_special_tokens=False)
            return text[t]

        out: PromptLogprobs = [None]
        for p in range(1, len(ids)):
            entry = {ids[p]: Logprob(lps[p], ranks[p], decoded(ids[p]))}
            for r, (t, v) in enumerate(zip(top_ids[p], top_lps[p]), start=1):
                entry.setdefault(t, Logprob(v, r, decoded(t)))
            out.append(entry)
        self.prompt_logprobs = out

    def finish(self, done, now: float) -> None:
        """The core released the request (``done``: its ``_core.FinishedCall``; any reason,
        ``stop`` wins once a stop string matched)."""
        self.finish_reason = "stop" if self.stopped else done.reason
        if self.detok is None:
            self._emit(self.tokenizer.decode(self.output_ids, self.params.skip_special_tokens))
        elif self.stops is not None and not self.stopped:
            self._emit(self.stops.flush())
        m = self.metrics
        m.finished_time, m.service, m.wait = now, done.service, done.wait
        m.program_critical = done.program_critical

    def _emit(self, text: str) -> None:
        self.text += text
        self._delta_text += text

    def output(self) -> RequestOutput:
        """The output since the previous call: deltas, or the cumulative output once finished
        (see :class:`CompletionOutput`)."""
        finished = self.finish_reason is not None
        ids = self.output_ids[self._delta_start :]
        lps = self.logprobs
        if finished:
            comp = CompletionOutput(self.index, self.text, list(self.output_ids),
                                    list(lps) if lps is not None else None, self.finish_reason,
                                    self._delta_text, ids)  # fmt: skip
        else:
            delta_lps = lps[self._delta_start :] if lps is not None else None
            comp = CompletionOutput(self.index, self.text, ids, delta_lps, None, self._delta_text,
                                    ids)  # fmt: skip
        self._delta_text, self._delta_start = "", len(self.output_ids)
        return RequestOutput(self.request_id, self.prompt, self.prompt_ids, [comp], finished,
                             self.num_cached_tokens, self.metrics,
                             self.prompt_logprobs)  # fmt: skip
