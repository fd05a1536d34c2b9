"""What every tool-call parser shares: the partial call, the parse result and the call scanner.

A parser turns the model's output text (complete or still growing) into the visible content and
a list of :class:`PartialCall`. Arguments are kept as the model wrote them (a raw JSON slice), so
the fragments a stream sends join into exactly the final ``arguments`` string.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pyserve.server.tool_parsers.json_scan import JsonSyntaxError, scan_object, skip_ws

ARGUMENT_KEYS = ("arguments", "parameters")


@dataclass
class PartialCall:
    """One tool call as far as the text goes.

    ``arguments`` is the raw JSON text of the arguments object so far (a prefix of the final
    text while ``done`` is False). ``streamable`` is False when the model wrote the arguments as
    a JSON string, which can only be decoded once complete.
    """

    name: str | None = None
    arguments: str = ""
    streamable: bool = True
    done: bool = False


@dataclass
class Parse:
    """``content``: text safe to show (a held-back suffix may start a marker while not final);
    ``calls``: the calls found; ``valid``: False when the tool-call text is malformed."""

    content: str
    calls: list[PartialCall] = field(default_factory=list)
    valid: bool = True


class ToolParser(ABC):
    """Base class: subclasses implement :meth:`parse` for one model family's format."""

    name = ""
    #: marker strings the format needs in the text (kept visible even if they are special tokens)
    markers: tuple[str, ...] = ()

    @abstractmethod
    def parse(self, text: str, final: bool) -> Parse:
        """Content and calls of ``text``; ``final`` says the text is complete."""

    def new_id(self) -> str:
        """A fresh tool-call id."""
        return f"call_{uuid.uuid4().hex[:24]}"


def held_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def scan_call(text: str, i: int, name: str | None = None) -> tuple[PartialCall, int | None]:
    """The call object ``{"name": ..., "arguments"|"parameters": {...}}`` at ``text[i]``.

    Returns the call and the index after its closing brace (None while open). With ``name`` the
    object is the arguments themselves (a named ``tool_choice``). Raises JsonSyntaxError.
    """
    scan = scan_object(text, i)
    if name is not None:
        end = scan.end
        return PartialCall(name, text[i : end if end is not None else len(text)],
                           done=end is not None), end  # fmt: skip
    call = PartialCall()
    if "name" in scan.members:
        start, end = scan.members["name"]
        if end is not None:
            value = json.loads(text[start:end])
            if not isinstance(value, str) or not value:
                raise JsonSyntaxError("a tool call's name must be a non-empty string")
            call.name = value
    key = next((k for k in ARGUMENT_KEYS if k in scan.members), None)
    if key is not None:
        start, end = scan.members[key]
        call.arguments = text[start : end if end is not None else len(text)]
        if text[start] == '"':
            call.streamable = False
            if end is not None:
                call.arguments = json.loads(call.arguments)
        elif text[start] != "{":
            raise JsonSyntaxError("a tool call's arguments must be a JSON object")
    if scan.end is not None:
        if call.name is None:
            raise JsonSyntaxError("a tool call needs a name")
        call.arguments = call.arguments or "{}"
        _check_arguments(call.arguments)
        call.done = True
    return call, scan.end


def scan_call_list(text: str, i: int, sep: str) -> tuple[list[PartialCall], int | None]:
    """Calls ``{...} sep {...} ...`` starting at ``i``; for ``sep=","`` inside ``[ ... ]``.

    Returns the calls and the index after the list (None while it may go on).
    """
    calls: list[PartialCall] = []
    j = i
    while True:
        j = skip_ws(text, j)
        if j >= len(text):
            return calls, None
        call, end = scan_call(text, j)
        calls.append(call)
        if end is None:
            return calls, None
        j = skip_ws(text, end)
        if j >= len(text):
            return calls, None
        if text[j] != sep:
            return calls, j
        j += 1


def _check_arguments(raw: str) -> None:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise JsonSyntaxError(f"tool-call arguments are not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise JsonSyntaxError("tool-call arguments must be a JSON object")
