"""Which program a vLLM request belongs to, from what vLLM already passes through.

- ``program_id``: ``SamplingParams.extra_args["program_id"]`` (``vllm_xargs`` over HTTP), else the
  request's ``session_id`` (body field ``session_id`` or header ``X-Session-ID``), else none: the
  call is its own one-call program.
- ``thread_id`` / ``parent_ids`` are refused (ValueError naming them), as the native server answers
  them with a 400: the core keeps no per-thread state.

Programs are implicit (created by their first call) and end by TTL (``program_ttl_s``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProgramIds:
    """The program fields of one call."""

    program_id: str = ""


def _text(value: Any, name: str) -> str:
    # NOTE: vllm_xargs values are str | int | float (the OpenAI protocol model enforces it);
    # numbers are ids too, so they are honoured as their decimal text.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"extra_args[{name!r}] must be a string or a number, got {value!r}")
    return str(value)


def program_ids(request: Any) -> ProgramIds:
    """The program fields of a vllm.v1.request.Request (ValueError for a malformed one)."""
    params = getattr(request, "sampling_params", None)
    extra = (getattr(params, "extra_args", None) or {}) if params is not None else {}
    program = extra.get("program_id")
    if program is None:
        program = getattr(request, "session_id", None) or ""
    for name in ("thread_id", "parent_ids"):
        if name in extra:
            raise ValueError(f"extra_args[{name!r}] is not supported (program_id only)")
    return ProgramIds(program_id=_text(program, "program_id"))
