"""The protocol the HTTP server talks to (docs/interfaces.md, "Engine client").

Implemented by the single-process :class:`pyserve.engine.async_engine.AsyncEngine` and by the
Ray cluster client (``pyserve/cluster/``). The server depends on nothing else of the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from pyserve.engine.outputs import RequestOutput
from pyserve.sampling_params import SamplingParams


class EngineError(RuntimeError):
    """A request failed inside the engine (not the caller's fault); servers answer 500."""


class EngineDeadError(EngineError):
    """The engine is shut down or its loop died; no request can be served."""


@runtime_checkable
class EngineClient(Protocol):
    """What a front end (the OpenAI server, a benchmark) needs from an engine.

    ``tokenizer`` offers ``encode(text)``, ``decode(ids)`` and ``apply_chat_template(messages, tools=None)``.
    """

    model_name: str
    tokenizer: Any
    max_model_len: int

    def generate(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        *,
        priority: float = 0.0,
        program_id: str | None = None,
        ltr_score: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yields RequestOutputs until finished: ``text`` is cumulative, ``delta_text`` /
        ``delta_token_ids`` what the item adds; unfinished items carry only their new token ids
        and logprobs, the finished one all of them.

        Raises ValueError for bad input before anything is queued, EngineError when the engine
        fails the request. Cancelling the iterator (client disconnect) aborts the request and
        frees its KV blocks. n > 1 is expanded by the caller with ``pyserve.engine.expand_n``.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Aborts a request if it is still live (no error when it already finished)."""
        ...

    async def start_program(self, program_id: str | None = None) -> str:
        """Starts a program (session) and returns its id; ValueError if it already exists."""
        ...

    async def end_program(self, program_id: str) -> None:
        """Ends a program; ValueError if it is unknown."""
        ...

    async def mark_coming_back(self, program_id: str) -> bool:
        """Marks a program whose last call ended with a tool call: the agent will call again with
        the same context (``ProgramTable.coming_back``). False if the program is unknown."""
        ...

    def has_program(self, program_id: str) -> bool:
        """Whether a program with this id is started and not yet ended (or expired)."""
        ...

    async def stats(self) -> dict:
        """Core stats (see ``_core.Scheduler.stats``), plus per-replica entries for clusters."""
        ...

    async def shutdown(self, drain: bool = True) -> None:
        """Stops accepting requests; finishes (drain) or aborts the live ones; stops the loop."""
        ...
