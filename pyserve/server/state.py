"""What the routes share (:class:`ServerState`) and the one path from a request to the engine.

Every endpoint (completions, chat, Messages, Responses) builds its engine call with
:func:`make_job` and answers with :func:`answer`, so how the engine is called lives here only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from pyserve.engine.client import EngineClient
from pyserve.server.errors import OpenAIError, bad_request
from pyserve.server.metrics import ServerMetrics
from pyserve.server.middleware import set_outcome
from pyserve.server.prompts import PromptEncoder
from pyserve.server.response_format import structured_outputs
from pyserve.server.responses import TokenText, sse_stream
from pyserve.server.serving import (
    ClientGone,
    Job,
    check_logprob_budget,
    ensure_program,
    program_tags,
    sampling_params,
    until_disconnect,
)
from pyserve.server.tool_parsers import ToolParser, detect_parser, make_parser

log = logging.getLogger("pyserve.server")

MAX_TRACKED_PROGRAMS = 1_000_000  # program start times kept for the latency histogram
SHUTDOWN_DRAIN_S = 30.0


class ServerState:
    """The engine client, metrics, names, the tool-call parser and program start times."""

    def __init__(self, client: EngineClient, model_name: str,
                 tool_call_parser: str | None = None,
                 shutdown_timeout_s: float = SHUTDOWN_DRAIN_S) -> None:  # fmt: skip
        self.client = client
        self.model_name = model_name
        self.metrics = ServerMetrics(model_name)
        self.token_text = TokenText(client.tokenizer)
        self.prompts = PromptEncoder(client.tokenizer, client.max_model_len)
        self.program_started: OrderedDict[str, float] = OrderedDict()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.shutdown_deadline: float | None = None  # set by the first exit signal
        self._force = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tool_parser: ToolParser | None = (
            make_parser(tool_call_parser) if tool_call_parser else detect_parser(client.tokenizer)
        )

    def note_program_start(self, program_id: str) -> None:
        """Remembers when a program started (for the program-latency histogram).

        NOTE: programs that expire in the engine (TTL) are never DELETEd; past the cap the oldest
        start time is forgotten (O(1)), so that program's end goes unobserved.
        """
        self.program_started.pop(program_id, None)
        self.program_started[program_id] = time.monotonic()
        if len(self.program_started) > MAX_TRACKED_PROGRAMS:
            self.program_started.popitem(last=False)

    def bind_loop(self) -> None:
        """Remembers the serving event loop (for :meth:`force_shutdown` from a signal handler)."""
        self._loop = asyncio.get_running_loop()

    def begin_shutdown(self) -> None:
        """The shutdown budget starts now (the first exit signal)."""
        if self.shutdown_deadline is None:
            self.shutdown_deadline = time.monotonic() + self.shutdown_timeout_s

    def force_shutdown(self) -> None:
        """Cuts the engine drain short (a second exit signal). Safe from signal handlers."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._force.set)

    async def shutdown_client(self) -> None:
        """Drains the client within the shutdown budget, then aborts the rest (KV freed)."""
        left = self.shutdown_timeout_s
        if self.shutdown_deadline is not None:
            left = max(0.0, self.shutdown_deadline - time.monotonic())
        drain = asyncio.ensure_future(self.client.shutdown(drain=True))
        force = asyncio.ensure_future(self._force.wait())
        done, _ = await asyncio.wait({drain, force}, timeout=left,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        force.cancel()
        if drain not in done:
            log.warning("shutdown: aborting the requests still running")
            await self.client.shutdown(drain=False)
            await drain

    def check_model(self, model: str) -> None:
        if model not in (self.model_name, self.client.model_name):
            raise OpenAIError(404, f"the model {model!r} does not exist; this server serves "
                              f"{self.model_name!r}", param="model",
                              code="model_not_found")  # fmt: skip


def with_response_format(body, overrides: dict | None) -> dict | None:
    """``overrides`` plus the ``structured_outputs`` of the body's ``response_format`` (built once
    per request; 400 naming the field if bad or combined with a forced tool choice)."""
    so = structured_outputs(getattr(body, "response_format", None))
    if so is None:
        return overrides
    if (overrides or {}).get("structured_outputs") is not None:
        raise bad_request("response_format cannot be combined with a forced tool_choice",
                          param="response_format")  # fmt: skip
    return {**(overrides or {}), "structured_outputs": so}


async def make_job(state: ServerState, body, request: Request, prefix: str,
                   prompts: list[list[int]], max_tokens: int | None, logprobs: int | None,
                   overrides: dict | None = None) -> Job:  # fmt: skip
    """The engine call of a request: validates, starts an unseen program, submits the prompts.

    NOTE: the only place that hands requests to the engine (through :class:`Job`).
    """
    tags = program_tags(body, request)
    limit = state.client.max_model_len
    overrides = with_response_format(body, overrides)
    params = [sampling_params(body, max_tokens, logprobs, len(p), limit, overrides)
              for p in prompts]  # fmt: skip
    check_logprob_budget(params, prompts, limit)
    if await ensure_program(state.client, tags.program_id):
        state.note_program_start(tags.program_id)
    return Job(state.client, state.metrics, prefix, prompts, params, tags, body.priority,
               on_outcome=lambda outcome: set_outcome(request.scope, outcome))  # fmt: skip


async def answer(state: ServerState, job: Job, request: Request, body, full, chunk, obj: str,
                 stream=None):  # fmt: skip
    """Runs the job to a JSON answer, or primes it and returns an SSE stream.

    ``full()`` builds the JSON answer; the stream is ``stream(job)`` (an async iterator of SSE
    strings) or, by default, OpenAI chunks from ``chunk``.
    """
    try:
        if not body.stream:
            result = await until_disconnect(request, full())
            job.close()
            return result
        await until_disconnect(request, job.prime())
    except ClientGone:
        job.close()
        return Response(status_code=499)  # counted as aborted by the accounting middleware
    except OpenAIError as exc:
        job.close()
        state.metrics.observe_error(exc.status)
        return exc.response()
    except BaseException:
        job.close()
        raise
    if stream is not None:
        gen = stream(job)
    else:
        opts = getattr(body, "stream_options", None)
        gen = sse_stream(job, chunk, bool(opts and opts.include_usage), body.model, obj)
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip
