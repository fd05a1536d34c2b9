"""Pydantic models of the Anthropic Messages API (``/v1/messages``) and their translation to
the chat history, tools and tool plan the chat completions path uses."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field

from pyserve.server.errors import bad_request
from pyserve.server.protocol import Finite, ProgramId, TagId
from pyserve.server.strict import StrictModel, only, tagged
from pyserve.server.tools import FunctionName, NamedToolChoice, ToolCallItem

Text = Annotated[str, Field(max_length=1 << 22)]


class CacheControl(StrictModel):
    """``cache_control`` breakpoints: accepted; the prefix cache keeps every shared prefix anyway
    (hits are reported as ``cache_read_input_tokens``)."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(StrictModel):
    type: Literal["text"]
    text: Text
    cache_control: CacheControl | None = None
    citations: Annotated[Any, only(None, why="no citations")] = None


class ToolUseBlock(StrictModel):
    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1, max_length=256)]
    name: FunctionName
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(StrictModel):
    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1, max_length=256)]
    content: str | list[TextBlock] = ""
    is_error: bool = False
    cache_control: CacheControl | None = None


Block = tagged(TextBlock, ToolUseBlock, ToolResultBlock)


class AnthropicMessage(StrictModel):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class AnthropicTool(StrictModel):
    type: Literal["custom"] | None = None
    name: FunctionName
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None


class AnthropicToolChoice(StrictModel):
    type: Literal["auto", "any", "tool", "none"]
    name: FunctionName | None = None
    disable_parallel_tool_use: bool = False


class Metadata(StrictModel):
    """``metadata``: ``user_id`` is an end-user tag, accepted and read by nothing."""

    user_id: str | None = Field(None, max_length=256)


class CountTokensRequest(StrictModel):
    """POST /v1/messages/count_tokens."""

    model: str = Field(max_length=1024)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: Annotated[list[AnthropicTool], Field(max_length=128)] | None = None
    tool_choice: AnthropicToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages (plus pyserve's program tags, as in chat completions)."""

    max_tokens: int = Field(ge=1)
    stop_sequences: Annotated[list[str], Field(max_length=16)] | None = None
    temperature: Finite | None = Field(None, ge=0.0, le=2.0)
    top_p: Finite | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, le=2**31 - 1)
    stream: bool = False
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    priority: Finite = 0.0
    program_id: ProgramId | None = None
    session_id: ProgramId | None = None
    thread_id: TagId | None = None


def chat_messages(body: CountTokensRequest) -> list[dict]:
    """The request as chat-completions messages (``system``, tool_use -> tool_calls,
    tool_result -> tool messages), ready for :func:`pyserve.server.tools.template_messages`."""
    out: list[dict] = []
    if body.system:
        out.append({"role": "system", "content": _text(body.system)})
    for i, m in enumerate(body.messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        texts = [b.text for b in m.content if isinstance(b, TextBlock)]
        uses = [b for b in m.content if isinstance(b, ToolUseBlock)]
        results = [b for b in m.content if isinstance(b, ToolResultBlock)]
        if uses and m.role != "assistant":
            raise bad_request("tool_use blocks belong to assistant messages",
                              param=f"messages.{i}.content")  # fmt: skip
        if results and m.role != "user":
            raise bad_request("tool_result blocks belong to user messages",
                              param=f"messages.{i}.content")  # fmt: skip
        for r in results:
            text = _text(r.content)
            out.append({"role": "tool", "tool_call_id": r.tool_use_id,
                        "content": f"Error: {text}" if r.is_error else text})  # fmt: skip
        if texts or uses or not results:
            calls = [ToolCallItem(id=u.id, function={"name": u.name,
                                                     "arguments": json.dumps(u.input)})
                     for u in uses]  # fmt: skip
            out.append({"role": m.role, "content": "".join(texts), "tool_calls": calls or None})
    return out


def openai_tools(body: CountTokensRequest) -> tuple[list[dict] | None, Any, bool | None]:
    """``(tools, tool_choice, parallel_tool_calls)`` in the chat completions shapes."""
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                "parameters": t.input_schema}}
             for t in body.tools or ()]  # fmt: skip
    choice = body.tool_choice
    if choice is None:
        return tools or None, None, None
    if choice.type == "tool" and choice.name is None:
        raise bad_request("tool_choice of type 'tool' needs a name", param="tool_choice.name")
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type)
    if mapped is None:
        mapped = NamedToolChoice.model_validate(
            {"type": "function", "function": {"name": choice.name}}
        )
    parallel = False if choice.disable_parallel_tool_use else None
    return tools or None, mapped, parallel


def _text(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "".join(b.text for b in content)
