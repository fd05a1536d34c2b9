"""Structured outputs: grammars (JSON schema, regex, choice, EBNF) compiled by xgrammar, a token
bitmask per batch row each step, and the tool-call grammars behind ``tool_choice``.

``StructuredOutputsParams`` and the schema checks are pure Python; xgrammar is imported only by
the compiler and the per-engine :class:`~pyserve.structured.manager.StructuredOutputManager`.
"""

from pyserve.structured.errors import StructuredOutputError
from pyserve.structured.params import StructuredOutputsParams
from pyserve.structured.tool_grammar import TOOL_CALL_FORMATS, tool_call_grammar

__all__ = [
    "StructuredOutputError",
    "StructuredOutputsParams",
    "TOOL_CALL_FORMATS",
    "tool_call_grammar",
]
