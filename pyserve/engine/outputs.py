"""What callers get back (vLLM-shaped): per-request outputs, token logprobs and timings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    """Wall-clock timings in seconds on the engine's clock, plus the core's accounting."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    service: float = 0.0  # model-execution seconds charged to the call (set when finished)
    wait: float = 0.0  # seconds queued (set when finished)
    program_critical: float = 0.0  # its program's critical-path scalar after it (ATLAS)

    @property
    def ttft(self) -> float | None:
        """Time to first token."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def inter_token_times(self) -> list[float]:
        """Gaps between consecutive output tokens."""
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def e2e_latency(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time

    @property
    def queue_time(self) -> float | None:
        s = self.first_scheduled_time
        return None if s is None else s - self.arrival_time


@dataclass
class TokenLogprob:
    """The sampled token's logprob and the top-n alternatives (token id -> logprob)."""

    token_id: int
    logprob: float
    top: dict[int, float]


@dataclass
class Logprob:
    """A prompt token's logprob (vLLM's ``Logprob``): ``rank`` is 1-based (1 = the most likely
    token), ``decoded_token`` the token's text alone."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    """One generated sequence (vLLM's ``CompletionOutput``).

    NOTE: ``text`` is always cumulative (an immutable str, shared, never copied). On a finished
    output ``token_ids``/``logprobs`` are cumulative too; on an unfinished streamed output they
    hold only what this item adds (== ``delta_token_ids``), so streaming does not copy the whole
    token list every step.
    """

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # stop | length | abort
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """One request's outputs (vLLM's ``RequestOutput``): ``outputs`` holds one
    :class:`CompletionOutput` per choice (``n`` of them from ``LLM.generate``; one per streamed
    sequence from an engine client).

    ``prompt_logprobs`` (when ``SamplingParams.prompt_logprobs`` is set; vLLM's shape): one entry
    per prompt token, None for the first, else a dict token id -> :class:`Logprob` holding the
    prompt token and the top ``prompt_logprobs`` alternatives. A streamed sequence carries it
    from its first output on.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
    prompt_logprobs: PromptLogprobs | None = None

    # NOTE: a streamed sequence has exactly one output; these read it (engine clients, server).
    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        return self.outputs[0].logprobs

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason

    @property
    def delta_text(self) -> str:
        return self.outputs[0].delta_text

    @property
    def delta_token_ids(self) -> list[int]:
        return self.outputs[0].delta_token_ids

    @property
    def index(self) -> int:
        return self.outputs[0].index
