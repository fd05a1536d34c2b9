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
from pyserve.structured import StructuredOutputError, StructuredOutputsParams

SCHEMA_PARAM = "response_format.json_schema.schema"


class JSONSchemaSpec(BaseModel):
    """``response_format.json_schema``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``json_schema`` is required when ``type`` is ``json_schema``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


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
