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
        {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [name]}, "parameters": schema},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }  # fmt: skip
        for name, schema in params.items()
    ]
    return {"type": "array", "minItems": 1, "items": {"anyOf": one_of}}


def structured_for_tool_choice(tools: list[Any], choice: Any) -> dict[str, Any]:
    """SamplingParams fields that force the answer into :func:`tool_choice_schema`: a JSON
    schema constraint (xgrammar), closed to the declared parameters. A 400 naming
    ``tool_choice`` when the schema cannot be enforced."""
    from pyserve.structured.params import StructuredOutputsParams

    schema = tool_choice_schema(tools, choice)
    try:
        constraint = StructuredOutputsParams(json=schema, disable_additional_properties=True,
                                             param="tool_choice")  # fmt: skip
    except ValueError as exc:
        raise bad_request(str(exc), param="tool_choice") from None
    return {"structured_outputs": constraint}
