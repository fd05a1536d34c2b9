"""Hermes / Qwen2.5+ format: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

Text before the first ``<tool_call>`` is content; each call sits in its own tag pair.
"""

from __future__ import annotations

from pyserve.server.tool_parsers.base import Parse, ToolParser, held_suffix, scan_call
from pyserve.server.tool_parsers.json_scan import JsonSyntaxError, skip_ws

START, END = "<tool_call>", "</tool_call>"


class HermesParser(ToolParser):
    """``<tool_call>{json}</tool_call>`` blocks after optional content."""

    name = "hermes"
    markers = (START, END)

    def parse(self, text: str, final: bool) -> Parse:
        k = text.find(START)
        if k < 0:
            keep = 0 if final else held_suffix(text, START)
            return Parse(text[: len(text) - keep])
        result = Parse(text[:k])
        pos = k
        try:
            while pos >= 0:
                i = skip_ws(text, pos + len(START))
                if i >= len(text):
                    break
                call, end = scan_call(text, i)
                result.calls.append(call)
                if end is None:
                    break
                after = skip_ws(text, end)
                if text.startswith(END, after):
                    after += len(END)
                pos = text.find(START, after)
        except JsonSyntaxError:
            result.valid = False
        return result
