"""Per-request Python state: sampling params, detokenizer, stop strings, outputs, timings."""

from __future__ import annotations

from pyserve.engine.outputs import RequestMetrics, RequestOutput, TokenLogprob
from pyserve.model.tokenizer import IncrementalDetokenizer, StopStringMatcher
from pyserve.sampling_params import SamplingParams


class RequestState:
    """Everything Python keeps about a live request (the core keeps the scheduling state)."""

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer,
        arrival_time: float,
        index: int = 0,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_ids = prompt_ids
        self.params = params
        self.index = index
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids, params.skip_special_tokens)
        self.stops = (
            StopStringMatcher(params.stop, params.include_stop_str_in_output)
            if params.stop
            else None
        )
        self.text = ""
        self.metrics = RequestMetrics(arrival_time=arrival_time)
        self.finish_reason: str | None = None
        self.num_cached_tokens = 0
        self._delta_text = ""
        self._delta_ids: list[int] = []

    def append(self, token: int, now: float, logprob: TokenLogprob | None) -> bool:
        """Adds one sampled token; returns True when a stop string ended the request."""
        self.output_ids.append(token)
        self._delta_ids.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        m = self.metrics
        if m.first_token_time is None:
            m.first_token_time = now
        m.token_times.append(now)
        delta = self.detok.add(token)
        if self.stops is None:
            self._emit(delta)
            return False
        emit, stopped = self.stops.process(delta)
        self._emit(emit)
        if stopped:
            self.finish_reason = "stop"
        return stopped

    def finish(self, reason: str, now: float) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
        if self.stops is not None and self.finish_reason != "stop":
            self._emit(self.stops.flush())
        self.metrics.finished_time = now

    def _emit(self, text: str) -> None:
        self.text += text
        self._delta_text += text

    def snapshot(self) -> RequestOutput:
        """The cumulative output, with the delta since the previous snapshot."""
        out = RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_ids,
            text=self.text,
            token_ids=list(self.output_ids),
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            finished=self.metrics.finished_time is not None,
            finish_reason=self.finish_reason if self.metrics.finished_time is not None else None,
            delta_text=self._delta_text,
            delta_token_ids=self._delta_ids,
            num_cached_tokens=self.num_cached_tokens,
            metrics=self.metrics,
            index=self.index,
        )
        self._delta_text, self._delta_ids = "", []
        return out
