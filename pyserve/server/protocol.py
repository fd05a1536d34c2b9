"""Pydantic models of the OpenAI-compatible API (requests, responses, stream chunks, errors).

Fields beyond OpenAI's (vLLM-style sampling extensions, ``program_id`` with its alias
``session_id``, and ``priority``) are sent by the openai client as ``extra_body``; ``thread_id`` /
``parent_ids`` are declared only so that they are answered with a 400 (no policy uses them).
Unknown fields are a 400 naming them (:class:`~pyserve.server.strict.StrictModel`); OpenAI fields
this server cannot act on accept only their no-op values (:func:`~pyserve.server.strict.only`).

NOTE: every list has a length cap, so a hostile body fails at its first bad list instead of
making pydantic build an error object per element; every text must be encodable as UTF-8 (a
lone surrogate is a 400 naming the field, not a tokenizer crash).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from pyserve.sampling_params import MAX_LOGPROBS
from pyserve.server.program_ids import MAX_PROGRAM_ID_LEN, PROGRAM_ID_CHARS, is_valid_program_id
from pyserve.server.response_format import ResponseFormat
from pyserve.server.strict import StrictModel, only
from pyserve.server.tools import ToolCallItem, ToolFields

MAX_N = 16  # choices per request
MAX_STOP = 16  # stop strings per request
MAX_PROMPTS = 64  # prompts in one completions request
MAX_ID_LEN = MAX_PROGRAM_ID_LEN  # program / thread / parent ids
MAX_MESSAGES = 4096  # chat messages per request
MAX_CONTENT_PARTS = 1024  # content parts per chat message
MAX_PROMPT_TOKEN_IDS = 1 << 18  # token ids in one prompt given as ids
MAX_SEED = 2**63 - 1
MAX_INT32 = 2**31 - 1  # token ids and top_k travel as int32 into the core and the sampler


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode ({exc.reason} at position {exc.start}); "
                         "lone surrogates cannot be tokenized") from None  # fmt: skip
    return value


def _program_id(value: str) -> str:
    if not is_valid_program_id(value):
        raise ValueError(f"a program id is 1 to {MAX_PROGRAM_ID_LEN} characters from "
                         f"{PROGRAM_ID_CHARS}")  # fmt: skip
    return value


Finite = Annotated[float, Field(allow_inf_nan=False)]
Text = Annotated[str, AfterValidator(_utf8)]
TagId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN), AfterValidator(_utf8)]
ProgramId = Annotated[str, AfterValidator(_program_id)]
TokenIds = Annotated[list[int], Field(min_length=1, max_length=MAX_PROMPT_TOKEN_IDS)]
CacheRetention = Annotated[str | None, only("in_memory", None, why="KV is kept in memory only")]


class ErrorInfo(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: ErrorInfo


class StreamOptions(StrictModel):
    """``stream_options``: ``include_usage`` adds a final chunk with the token counts."""

    include_usage: bool = False
    include_obfuscation: Annotated[bool | None, only(False, None, why="no delta padding")] = None


class SamplingFields(StrictModel):
    """Fields shared by completions and chat completions."""

    model: Text = Field(max_length=1024)
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: Finite | None = Field(None, ge=0.0)
    top_p: Finite | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=MAX_INT32)
    min_p: Finite | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: Finite | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Finite | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: Finite | None = Field(None, gt=0.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0, le=MAX_INT32)]] | None = Field(
        None, max_length=MAX_STOP
    )
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=MAX_INT32)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None  # OpenAI's end-user tag: accepted, read by nothing
    logit_bias: Annotated[
        dict[str, Finite] | None, only(None, {}, why="the sampler has no per-token bias")
    ] = None
    priority: Finite = 0.0
    program_id: ProgramId | None = None
    session_id: ProgramId | None = None
    thread_id: TagId | None = None
    parent_ids: list[TagId] = Field(default_factory=list, max_length=1024)
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    )  # fmt: skip
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


class TextPart(StrictModel):
    """A text content part of a chat message."""

    type: Literal["text"]
    text: Text


class ChatMessage(StrictModel):
    """One chat message: text content, an assistant's ``tool_calls``, a tool's ``tool_call_id``."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: Text | None = None
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: Text | None = None
    # an assistant message echoed back from a response carries these as null
    refusal: Annotated[Any, only(None, why="refusals are not rendered into the prompt")] = None
    function_call: Annotated[Any, only(None, why="use tool_calls")] = None
    audio: Annotated[Any, only(None, why="text messages only")] = None


class ChatCompletionRequest(SamplingFields, ToolFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # the deprecated function-calling fields: refused with a 400 pointing to tools / tool_choice
    functions: list[Any] | None = None
    function_call: Any = None
    # OpenAI fields the official clients and agent frameworks send (docs/server.md, "Request
    # fields"): tags that change no output, or accepted only at the value this server honours
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    prompt_cache_key: Text | None = None
    safety_identifier: Text | None = None
    prompt_cache_retention: CacheRetention = None
    store: Annotated[bool | None, only(False, None, why="chat completions are not stored")] = None
    service_tier: Annotated[str | None, only("auto", "default", None, why="one tier")] = None
    modalities: list[Literal["text"]] | None = None
    reasoning_effort: Annotated[str | None, only("none", None, why="no reasoning models")] = None
    verbosity: Annotated[str | None, only(None, why="the output length is not steered")] = None
    audio: Annotated[Any, only(None, why="text output only")] = None
    prediction: Annotated[Any, only(None, why="no predicted-output decoding")] = None
    web_search_options: Annotated[Any, only(None, why="no built-in web search")] = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    """Legacy completions logprobs (parallel lists)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class DeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "pyserve"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ProgramCreateRequest(StrictModel):
    """POST /v1/programs; without ``program_id`` the server picks one."""

    program_id: ProgramId | None = None


class ProgramResponse(BaseModel):
    id: str
    object: Literal["program"] = "program"
    created: int = Field(default_factory=lambda: int(time.time()))


class ProgramDeleted(BaseModel):
    id: str
    object: Literal["program.deleted"] = "program.deleted"
    deleted: bool = True
    latency_s: float | None = None


class HealthResponse(BaseModel):
    status: str
