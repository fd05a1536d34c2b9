"""Per-request sampling parameters, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pyserve.structured.params import StructuredOutputsParams

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request's tokens.

    ``temperature == 0`` means greedy. ``top_k <= 0`` (0 or -1) and ``top_p == 1`` disable those
    filters. ``repetition_penalty`` applies to prompt and output tokens; ``presence_penalty`` and
    ``frequency_penalty`` to output tokens only (OpenAI semantics). ``logprobs`` asks for that many
    top alternatives per token (the sampled token's logprob is always returned when it is set).
    ``prompt_logprobs`` asks for the logprob of every prompt token (and that many top
    alternatives per position) under the raw model distribution; such a request does not read
    the prefix cache, so every prompt position is computed (see ``RequestOutput.prompt_logprobs``).
    ``stop`` strings end generation (not included in the text unless
    ``include_stop_str_in_output``); ``stop_token_ids`` end it too; ``ignore_eos`` keeps going
    past EOS. ``seed`` makes the request's samples independent of what else is batched with it.
    ``structured_outputs`` constrains the output to a JSON schema, regex, choice or grammar (see
    :class:`~pyserve.structured.StructuredOutputsParams`); the request ends with ``stop`` when
    the grammar is complete and the model emits EOS (or the grammar admits nothing more).
    """

    n: int = 1
    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] | list[str] | str | None = field(default=())
    stop_token_ids: tuple[int, ...] | list[int] | None = field(default=())
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        stop = self.stop
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        self._validate_counts()
        self._validate_filters()
        self._validate_penalties()
        self._validate_stops()
        self._validate_structured()

    def _validate_counts(self) -> None:
        _check_int("n", self.n, low=1)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=2**63 - 1)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, low=0)
                if value > MAX_LOGPROBS:
                    raise ValueError(f"{name} must be at most {MAX_LOGPROBS}, got {value}")

    def _validate_filters(self) -> None:
        _check_float("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        _check_float("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k, low=-1)
        _check_float("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")

    def _validate_penalties(self) -> None:
        _check_float("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check_float(name, value)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")

    def _validate_stops(self) -> None:
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids entry", t, low=0)

    def _validate_structured(self) -> None:
        so = self.structured_outputs
        if so is None:
            return
        if not isinstance(so, StructuredOutputsParams):
            raise TypeError(
                f"structured_outputs must be a StructuredOutputsParams, got {type(so).__name__}"
            )
        if self.min_tokens:
            # NOTE: min_tokens bans EOS, which a complete grammar may be left with alone.
            raise ValueError("min_tokens cannot be combined with structured_outputs: the "
                             "grammar decides where the output ends")  # fmt: skip

    @property
    def greedy(self) -> bool:
        """True when sampling is argmax."""
        return self.temperature == 0.0


INT32_MAX = 2**31 - 1  # NOTE: counts and token ids cross into C++ / torch as int32


def _check_int(name: str, value: object, low: int, high: int = INT32_MAX) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
