"""The consumer side of the engine: StepReports in, RequestOutputs out.

Detokenizing, stop strings and output assembly run here, off the step thread (``AsyncEngine``
runs it on its output thread; ``LLM.generate`` between steps). When a stop string matches, the
caller tells the engine with ``Abort(request_id, reason="stop")``; the request's final output is
assembled when the core's ``FinishedCall`` comes back (from a report or from that message).
"""

from __future__ import annotations

from pyserve.engine.messages import Admitted
from pyserve.engine.outputs import RequestOutput, TokenLogprob
from pyserve.engine.report import StepReport
from pyserve.engine.request_state import RequestState


class OutputProcessor:
    """Per-request consumer state. ``stream=True`` yields an output per step with new text;
    ``stream=False`` yields only final outputs (and detokenizes once per request)."""

    def __init__(self, tokenizer, stream: bool) -> None:
        self.tokenizer = tokenizer
        self.stream = stream
        self.states: dict[str, RequestState] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.states

    def add(self, admitted: Admitted) -> None:
        """Starts tracking a call the engine admitted."""
        self.states[admitted.spec.request_id] = RequestState(admitted, self.tokenizer,
                                                             self.stream)  # fmt: skip

    def drop(self, request_id: str) -> None:
        """Stops tracking a request (its consumer failed or went away)."""
        self.states.pop(request_id, None)

    def process(self, report: StepReport) -> tuple[list[RequestOutput], list[str]]:
        """Applies one report; returns (outputs, ids of requests whose stop string matched)."""
        states, now = self.states, report.end_time
        for rid, cached in zip(report.first_scheduled, report.first_cached_tokens):
            st = states.get(rid)
            if st is not None:
                st.metrics.first_scheduled_time = report.start_time
                st.num_cached_tokens = int(cached)
        for rid, arrays in report.prompt_logprobs:
            st = states.get(rid)
            if st is not None:
                st.set_prompt_logprobs(arrays)
        touched: dict[str, RequestState] = {}
        stopped: list[str] = []
        toks = report.token_ids.tolist()
        for i, rid in enumerate(report.request_ids):
            st = states.get(rid)
            if st is None:
                continue
            lp = _logprob(report, i, toks[i], st) if st.logprobs is not None else None
            if st.append(toks[i], now, lp):
                stopped.append(rid)
            touched[rid] = st
        outputs = [out for f in report.finished if (out := self.finish(f, now)) is not None]
        if self.stream:
            outputs += [st.output() for rid, st in touched.items() if rid in states]
        return outputs, stopped

    def finish(self, done, now: float) -> RequestOutput | None:
        """The final output of a request the core released (a ``_core.FinishedCall``)."""
        st = self.states.pop(done.request_id, None)
        if st is None:
            return None
        st.finish(done, now)
        return st.output()


def _logprob(report: StepReport, row: int, token: int, st: RequestState) -> TokenLogprob | None:
    if report.logprobs is None:
        return None
    n = st.params.logprobs or 0
    top: dict[int, float] = {}
    if n and report.topn_ids is not None:
        top = dict(zip(report.topn_ids[row, :n].tolist(), report.topn_logprobs[row, :n].tolist()))
    return TokenLogprob(token, float(report.logprobs[row]), top)
