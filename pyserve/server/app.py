"""The FastAPI app: OpenAI-compatible endpoints plus program sessions, health and metrics.

``build_app(client)`` depends only on the :class:`~pyserve.engine.client.EngineClient` protocol.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response

from pyserve._core import ProgramTableFull
from pyserve.engine.client import EngineClient
from pyserve.server.chat_api import add_chat_routes
from pyserve.server.errors import OpenAIError, install_error_handlers
from pyserve.server.messages_api import add_messages_routes
from pyserve.server.metrics import CONTENT_TYPE
from pyserve.server.middleware import (
    DOCS_PATHS,
    AccountingMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
)
from pyserve.server.program_ids import check_program_id
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
from pyserve.server.responses import completion_chunk, completion_json, json_response
from pyserve.server.responses_api import add_responses_routes
from pyserve.server.state import SHUTDOWN_DRAIN_S, ServerState, answer, make_job
from pyserve.server.tokenize_api import add_tokenize_routes

log = logging.getLogger("pyserve.server")

DEFAULT_MAX_REQUEST_BYTES = 4 << 20
DEFAULT_BODY_TIMEOUT_S = 60.0
API_KEY_ENV = "PYSERVE_API_KEY"
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 409, 413, 429, 500,
                                                       503)}  # fmt: skip


def build_app(
    client: EngineClient,
    *,
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    served_model_name: str | None = None,
    shutdown_client: bool = True,
    tool_call_parser: str | None = None,
    shutdown_timeout_s: float = SHUTDOWN_DRAIN_S,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> FastAPI:
    """The OpenAI-compatible app over ``client``.

    ``api_key`` (or env ``PYSERVE_API_KEY``) protects ``/v1/*`` and the API docs (``/docs``,
    ``/redoc``, ``/openapi.json``) with a Bearer token; an empty key is a ValueError. Bodies over
    ``max_request_bytes`` get 413, bodies not received within ``body_timeout_s`` get 408. With
    ``shutdown_client`` the app drains the client for at most ``shutdown_timeout_s`` when the
    server stops, then aborts what is left (its KV is freed) and shuts it down.
    ``tool_call_parser`` names the tool-call format (``hermes``, ``llama3_json``, ``mistral``);
    by default it is read from the model's chat template.
    """
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():
        raise ValueError("the API key must not be empty (omit it to serve without auth)")
    if not shutdown_timeout_s >= 0:
        raise ValueError(f"shutdown_timeout_s must be >= 0, got {shutdown_timeout_s}")
    state = ServerState(client, served_model_name or client.model_name, tool_call_parser,
                        shutdown_timeout_s)  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        state.bind_loop()
        yield
        if shutdown_client:
            await state.shutdown_client()

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
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes, timeout_s=body_timeout_s)
    if api_key:
        # checked before the body is read
        app.add_middleware(ApiKeyMiddleware, api_key=api_key, extra_paths=DOCS_PATHS)
    app.add_middleware(AccountingMiddleware, metrics=state.metrics)  # outermost: sees every answer
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
        except ProgramTableFull as exc:
            raise OpenAIError(429, f"{exc}: end programs (DELETE /v1/programs/ID) or retry "
                              "later", code="too_many_programs") from None  # fmt: skip
        state.note_program_start(pid)
        return ProgramResponse(id=pid)

    # NOTE: ":path" so that ids with "/" (valid ids) reach the route.
    @app.delete("/v1/programs/{program_id:path}", response_model=ProgramDeleted)
    async def end_program(program_id: str):
        check_program_id(program_id)
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
        prompts = await state.prompts.completion_prompts(body.prompt)
        # NOTE: echo text is decoded lazily, once the engine has validated the prompt ids.
        echo = _EchoText(state.client.tokenizer, prompts) if body.echo else None
        # echo + logprobs: the engine scores the prompt tokens too (prompt logprobs)
        prompt_k = body.logprobs if body.echo else None
        overrides = {"prompt_logprobs": prompt_k} if prompt_k is not None else None
        job = await make_job(state, body, request, "cmpl", prompts, body.max_tokens, body.logprobs,
                             overrides)  # fmt: skip

        def chunk(index: int, out, first: bool):
            head = echo[index // job.n] if echo and first else ""
            return completion_chunk(job, body.model, 0, index, out, state.token_text, head,
                                    prompt_k)  # fmt: skip

        async def full():
            outs = await job.collect()
            return await json_response(completion_json, job, body.model, outs, echo,
                                       state.token_text, prompt_k)  # fmt: skip

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
