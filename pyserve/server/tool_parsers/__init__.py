"""Tool-call parsers, one file per format, and how the server picks one.

``PARSERS`` maps ``--tool-call-parser`` names to classes; :func:`detect_parser` reads the
model's chat template for the format it renders tool calls in.
"""

from __future__ import annotations

from typing import Any

from pyserve.server.tool_parsers.base import Parse, PartialCall, ToolParser
from pyserve.server.tool_parsers.hermes import HermesParser
from pyserve.server.tool_parsers.llama3_json import Llama3JsonParser
from pyserve.server.tool_parsers.mistral import MistralParser

PARSERS: dict[str, type[ToolParser]] = {
    HermesParser.name: HermesParser,
    Llama3JsonParser.name: Llama3JsonParser,
    MistralParser.name: MistralParser,
}

# (substring of a chat template, parser): the first match wins.
_TEMPLATE_SIGNS = (
    ("<tool_call>", HermesParser),
    ("[TOOL_CALLS]", MistralParser),
    ("<|python_tag|>", Llama3JsonParser),
)

__all__ = ["PARSERS", "Parse", "PartialCall", "ToolParser", "detect_parser", "make_parser"]


def make_parser(name: str) -> ToolParser:
    """The parser called ``name``; ValueError naming the known ones otherwise."""
    if name not in PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; known: {', '.join(sorted(PARSERS))}")
    return PARSERS[name]()


def detect_parser(tokenizer: Any) -> ToolParser | None:
    """The parser for the format the tokenizer's chat template renders tool calls in."""
    template = getattr(getattr(tokenizer, "hf", tokenizer), "chat_template", None)
    if isinstance(template, dict):  # several named templates
        template = "\n".join(str(t) for t in template.values())
    if not isinstance(template, str):
        return None
    for sign, cls in _TEMPLATE_SIGNS:
        if sign in template:
            return cls()
    return None
