"""The FastAPI app: OpenAI-compatible endpoints plus program sessions, health and metrics.

``build_app(client)`` depends only on the :class:`~pyserve.engine.client.EngineClient` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from pyserve.engine.client import EngineClient
from pyserve.server.errors import OpenAIError, bad_request, install_error_handlers
from pyserve.server.metrics import CONTENT_TYPE, ServerMetrics
from pyserve.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from pyserve.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    ProgramCreateRequest,
    ProgramDeleted,
    ProgramResponse,
)
from pyserve.server.responses import (
    TokenText,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    sse_stream,
)
from pyserve.server.serving import ClientGone, Job, program_tags, sampling_params, until_disconnect

log = logging.getLogger("pyserve.server")

DEFAULT_MAX_REQUEST_BYTES = 4 << 20
API_KEY_ENV = "PYSERVE_API_KEY"
SHUTDOWN_DRAIN_S = 30.0
MAX_TRACKED_PROGRAMS = 100_000
MAX_TOKEN_ID = 2**31  # int32; the engine checks the model's real vocabulary
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 500, 503)}


class ServerState:
    """What the routes share: the engine client, metrics, names and program start times."""

    def __init__(self, client: EngineClient, model_name: str) -> None:
        self.client = client
        self.model_name = model_name
        self.metrics = ServerMetrics(model_name)
        self.token_text = TokenText(client.tokenizer)
        self.program_started: dict[str, float] = {}

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


def build_app(
    client: EngineClient,
    *,
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    served_model_name: str | None = None,
    shutdown_client: bool = True,
) -> FastAPI:
    """The OpenAI-compatible app over ``client``.

    ``api_key`` (or env ``PYSERVE_API_KEY``) protects ``/v1/*`` with a Bearer token; bodies over
    ``max_request_bytes`` get 413. With ``shutdown_client`` the app drains and shuts the client
    down when the server stops.
    """
    state = ServerState(client, served_model_name or client.model_name)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        if shutdown_client:
            try:
                await asyncio.wait_for(client.shutdown(drain=True), SHUTDOWN_DRAIN_S)
            except asyncio.TimeoutError:
                await client.shutdown(drain=False)

    app = FastAPI(title="pyserve", version="0.1.0", lifespan=lifespan, responses=_ERRORS)
    app.state.pyserve = state
    install_error_handlers(app)
    _add_info_routes(app, state)
    _add_program_routes(app, state)
    _add_generation_routes(app, state)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if key:
        app.add_middleware(ApiKeyMiddleware, api_key=key)  # outermost: checked before the body
    return app


def _add_info_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health", response_model=HealthResponse)
    async def health():
        stats = await state.client.stats()
        if not stats.get("engine_alive", True):
            raise OpenAIError(503, "the engine loop is not running", code="engine_unavailable")
        return HealthResponse(status="ok")

    @app.get("/metrics", response_class=Response)
    async def metrics():
        body = state.metrics.render(await state.client.stats())
        return Response(body, media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        card = ModelCard(id=state.model_name, root=state.client.model_name,
                         max_model_len=state.client.max_model_len)  # fmt: skip
        return ModelList(data=[card])


def _add_program_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/programs", response_model=ProgramResponse)
    async def start_program(body: ProgramCreateRequest | None = None):
        try:
            pid = await state.client.start_program(body.program_id if body else None)
        except ValueError as exc:
            raise OpenAIError(409, str(exc), param="program_id", code="program_exists") from None
        state.note_program_start(pid)
        return ProgramResponse(id=pid)

    @app.delete("/v1/programs/{program_id}", response_model=ProgramDeleted)
    async def end_program(program_id: str):
        try:
            await state.client.end_program(program_id)
        except ValueError as exc:
            raise OpenAIError(404, str(exc), param="program_id",
                              code="program_not_found") from None  # fmt: skip
        started = state.program_started.pop(program_id, None)
        latency = None if started is None else time.monotonic() - started
        if latency is not None:
            state.metrics.observe_program(latency)
        return ProgramDeleted(id=program_id, latency_s=latency)


def _add_generation_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/completions", response_model=CompletionResponse)
    async def completions(body: CompletionRequest, request: Request):
        state.check_model(body.model)
        prompts = _completion_prompts(state, body.prompt)
        # NOTE: echo text is decoded lazily, once the engine has validated the prompt ids.
        echo = _EchoText(state.client.tokenizer, prompts) if body.echo else None
        job = _make_job(state, body, request, "cmpl", prompts, body.max_tokens, body.logprobs)

        def chunk(index: int, out, first: bool):
            head = echo[index // job.n] if echo and first else ""
            return completion_chunk(job, body.model, 0, index, out, state.token_text, head)

        async def full():
            outs = await job.collect()
            return completion_response(job, body.model, outs, echo, state.token_text)

        return await _answer(state, job, request, body, full, chunk, "text_completion")

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        state.check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")
        messages = [{"role": m.role, "content": _message_text(m.content)} for m in body.messages]
        try:
            ids = state.client.tokenizer.apply_chat_template(messages)
        except ValueError as exc:
            raise bad_request(f"cannot render the chat: {exc}", param="messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens
        lp = (body.top_logprobs or 0) if body.logprobs else None
        job = _make_job(state, body, request, "chatcmpl", [ids], max_tokens, lp)

        def chunk(index: int, out, first: bool):
            return chat_chunk(job, body.model, 0, index, out, state.token_text, first)

        async def full():
            return chat_response(job, body.model, await job.collect(), state.token_text)

        return await _answer(state, job, request, body, full, chunk, "chat.completion.chunk")


def _make_job(state, body, request, prefix, prompts, max_tokens, logprobs) -> Job:
    tags = program_tags(body, request, state.client)
    limit = state.client.max_model_len
    params = [sampling_params(body, max_tokens, logprobs, len(p), limit) for p in prompts]
    return Job(state.client, state.metrics, prefix, prompts, params, tags, body.priority)


async def _answer(state: ServerState, job: Job, request: Request, body, full, chunk, obj: str):
    """Runs the job to a JSON answer, or primes it and returns an SSE stream."""
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
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    gen = sse_stream(job, chunk, include_usage, body.model, obj)
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip


class _EchoText:
    """``echo[i]``: the text of prompt ``i``, decoded on first use."""

    def __init__(self, tokenizer, prompts: list[list[int]]) -> None:
        self.tokenizer = tokenizer
        self.prompts = prompts
        self._text: dict[int, str] = {}

    def __getitem__(self, i: int) -> str:
        if i not in self._text:
            self._text[i] = self.tokenizer.decode(self.prompts[i])
        return self._text[i]


def _completion_prompts(state: ServerState, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    out = []
    for p in prompt:
        ids = state.client.tokenizer.encode(p) if isinstance(p, str) else list(p)
        if not ids:
            raise bad_request("prompt is empty", param="prompt")
        if not isinstance(p, str) and not all(0 <= t < MAX_TOKEN_ID for t in ids):
            raise bad_request(f"prompt token ids must be in [0, {MAX_TOKEN_ID})", param="prompt")
        out.append(ids)
    return out


def _message_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)
