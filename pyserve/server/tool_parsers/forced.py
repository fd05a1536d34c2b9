"""Output formats of a forced ``tool_choice``, which a grammar constrains to plain JSON.

- named (``{"type": "function", "function": {"name": F}}``): the answer is F's arguments object;
- ``required``: the answer is a JSON array ``[{"name": ..., "parameters": {...}}, ...]``.

``pyserve.server.tool_choice`` builds the JSON schemas these formats follow.
"""

from __future__ import annotations

from pyserve.server.tool_parsers.base import Parse, ToolParser, scan_call, scan_call_list
from pyserve.server.tool_parsers.json_scan import JsonSyntaxError, skip_ws


class NamedChoiceParser(ToolParser):
    """The whole answer is the arguments object of the named function."""

    name = "named"

    def __init__(self, function: str) -> None:
        self.function = function

    def parse(self, text: str, final: bool) -> Parse:
        i = skip_ws(text, 0)
        result = Parse("")
        if i >= len(text):
            result.valid = not final
            return result
        try:
            call, end = scan_call(text, i, name=self.function)
        except JsonSyntaxError:
            result.valid = False
            return result
        result.calls = [call]
        result.valid = not final or (end is not None and not text[end:].strip())
        return result


class RequiredChoiceParser(ToolParser):
    """The whole answer is a JSON array of ``{"name", "parameters"}`` objects."""

    name = "required"

    def parse(self, text: str, final: bool) -> Parse:
        i = skip_ws(text, 0)
        result = Parse("")
        if i >= len(text) or text[i] != "[":
            result.valid = not final and i >= len(text)
            return result
        try:
            result.calls, end = scan_call_list(text, i + 1, ",")
        except JsonSyntaxError:
            result.valid = False
            return result
        if final:
            result.valid = end is not None and text[end] == "]" and bool(result.calls)
        return result
