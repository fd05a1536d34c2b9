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
from fastapi.responses import Response

from pyserve.engine.client import EngineClient
from pyserve.server.chat_api import add_chat_routes
from pyserve.server.errors import OpenAIError, bad_request, install_error_handlers
from pyserve.server.messages_api import add_messages_routes
from pyserve.server.metrics import CONTENT_TYPE
from pyserve.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from pyserve.server.protocol import (
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
from pyserve.server.responses import completion_chunk, completion_response
from pyserve.server.responses_api import add_responses_routes
from pyserve.server.state import ServerState, answer, make_job
from pyserve.server.tokenize_api import add_tokenize_routes

log = logging.getLogger("pyserve.server")

DEFAULT_MAX_REQUEST_BYTES = 4 << 20
API_KEY_ENV = "PYSERVE_API_KEY"
SHUTDOWN_DRAIN_S = 30.0
MAX_TOKEN_ID = 2**31  # int32; the engine checks the model's real vocabulary
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 500, 503)}


def build_app(
    client: EngineClient,
    *,
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    served_model_name: str | None = None,
    shutdown_client: bool = True,
    tool_call_parser: str | None = None,
) -> FastAPI:
    """The OpenAI-compatible app over ``client``.

    ``api_key`` (or env ``PYSERVE_API_KEY``) protects ``/v1/*`` with a Bearer token; bodies over
    ``max_request_bytes`` get 413. With ``shutdown_client`` the app drains and shuts the client
    down when the server stops. ``tool_call_parser`` names the tool-call format (``hermes``,
    ``llama3_json``, ``mistral``); by default it is read from the model's chat template.
    """
    state = ServerState(client, served_model_name or client.model_name, tool_call_parser)

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
    add_chat_routes(app, state)
    add_tokenize_routes(app, state)
    add_messages_routes(app, state)
    add_responses_routes(app, state)
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

    def card() -> ModelCard:
        return ModelCard(id=state.model_name, root=state.client.model_name,
                         max_model_len=state.client.max_model_len)  # fmt: skip

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[card()])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model(model_id: str):
        state.check_model(model_id)
        return card()


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
        if body.echo and body.logprobs is not None:
            raise bad_request("echo with logprobs needs prompt logprobs, which this engine does "
                              "not compute; send echo or logprobs, not both", param="logprobs")
        prompts = _completion_prompts(state, body.prompt)
        # NOTE: echo text is decoded lazily, once the engine has validated the prompt ids.
        echo = _EchoText(state.client.tokenizer, prompts) if body.echo else None
        job = await make_job(state, body, request, "cmpl", prompts, body.max_tokens, body.logprobs)

        def chunk(index: int, out, first: bool):
            head = echo[index // job.n] if echo and first else ""
            return completion_chunk(job, body.model, 0, index, out, state.token_text, head)

        async def full():
            outs = await job.collect()
            return completion_response(job, body.model, outs, echo, state.token_text)

        return await answer(state, job, request, body, full, chunk, "text_completion")


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
