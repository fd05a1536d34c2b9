"""Llama 3.x JSON format: ``{"name": ..., "parameters": {...}}`` as the whole answer.

The answer may start with ``<|python_tag|>``; several calls are separated by ``;``. An answer
whose first visible character is not ``{`` is plain content.
"""

from __future__ import annotations

from pyserve.server.tool_parsers.base import Parse, ToolParser, scan_call_list
from pyserve.server.tool_parsers.json_scan import JsonSyntaxError, skip_ws

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonParser(ToolParser):
    """A JSON call object (or ``;``-separated objects) instead of text."""

    name = "llama3_json"
    markers = (PYTHON_TAG,)

    def parse(self, text: str, final: bool) -> Parse:
        i = skip_ws(text, 0)
        if text.startswith(PYTHON_TAG, i):
            i = skip_ws(text, i + len(PYTHON_TAG))
        elif not final and PYTHON_TAG.startswith(text[i:]):
            return Parse("")  # nothing visible yet, or a marker half written
        if i < len(text) and text[i] != "{":
            return Parse(text)
        if i >= len(text):
            return Parse(text if final else "")
        result = Parse("")
        try:
            result.calls, end = scan_call_list(text, i, ";")
        except JsonSyntaxError:
            result.valid = False
            return result
        if end is not None and text[end:].strip():
            result.valid = False  # text after the calls: not a tool-call answer
        return result
