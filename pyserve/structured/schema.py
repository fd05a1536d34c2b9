"""Checks a JSON schema before it is compiled: valid JSON Schema, and only features the grammar
can enforce (xgrammar silently ignores some keywords, e.g. ``not`` or ``multipleOf``; those are
rejected here so a schema is either honoured or refused, naming the field)."""

from __future__ import annotations

import json
from typing import Any

from pyserve.structured.errors import StructuredOutputError, first_line, require_xgrammar

MAX_SCHEMA_DEPTH = 64  # nested subschemas; deeper ones are refused (bounded recursion)

# NOTE: keywords that change what is valid but that the grammar cannot enforce.
UNSUPPORTED = {
    "not": "negation",
    "if": "conditional subschemas",
    "then": "conditional subschemas",
    "else": "conditional subschemas",
    "oneOf": "exclusive unions (use anyOf)",
    "patternProperties": "pattern-keyed properties",
    "propertyNames": "constraints on property names",
    "dependentRequired": "dependent requirements",
    "dependentSchemas": "dependent schemas",
    "dependencies": "dependent schemas",
    "unevaluatedItems": "unevaluatedItems",
    "additionalItems": "additionalItems",
    "contains": "contains",
    "minContains": "contains",
    "maxContains": "contains",
    "uniqueItems": "unique array items",
    "multipleOf": "multipleOf",
    "minProperties": "property counts",
    "maxProperties": "property counts",
    "$dynamicRef": "dynamic references",
    "$recursiveRef": "recursive references",
}
FORMATS = frozenset(
    "date date-time time duration email idn-email hostname idn-hostname ipv4 ipv6 uuid uri "
    "uri-reference iri iri-reference uri-template json-pointer relative-json-pointer".split()
)
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "allOf", "prefixItems")
_SCHEMA_ONES = ("additionalProperties", "items", "unevaluatedProperties")


def load_schema(schema: Any, param: str) -> dict | bool:
    """The schema as a dict (or bool): parses a JSON string, takes a pydantic model's schema."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise StructuredOutputError(f"not valid JSON: {exc}", param) from None
    elif isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    if not isinstance(schema, (dict, bool)):
        raise StructuredOutputError("a JSON schema must be an object", param)
    return schema


def check_json_schema(schema: dict | bool, param: str) -> None:
    """Raises :class:`StructuredOutputError` (a ValueError) naming the first bad field."""
    if _depth(schema) > 2 * MAX_SCHEMA_DEPTH:
        raise StructuredOutputError(f"nested deeper than {2 * MAX_SCHEMA_DEPTH} levels", param)
    _check_meta(schema, param)
    _walk(schema, param, 0)
    xgr = require_xgrammar()
    try:
        xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    except (RuntimeError, ValueError) as exc:
        raise StructuredOutputError(f"cannot be compiled: {first_line(exc)}", param) from None


def _check_meta(schema: dict | bool, param: str) -> None:
    """Validates against the JSON Schema 2020-12 meta-schema (jsonschema)."""
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - jsonschema is in the serve and dev extras
        raise ValueError(
            "JSON schema outputs need jsonschema: pip install 'pyserve[serve]'"
        ) from exc
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    errors = sorted(cls(cls.META_SCHEMA).iter_errors(schema), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        raise StructuredOutputError(f"invalid JSON schema: {err.message}", _join(param, err.path))


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value (iterative, so a deep value cannot blow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _walk(node: Any, path: str, depth: int) -> None:
    if not isinstance(node, dict):
        return  # booleans; anything else was refused by the meta-schema
    if depth > MAX_SCHEMA_DEPTH:
        raise StructuredOutputError(f"nested deeper than {MAX_SCHEMA_DEPTH} levels", path)
    for key, what in UNSUPPORTED.items():
        if key in node:
            raise StructuredOutputError(f"{what} ({key!r}) is not supported", f"{path}.{key}")
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
        # NOTE: xgrammar 0.2.9 does not intersect allOf branches; one branch is just that schema.
        raise StructuredOutputError("allOf with more than one schema is not supported",
                                    f"{path}.allOf")  # fmt: skip
    if "pattern" in node and ("minLength" in node or "maxLength" in node):
        # NOTE: xgrammar drops the length bounds of a string that also has a pattern.
        raise StructuredOutputError("pattern together with minLength/maxLength is not supported: "
                                    "put the length in the pattern", f"{path}.pattern")  # fmt: skip
    fmt = node.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise StructuredOutputError(
            f"format {fmt!r} is not supported; supported: {', '.join(sorted(FORMATS))}",
            f"{path}.format",
        )
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            for name, sub in node[key].items():
                _walk(sub, f"{path}.{key}.{name}", depth + 1)
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            for i, sub in enumerate(node[key]):
                _walk(sub, f"{path}.{key}[{i}]", depth + 1)
    for key in _SCHEMA_ONES:
        if isinstance(node.get(key), dict):
            _walk(node[key], f"{path}.{key}", depth + 1)


def _join(param: str, path) -> str:
    out = param
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def map_subschemas(schema: Any, fn) -> Any:
    """A copy of ``schema`` with ``fn`` applied bottom-up to it and every nested subschema."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: map_subschemas(v, fn) for k, v in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [map_subschemas(v, fn) for v in out[key]]
    for key in _SCHEMA_ONES:
        if isinstance(out.get(key), dict):
            out[key] = map_subschemas(out[key], fn)
    return fn(out)


# NOTE: JSON string characters without escapes: no control characters, quote, backslash, or
# UTF-16 surrogates (which are not valid UTF-8 and would not decode).
_PLAIN_CHAR = '[^\\u0000-\\u001f"\\\\\\ud800-\\udfff]'


def bound_strings(node: dict) -> dict:
    """Rewrites a length-bounded string as the equivalent pattern of plain characters.

    NOTE: xgrammar 0.2.9 compiles ``minLength``/``maxLength`` to a character class that admits
    control characters (invalid JSON) and surrogates; the pattern keeps the bound and excludes
    them (its strings are a subset of the schema's, so outputs stay valid).
    """
    if node.get("type") != "string" or "pattern" in node or "format" in node:
        return node
    if "minLength" not in node and "maxLength" not in node:
        return node
    low, high = node.pop("minLength", 0), node.pop("maxLength", "")
    node["pattern"] = f"^{_PLAIN_CHAR}{{{low},{high}}}$"
    return node
