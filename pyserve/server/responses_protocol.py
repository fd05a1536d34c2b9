"""Pydantic models of the OpenAI Responses API request (``POST /v1/responses``) and the
translation of its input items to chat messages."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pyserve.server.protocol import Finite, ProgramId
from pyserve.server.response_format import TextFormat
from pyserve.server.tools import FunctionName, NamedFunction, NamedToolChoice, ToolDef


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    name: FunctionName
    arguments: str


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    output: str


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    name: FunctionName


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    """POST /v1/responses (plus pyserve's program tags)."""

    model_config = ConfigDict(extra="ignore")
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
