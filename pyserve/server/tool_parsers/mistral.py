"""Mistral format: ``[TOOL_CALLS]`` then a JSON array of calls, or (tokenizer v11+)
``[TOOL_CALLS]name[ARGS]{...}`` repeated per call.

Mistral's chat templates require tool-call ids of exactly 9 alphanumeric characters.
"""

from __future__ import annotations

import json
import secrets
import string

from pyserve.server.tool_parsers.base import (
    Parse,
    PartialCall,
    ToolParser,
    held_suffix,
    scan_call_list,
)
from pyserve.server.tool_parsers.json_scan import JsonSyntaxError, skip_ws, value_end

TOOL_CALLS, ARGS = "[TOOL_CALLS]", "[ARGS]"
_ID_CHARS = string.ascii_letters + string.digits


class MistralParser(ToolParser):
    """``[TOOL_CALLS]`` followed by an array of calls or ``name[ARGS]{json}`` blocks."""

    name = "mistral"
    markers = (TOOL_CALLS, ARGS)

    def new_id(self) -> str:
        return "".join(secrets.choice(_ID_CHARS) for _ in range(9))

    def parse(self, text: str, final: bool) -> Parse:
        k = text.find(TOOL_CALLS)
        if k < 0:
            keep = 0 if final else held_suffix(text, TOOL_CALLS)
            return Parse(text[: len(text) - keep])
        result = Parse(text[:k])
        i = skip_ws(text, k + len(TOOL_CALLS))
        try:
            if text.startswith("[", i):
                result.calls, end = scan_call_list(text, i + 1, ",")
                if end is not None and text[end] != "]":
                    raise JsonSyntaxError(f"expected ']' at offset {end}")
            else:
                result.calls = _named_blocks(text, k)
        except JsonSyntaxError:
            result.valid = False
        return result


def _named_blocks(text: str, k: int) -> list[PartialCall]:
    """Calls written as ``[TOOL_CALLS]name[ARGS]{...}`` (one marker per call)."""
    calls = []
    while k >= 0:
        start = k + len(TOOL_CALLS)
        a = text.find(ARGS, start)
        if a < 0:
            return calls  # the name is still being written
        name = text[start:a].strip()
        if not name:
            raise JsonSyntaxError("a tool call needs a name")
        i = skip_ws(text, a + len(ARGS))
        if i < len(text) and text[i] != "{":
            raise JsonSyntaxError("a tool call's arguments must be a JSON object")
        end = value_end(text, i) if i < len(text) else None
        call = PartialCall(name, text[i : end if end is not None else len(text)], done=end is not None)
        if call.done and not isinstance(json.loads(call.arguments), dict):
            raise JsonSyntaxError("a tool call's arguments must be a JSON object")
        calls.append(call)
        if end is None:
            return calls
        k = text.find(TOOL_CALLS, end)
    return calls
