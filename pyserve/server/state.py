"""What the routes share (:class:`ServerState`) and the one path from a request to the engine.

Every endpoint (completions, chat, Messages, Responses) builds its engine call with
:func:`make_job` and answers with :func:`answer`, so how the engine is called lives here only.
"""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from pyserve.engine.client import EngineClient
from pyserve.server.errors import OpenAIError
from pyserve.server.metrics import ServerMetrics
from pyserve.server.responses import TokenText, sse_stream
from pyserve.server.serving import (
    ClientGone,
    Job,
    ensure_program,
    program_tags,
    sampling_params,
    until_disconnect,
)
from pyserve.server.tool_parsers import ToolParser, detect_parser, make_parser

MAX_TRACKED_PROGRAMS = 100_000


class ServerState:
    """The engine client, metrics, names, the tool-call parser and program start times."""

    def __init__(self, client: EngineClient, model_name: str,
                 tool_call_parser: str | None = None) -> None:  # fmt: skip
        self.client = client
        self.model_name = model_name
        self.metrics = ServerMetrics(model_name)
        self.token_text = TokenText(client.tokenizer)
        self.program_started: dict[str, float] = {}
        self.tool_parser: ToolParser | None = (
            make_parser(tool_call_parser) if tool_call_parser else detect_parser(client.tokenizer)
        )

    def note_program_start(self, program_id: str) -> None:
        """Remembers when a program started (for the program-latency histogram)."""
        if len(self.program_started) >= MAX_TRACKED_PROGRAMS:
            # NOTE: programs that expired in the engine (TTL) are never DELETEd: forget them.
            alive = self.client.has_program
            self.program_started = {p: t for p, t in self.program_started.items() if alive(p)}
        self.program_started[program_id] = time.monotonic()

    def check_model(self, model: str) -> None:
        if model not in (self.model_name, self.client.model_name):
            raise OpenAIError(404, f"the model {model!r} does not exist; this server serves "
                              f"{self.model_name!r}", param="model",
                              code="model_not_found")  # fmt: skip


async def make_job(state: ServerState, body, request: Request, prefix: str,
                   prompts: list[list[int]], max_tokens: int | None, logprobs: int | None,
                   overrides: dict | None = None) -> Job:  # fmt: skip
    """The engine call of a request: validates, starts an unseen program, submits the prompts.

    NOTE: the only place that hands requests to the engine (through :class:`Job`).
    """
    tags = program_tags(body, request)
    limit = state.client.max_model_len
    params = [sampling_params(body, max_tokens, logprobs, len(p), limit, overrides)
              for p in prompts]  # fmt: skip
    if await ensure_program(state.client, tags.program_id):
        state.note_program_start(tags.program_id)
    return Job(state.client, state.metrics, prefix, prompts, params, tags, body.priority)


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
        return Response(status_code=499)
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
