"""Forced tool choices (``tool_choice`` ``required`` or a named function) as JSON schemas.

A forced choice is kept by a grammar over the tool schemas, so even a random-weight model emits
a valid call. The output is plain JSON in the shapes of
:mod:`pyserve.server.tool_parsers.forced`; :func:`tool_choice_schema` is the schema of that
JSON, and :func:`structured_for_tool_choice` is the one place the request path asks for the
sampling constraint that enforces it.
"""

from __future__ import annotations

from typing import Any

from pyserve.server.errors import bad_request

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def tool_choice_schema(tools: list[Any], choice: Any) -> dict[str, Any]:
    """The JSON schema a forced answer follows.

    Named: the function's ``parameters`` (an object). ``required``: a non-empty array of
    ``{"name": N, "parameters": P}`` with one alternative per tool.
    """
    params = {t.function.name: t.function.parameters or _ANY_OBJECT for t in tools}
    if choice != "required":
        return params[choice.function.name]
    one_of = [
        {"type": "object",
         "properties": {"name": {"type": "string", "enum": [name]}, "parameters": schema},
         "required": ["name", "parameters"], "additionalProperties": False}  # fmt: skip
        for name, schema in params.items()
    ]
    return {"type": "array", "minItems": 1, "items": {"anyOf": one_of}}


def structured_for_tool_choice(tools: list[Any], choice: Any) -> dict[str, Any]:
    """SamplingParams fields that force the answer into :func:`tool_choice_schema`.

    NOTE: this build's sampler has no structured-output (grammar) support, so a forced choice
    cannot be honoured: it is refused with a 400 naming ``tool_choice`` instead of letting the
    model answer freely. With structured output, this returns the constraint for the schema.
    """
    tool_choice_schema(tools, choice)  # the schema must be buildable before anything else
    raise bad_request("tool_choice 'required' or a named function needs structured output "
                      "(grammar-constrained decoding), which this server does not support; "
                      "use tool_choice 'auto'", param="tool_choice")  # fmt: skip
