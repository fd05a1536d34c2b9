"""OpenAI's ``response_format`` (``text``, ``json_object``, ``json_schema``) and its mapping onto
:class:`~pyserve.structured.StructuredOutputsParams`.

Every ``json_schema`` is enforced by a grammar, ``strict`` or not (as vLLM does); ``strict: true``
additionally closes every object to its listed properties (OpenAI's strict subset requires
``additionalProperties: false`` anyway). Bad or unsupported schemas get a 400 whose ``param``
names the field, e.g. ``response_format.json_schema.schema.properties.x.not``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pyserve.server.errors import bad_request
from pyserve.server.strict import StrictModel
from pyserve.structured import StructuredOutputError, StructuredOutputsParams

SCHEMA_PARAM = "response_format.json_schema.schema"


class JSONSchemaSpec(StrictModel):
    """``response_format.json_schema``."""

    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``json_schema`` is required when ``type`` is ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


class TextFormat(StrictModel):
    """The Responses API's ``text.format``: ``response_format`` flattened (``name``, ``schema``,
    ``strict`` and ``description`` sit next to ``type``)."""

    model_config = ConfigDict(populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None

    def dump(self) -> dict:
        """The format as a response echoes it."""
        return self.model_dump(by_alias=True, exclude_none=True)


def text_format_outputs(fmt: TextFormat | None) -> StructuredOutputsParams | None:
    """The constraint of a Responses request's ``text.format`` (None for ``text``); the same
    grammar path as ``response_format``, with 400s naming ``text.format...``."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.name is None:
        raise bad_request("text.format of type json_schema needs a name", param="text.format.name")
    try:
        if fmt.type == "json_object":
            return StructuredOutputsParams(json_object=True, param="text.format")
        schema = {} if fmt.schema_ is None else fmt.schema_  # NOTE: absent: any JSON value
        return StructuredOutputsParams(json=schema, disable_additional_properties=bool(fmt.strict),
                                       param="text.format.schema")  # fmt: skip
    except StructuredOutputError as exc:
        raise bad_request(str(exc), param=exc.param) from None


def structured_outputs(rf: ResponseFormat | None) -> StructuredOutputsParams | None:
    """The constraint of a request's ``response_format`` (None for ``text``); 400 if bad."""
    if rf is None or rf.type == "text":
        return None
    try:
        if rf.type == "json_object":
            return StructuredOutputsParams(json_object=True, param="response_format")
        spec = rf.json_schema
        if spec is None:
            raise bad_request("response_format of type json_schema needs a json_schema object",
                              param="response_format.json_schema")  # fmt: skip
        # NOTE: an absent schema means any JSON value.
        schema = {} if spec.schema_ is None else spec.schema_
        return StructuredOutputsParams(json=schema, disable_additional_properties=bool(spec.strict),
                                       param=SCHEMA_PARAM)  # fmt: skip
    except StructuredOutputError as exc:
        raise bad_request(str(exc), param=exc.param) from None
