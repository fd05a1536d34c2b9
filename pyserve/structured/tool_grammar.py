"""Grammars that force a tool call, for ``tool_choice`` ``required`` or a named function.

``tool_call_grammar(tools, tool_choice, fmt)`` turns the OpenAI ``tools`` list into a
:class:`StructuredOutputsParams` (an xgrammar structural tag) whose language is exactly the
tool-call text of a model family, so even a random-weight model emits a parseable call naming an
allowed tool with arguments valid against its ``parameters`` schema:

- ``hermes`` (Hermes, Qwen 2.5+): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
  several calls separated by ``\\n``;
- ``llama3_json`` (Llama 3.x): ``{"name": ..., "parameters": {...}}``, several separated by ``; ``;
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``.

NOTE: tags such as ``<tool_call>`` and ``[TOOL_CALLS]`` are produced as text (xgrammar never
lets a grammar emit a special token); tool parsers read the decoded text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pyserve.structured.errors import StructuredOutputError, require_xgrammar
from pyserve.structured.params import StructuredOutputsParams
from pyserve.structured.schema import bound_strings, check_json_schema, load_schema, map_subschemas

TOOL_CALL_FORMATS = ("hermes", "llama3_json", "mistral")
_ARGS_KEY = {"hermes": "arguments", "llama3_json": "parameters", "mistral": "arguments"}


def tool_call_grammar(
    tools: Sequence[Any] | None,
    tool_choice: Any,
    fmt: str,
    parallel_tool_calls: bool = True,
) -> StructuredOutputsParams | None:
    """The constraint for ``tool_choice`` over ``tools`` in format ``fmt``; None for ``auto`` /
    ``none`` (no constraint). ``required`` allows any listed tool (one or more calls when
    ``parallel_tool_calls``); a named choice (``{"type": "function", "function": {"name": N}}``)
    allows exactly one call to ``N``. Raises :class:`StructuredOutputError` (a ValueError)
    naming ``tools[i]...`` or ``tool_choice``. Tools and choices may be dicts or pydantic models.
    """
    if fmt not in TOOL_CALL_FORMATS:
        raise ValueError(f"unknown tool-call format {fmt!r}; known: {', '.join(TOOL_CALL_FORMATS)}")
    choice = _as_dict(tool_choice)
    if choice is None or choice in ("auto", "none"):
        return None
    functions = _functions(tools)
    if choice == "required":
        allowed, many = functions, parallel_tool_calls
    else:
        name = _named_choice(choice)
        if name not in functions:
            raise StructuredOutputError(f"names {name!r}, which is not in tools", "tool_choice")
        allowed, many = {name: functions[name]}, False
    call = {"type": "or", "elements": [_call_format(n, s, fmt) for n, s in allowed.items()]}
    tag = {"type": "structural_tag", "format": _calls_format(call, fmt, many)}
    return StructuredOutputsParams(structural_tag=tag, param="tool_choice")


def _functions(tools: Sequence[Any] | None) -> dict[str, dict]:
    """name -> closed parameters schema, checked."""
    if not tools:
        raise StructuredOutputError("tool_choice requires a non-empty tools list", "tools")
    out: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        t = _as_dict(tool)
        fn = t.get("function") if isinstance(t, Mapping) else None
        if not isinstance(t, Mapping) or t.get("type", "function") != "function" or not fn:
            raise StructuredOutputError("must be a function tool", f"tools[{i}]")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise StructuredOutputError("needs a name", f"tools[{i}].function.name")
        if name in out:
            raise StructuredOutputError(
                f"duplicate tool name {name!r}", f"tools[{i}].function.name"
            )
        param = f"tools[{i}].function.parameters"
        schema = fn.get("parameters")
        schema = (
            {"type": "object", "properties": {}} if schema is None else load_schema(schema, param)
        )
        check_json_schema(schema, param)
        out[name] = map_subschemas(schema, bound_strings)
    return out


def _named_choice(choice: Any) -> str:
    if not isinstance(choice, Mapping) or choice.get("type", "function") != "function":
        raise StructuredOutputError("must be none, auto, required or a function", "tool_choice")
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str) or not name:
        raise StructuredOutputError("needs function.name", "tool_choice.function.name")
    return name


def _call_format(name: str, params: dict, fmt: str) -> dict:
    """One call as one-line JSON (``", "`` / ``": "`` separators), objects closed to their
    listed properties (xgrammar's strict mode), so a call carries only declared arguments."""
    xgr = require_xgrammar()
    schema = {
        "type": "object",
        "properties": {"name": {"const": name}, _ARGS_KEY[fmt]: params},
        "required": ["name", _ARGS_KEY[fmt]],
    }
    grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False,
                                           strict_mode=True)  # fmt: skip
    return {"type": "grammar", "grammar": str(grammar)}


def _calls_format(call: dict, fmt: str, many: bool) -> dict:
    if fmt == "hermes":
        one = _seq(_const("<tool_call>\n"), call, _const("\n</tool_call>"))
        sep, head, tail = "\n", [], []
    elif fmt == "llama3_json":
        one, sep, head, tail = call, "; ", [], []
    else:
        one, sep, head, tail = call, ", ", [_const("[TOOL_CALLS][")], [_const("]")]
    more = [{"type": "star", "content": _seq(_const(sep), one)}] if many else []
    return _seq(*head, one, *more, *tail)


def _seq(*elements: dict) -> dict:
    return {"type": "sequence", "elements": list(elements)}


def _const(value: str) -> dict:
    return {"type": "const_string", "value": value}


def _as_dict(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    return value
