"""The typed messages an :class:`~pyserve.engine.engine.Engine` takes, and what it returns.

In: :class:`AddCall` (one :class:`CallSpec`), :class:`Abort` (the client gave up, or matched a
stop string: ``reason="stop"``) and :class:`ProgramOp`. Out: one
:class:`~pyserve.engine.report.StepReport` per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pyserve.sampling_params import SamplingParams


@dataclass(frozen=True)
class CallSpec:
    """One LLM call (one sequence: n == 1, see ``expand_n``): the prompt, its sampling settings
    and its program tags. Bound to the core's ``RequestSpec`` by ``Engine.handle``.

    ``prompt`` is text or token ids. ``program_id`` None: an untagged call (its own program).
    ``ltr_score`` None: the engine's ranker scores the prompt on arrival (0 without one).
    ``index`` is the choice index for n > 1. ``remaining_hint`` / ``program_remaining_hint``
    are oracle hints of the remaining work (sjf / srpt; simulator replays), < 0 if unknown.
    """

    request_id: str
    prompt: str | Sequence[int]
    params: SamplingParams
    priority: float = 0.0
    program_id: str | None = None
    ltr_score: float | None = None
    index: int = 0
    remaining_hint: float = -1.0
    program_remaining_hint: float = -1.0


@dataclass(frozen=True)
class AddCall:
    """Queue a call. ``Engine.handle`` returns the :class:`Admitted` call or raises ValueError
    (nothing queued)."""

    spec: CallSpec


@dataclass(frozen=True)
class Abort:
    """End a live call: ``reason="abort"`` (the client went away) or ``"stop"`` (the client
    matched a stop string). Returns the core's ``FinishedCall``, None if it is not live."""

    request_id: str
    reason: Literal["abort", "stop"] = "abort"


@dataclass(frozen=True)
class ProgramOp:
    """Program (session) table operations: ``start`` (returns the id; a fresh one when
    ``program_id`` is None), ``end`` (ValueError if unknown) and ``sync`` (raise the local entry
    to a router's global ``values = (service, critical, wait)``)."""

    op: Literal["start", "end", "sync"]
    program_id: str | None = None
    values: tuple[float, float, float] | None = None


Message = AddCall | Abort | ProgramOp


@dataclass(frozen=True)
class Admitted:
    """A queued call as the engine bound it: the prompt text (None when given as ids), its token
    ids and its arrival time on the engine clock."""

    spec: CallSpec
    prompt: str | None
    prompt_token_ids: list[int]
    arrival_time: float
