"""Tool definitions, ``tool_choice`` and the chat history as the chat template sees it.

:func:`tool_plan` checks ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` and says how the
output is to be read; :func:`template_messages` turns the request's messages (assistant
``tool_calls``, tool results with ``tool_call_id``) into the dicts ``apply_chat_template``
takes, with arguments as objects as Hugging Face templates expect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from pyserve.server.errors import bad_request
from pyserve.server.strict import StrictModel
from pyserve.server.tool_parsers import ToolParser
from pyserve.server.tool_parsers.forced import NamedChoiceParser, RequiredChoiceParser

MAX_TOOLS = 128
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.\-]{1,64}$")]


class FunctionDef(StrictModel):
    """A function the model may call; ``parameters`` is a JSON schema object."""

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(StrictModel):
    """An entry of ``tools``."""

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(StrictModel):
    name: FunctionName


class NamedToolChoice(StrictModel):
    """``{"type": "function", "function": {"name": ...}}``: call this function."""

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(StrictModel):
    """The function of a tool call in the history; ``arguments`` is a JSON object as a string."""

    name: FunctionName
    arguments: str


class ToolCallItem(StrictModel):
    """An assistant message's ``tool_calls`` entry."""

    id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolFields(StrictModel):
    """The tool fields of a chat request."""

    tools: Annotated[list[ToolDef], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True)
class ToolPlan:
    """How to read a call's output: ``parser`` None means plain text."""

    parser: ToolParser | None = None
    parallel: bool = True
    forced: bool = False  # tool_choice required / named: a grammar must shape the output


def tool_plan(tools: list[ToolDef] | None, choice: ToolChoice | None, parallel: bool | None,
              model_parser: ToolParser | None) -> ToolPlan:  # fmt: skip
    """Validates the tool fields (400 naming the field) and picks the output parser."""
    names = [t.function.name for t in tools or ()]
    if len(set(names)) != len(names):
        raise bad_request("tools has two functions with the same name", param="tools")
    if choice is None:
        choice = "auto" if names else "none"
    if choice == "none":
        return ToolPlan()
    if not names:
        raise bad_request("tool_choice needs tools", param="tool_choice")
    par = parallel is not False
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise bad_request(f"tool_choice names {choice.function.name!r}, which is not in tools",
                              param="tool_choice")  # fmt: skip
        return ToolPlan(NamedChoiceParser(choice.function.name), False, True)
    if choice == "required":
        return ToolPlan(RequiredChoiceParser(), par, True)
    if model_parser is None:
        raise bad_request("this model's chat template has no known tool-call format; start the "
                          "server with --tool-call-parser", param="tools")  # fmt: skip
    return ToolPlan(model_parser, par)


def template_tools(tools: list[ToolDef] | None) -> list[dict] | None:
    """``tools`` in the OpenAI shape Hugging Face chat templates take."""
    if not tools:
        return None
    return [t.model_dump(exclude_none=True) for t in tools]


def template_messages(messages: list[Any]) -> list[dict]:
    """The chat history for ``apply_chat_template``; 400 naming the bad message field."""
    out: list[dict] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        msg: dict[str, Any] = {"role": m.role, "content": message_text(m.content)}
        if m.name is not None:
            msg["name"] = m.name
        if m.tool_calls:
            if m.role != "assistant":
                raise bad_request("only assistant messages have tool_calls",
                                  param=f"messages.{i}.tool_calls")  # fmt: skip
            msg["tool_calls"] = [_history_call(i, j, c) for j, c in enumerate(m.tool_calls)]
            call_names.update((c.id, c.function.name) for c in m.tool_calls)
        if m.role == "tool":
            if not m.tool_call_id:
                raise bad_request("a tool message needs tool_call_id",
                                  param=f"messages.{i}.tool_call_id")  # fmt: skip
            if m.tool_call_id not in call_names:
                raise bad_request(f"tool_call_id {m.tool_call_id!r} answers no earlier tool call",
                                  param=f"messages.{i}.tool_call_id")  # fmt: skip
            msg["tool_call_id"] = m.tool_call_id
            msg.setdefault("name", call_names[m.tool_call_id])
        elif m.tool_call_id is not None:
            raise bad_request("only tool messages have tool_call_id",
                              param=f"messages.{i}.tool_call_id")  # fmt: skip
        out.append(msg)
    return out


def message_text(content: Any) -> str:
    """A message's text: a string, or its text parts joined; None is empty."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _history_call(i: int, j: int, call: ToolCallItem) -> dict:
    try:
        args = json.loads(call.function.arguments)
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise bad_request("tool-call arguments must be a JSON object",
                          param=f"messages.{i}.tool_calls.{j}.function.arguments")  # fmt: skip
    return {"id": call.id, "type": "function",
            "function": {"name": call.function.name, "arguments": args}}  # fmt: skip
