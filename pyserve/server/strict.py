"""The base of every request model: an unknown field is a 400 naming it, never ignored.

The project rule is that a request field is either honoured or rejected; a field that no model
declares is refused by pydantic (``extra_forbidden``), and
:func:`pyserve.server.errors.install_error_handlers` answers it with a 400 whose ``param`` is the
field's path (``messages.2.foo``). Fields that official clients send but this server cannot act on
are declared with :func:`only`, which accepts just the values it honours (the field table is in
``docs/server.md``).
"""

from __future__ import annotations

import functools
import operator
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Tag


class StrictModel(BaseModel):
    """A request model (or a part of one) that forbids undeclared fields."""

    model_config = ConfigDict(extra="forbid")


def only(*allowed: Any, why: str) -> AfterValidator:
    """Accepts a field only at ``allowed`` values (those this server honours); any other value is
    a 400 naming the field and saying ``why``."""

    def check(value: Any) -> Any:
        if not any(value == a and type(value) is type(a) for a in allowed):
            shown = " or ".join("null" if a is None else repr(a) for a in allowed)
            raise ValueError(f"only {shown} is supported: {why}")
        return value

    return AfterValidator(check)


def tagged(*models: type[BaseModel], default: str | None = None) -> Any:
    """A union of models told apart by their ``type`` field (``default`` when absent).

    NOTE: the tags are the class names, so an error's location reads ``input.0.foo`` after
    ``pyserve.server.errors`` drops the capitalised union member, and a body is checked
    against its own member only (no misleading errors from the other members).
    """
    by_type = {_literal(m): m.__name__ for m in models}

    def pick(value: Any) -> str | None:
        kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", "")
        return by_type.get(kind) if isinstance(kind, str) else None

    expected = ", ".join(repr(k) for k in by_type)
    members = tuple(Annotated[m, Tag(m.__name__)] for m in models)
    return Annotated[
        functools.reduce(operator.or_, members),
        Discriminator(pick, custom_error_type="unsupported_type",
                      custom_error_message=f"unsupported type; expected one of {expected}"),
    ]  # fmt: skip


def _literal(model: type[BaseModel]) -> str:
    """The value of the ``Literal`` that types a model's ``type`` field."""
    return model.model_fields["type"].annotation.__args__[0]

