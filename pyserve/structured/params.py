"""``StructuredOutputsParams``: what a request's output must match (vLLM's names and fields)."""

from __future__ import annotations

import json as _json
from dataclasses import InitVar, dataclass
from typing import Any

from pyserve.structured.errors import StructuredOutputError, first_line, require_xgrammar
from pyserve.structured.schema import check_json_schema, load_schema

KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
MAX_CHOICES = 1024


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one constraint, checked on construction (a ValueError names the bad field).

    - ``json``: a JSON schema (dict, JSON string or pydantic model class); the output is one JSON
      value valid against it.
    - ``regex``: the output matches the regular expression (xgrammar's dialect).
    - ``choice``: the output is exactly one of these strings.
    - ``grammar``: an EBNF grammar (xgrammar / GBNF syntax) with a ``root`` rule.
    - ``json_object``: the output is one JSON object (any keys).
    - ``structural_tag``: an xgrammar structural tag (dict or JSON string), e.g. from
      :func:`~pyserve.structured.tool_grammar.tool_call_grammar`.

    ``disable_any_whitespace`` (default True, unlike vLLM): JSON is written on one line with the
    separators ``", "`` and ``": "`` and no other whitespace, like OpenAI's structured outputs;
    with False whitespace between JSON tokens is free but capped at ``MAX_WHITESPACE`` (16)
    characters per gap, so a model cannot ramble blanks forever.
    ``disable_additional_properties``: objects hold only the properties their schema lists
    (what OpenAI's ``strict: true`` means); otherwise a schema's own ``additionalProperties``
    (default: allowed) applies. ``param``: the field name used in errors (the server passes
    e.g. ``response_format.json_schema.schema``).
    """

    json: Any = None
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: dict | str | None = None
    disable_any_whitespace: bool = True
    disable_additional_properties: bool = False
    param: InitVar[str | None] = None

    def __post_init__(self, param: str | None) -> None:
        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise StructuredOutputError(
                f"exactly one of {', '.join(KINDS)} must be set, got {given or 'none'}",
                param or "structured_outputs",
            )
        name = param or f"structured_outputs.{given[0]}"
        if self.json is not None:
            schema = load_schema(self.json, name)
            check_json_schema(schema, name)
            object.__setattr__(self, "json", schema)
        elif self.choice is not None:
            object.__setattr__(self, "choice", _check_choice(self.choice, name))
        elif self.json_object is not None:
            if self.json_object is not True:
                raise StructuredOutputError("must be true when set", name)
        elif self.structural_tag is not None:
            object.__setattr__(self, "structural_tag", _check_tag(self.structural_tag, name))
        else:
            _check_text(self.regex if self.regex is not None else self.grammar, self.kind, name)

    @property
    def kind(self) -> str:
        """Which constraint is set: one of ``KINDS``."""
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    def __hash__(self) -> int:  # NOTE: a schema dict is unhashable; its canonical key is not
        return hash(self.key())

    def key(self) -> tuple:
        """The compiled-grammar cache key: the canonical constraint plus the options."""
        value = getattr(self, self.kind)
        if self.kind in ("json", "structural_tag"):
            value = _json.dumps(value, sort_keys=True, separators=(",", ":"))
        return (self.kind, value, self.disable_any_whitespace, self.disable_additional_properties)


def _check_choice(choice: Any, name: str) -> tuple[str, ...]:
    if isinstance(choice, str) or not isinstance(choice, (list, tuple)):
        raise StructuredOutputError("must be a list of strings", name)
    if not 0 < len(choice) <= MAX_CHOICES:
        raise StructuredOutputError(f"must hold 1 to {MAX_CHOICES} strings", name)
    for i, c in enumerate(choice):
        if not isinstance(c, str) or not c:
            raise StructuredOutputError("entries must be non-empty strings", f"{name}[{i}]")
    return tuple(choice)


def _check_text(text: Any, kind: str, name: str) -> None:
    """A regex or EBNF grammar that xgrammar parses."""
    if not isinstance(text, str) or not text:
        raise StructuredOutputError("must be a non-empty string", name)
    xgr = require_xgrammar()
    try:
        if kind == "regex":
            xgr.Grammar.from_regex(text)
        else:
            xgr.Grammar.from_ebnf(text)
    except (RuntimeError, ValueError) as exc:
        raise StructuredOutputError(f"cannot be compiled: {first_line(exc)}", name) from None


def _check_tag(tag: Any, name: str) -> dict:
    """A structural tag that xgrammar accepts, as a dict."""
    if isinstance(tag, str):
        try:
            tag = _json.loads(tag)
        except _json.JSONDecodeError as exc:
            raise StructuredOutputError(f"not valid JSON: {exc}", name) from None
    if not isinstance(tag, dict):
        raise StructuredOutputError("must be a JSON object", name)
    xgr = require_xgrammar()
    try:
        xgr.Grammar.from_structural_tag(tag)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise StructuredOutputError(f"cannot be compiled: {first_line(exc)}", name) from None
    return tag
