"""Pydantic models of the OpenAI Responses API request (``POST /v1/responses``) and the
translation of its input items to chat messages."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from pyserve.server.protocol import CacheRetention, Finite, ProgramId
from pyserve.server.response_format import TextFormat
from pyserve.server.strict import StrictModel, only, tagged
from pyserve.server.tools import FunctionName, NamedFunction, NamedToolChoice, ToolDef

# NOTE: ids, statuses, annotations and logprobs ride along when a client sends earlier output
# items back as input (the Agents SDK does); they do not change the prompt.
ItemId = Annotated[str, Field(max_length=256)] | None


class ContentPart(StrictModel):
    type: Literal["input_text", "output_text", "text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(StrictModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: ItemId = None
    status: str | None = None


class FunctionCallItem(StrictModel):
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    name: FunctionName
    arguments: str
    id: ItemId = None
    status: str | None = None


class FunctionCallOutputItem(StrictModel):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    output: str
    id: ItemId = None
    status: str | None = None


InputItem = tagged(MessageItem, FunctionCallItem, FunctionCallOutputItem, default="message")


class FunctionTool(StrictModel):
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(StrictModel):
    type: Literal["function"]
    name: FunctionName


class TextConfig(StrictModel):
    format: TextFormat | None = None
    verbosity: Annotated[str | None, only("medium", None, why="the length is not steered")] = None


class Reasoning(StrictModel):
    """``reasoning``: accepted only when it asks for none (no reasoning models here)."""

    effort: Annotated[str | None, only("none", None, why="no reasoning models")] = None
    summary: Annotated[str | None, only(None, why="no reasoning summaries")] = None
    generate_summary: Annotated[str | None, only(None, why="no reasoning summaries")] = None


class StreamOptions(StrictModel):
    include_obfuscation: Annotated[bool | None, only(False, None, why="no padding")] = None


class ResponsesRequest(StrictModel):
    """POST /v1/responses (plus pyserve's program tags)."""

    model: str = Field(max_length=1024)
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    previous_response_id: str | None = Field(None, max_length=256)
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: Finite | None = Field(None, ge=0.0, le=2.0)
    top_p: Finite | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    metadata: dict[str, str] | None = None
    text: TextConfig | None = None
    # refused unless at their no-op value (see unsupported())
    include: list[str] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    top_logprobs: int | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # tags that change no output, or accepted only at the value this server honours
    user: str | None = Field(None, max_length=1024)
    safety_identifier: str | None = Field(None, max_length=1024)
    prompt_cache_key: str | None = Field(None, max_length=1024)
    prompt_cache_retention: CacheRetention = None
    service_tier: Annotated[str | None, only("auto", "default", None, why="one tier")] = None
    reasoning: Reasoning | None = None
    stream_options: StreamOptions | None = None
    max_tool_calls: Annotated[int | None, only(None, why="the caller runs the tools")] = None
    context_management: Annotated[Any, only(None, why="no server-side compaction")] = None
    priority: Finite = 0.0
    program_id: ProgramId | None = None
    session_id: ProgramId | None = None


def unsupported(body: ResponsesRequest) -> str | None:
    """The first field this server cannot honour, or None."""
    checks = (
        ("include", bool(body.include)),
        ("background", bool(body.background)),
        ("conversation", body.conversation is not None),
        ("prompt", body.prompt is not None),
        ("top_logprobs", bool(body.top_logprobs)),
        ("truncation", body.truncation == "auto"),
    )
    return next((name for name, bad in checks if bad), None)


def chat_tools(body: ResponsesRequest) -> tuple[list[ToolDef] | None, Any]:
    """``tools`` and ``tool_choice`` in the chat completions shapes."""
    tools = [ToolDef(type="function", function={"name": t.name, "description": t.description,
                                                "parameters": t.parameters, "strict": t.strict})
             for t in body.tools or ()] or None  # fmt: skip
    choice = body.tool_choice
    if isinstance(choice, FunctionChoice):
        choice = NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    return tools, choice


def input_messages(body: ResponsesRequest) -> list[dict]:
    """The request's ``instructions`` and ``input`` as chat messages (function calls become an
    assistant message's ``tool_calls``, their outputs tool messages)."""
    out: list[dict] = []
    if body.instructions:
        out.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*out, {"role": "user", "content": body.input}]
    for item in body.input:
        if isinstance(item, MessageItem):
            text = item.content if isinstance(item.content, str) else "".join(
                p.text for p in item.content)  # fmt: skip
            out.append({"role": item.role, "content": text})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}  # fmt: skip
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return out
