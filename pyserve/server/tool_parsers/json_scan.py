"""A tolerant scanner for JSON that is still being generated.

The tool parsers see the model's text grow token by token. They need to know, for a prefix of a
JSON document, which object members are complete and where a member's value starts, without
waiting for the closing brace. ``value_end`` and ``scan_object`` answer that; nothing here
builds Python values except for complete member values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

_WS = " \t\n\r"
_SCALAR_END = ",}] \t\n\r"


class JsonSyntaxError(ValueError):
    """The text cannot be the start of the expected JSON value."""


def skip_ws(text: str, i: int) -> int:
    """The first index at or after ``i`` that is not JSON whitespace."""
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _string_end(text: str, i: int) -> int | None:
    """End (exclusive) of the string starting at ``text[i] == '"'``; None if unterminated."""
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


def value_end(text: str, i: int) -> int | None:
    """End (exclusive) of the JSON value starting at ``i``; None while it is incomplete.

    NOTE: a number or literal at the very end of the text counts as incomplete (``12`` may yet
    become ``123``). Raises JsonSyntaxError when ``text[i]`` cannot start a value.
    """
    if i >= len(text):
        return None
    c = text[i]
    if c == '"':
        return _string_end(text, i)
    if c in "{[":
        depth, j = 0, i
        while j < len(text):
            c = text[j]
            if c == '"':
                end = _string_end(text, j)
                if end is None:
                    return None
                j = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    if c in "-0123456789tfn":
        j = i
        while j < len(text) and text[j] not in _SCALAR_END:
            j += 1
        return j if j < len(text) else None
    raise JsonSyntaxError(f"unexpected {c!r} at offset {i}")


@dataclass
class ObjectScan:
    """Members of a (possibly incomplete) JSON object.

    ``members`` maps each key whose value has started to ``(start, end)``; ``end`` is None
    while that value is incomplete. ``end`` is the index after ``}`` once the object is closed.
    """

    members: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    end: int | None = None


def scan_object(text: str, i: int) -> ObjectScan:
    """Scans the object that starts at ``text[i] == '{'`` as far as the text goes."""
    if i >= len(text) or text[i] != "{":
        raise JsonSyntaxError(f"expected '{{' at offset {i}")
    scan = ObjectScan()
    j = skip_ws(text, i + 1)
    if j < len(text) and text[j] == "}":
        scan.end = j + 1
        return scan
    while j < len(text):
        if text[j] != '"':
            raise JsonSyntaxError(f"expected a key at offset {j}")
        key_end = _string_end(text, j)
        if key_end is None:
            return scan
        key = json.loads(text[j:key_end])
        j = skip_ws(text, key_end)
        if j >= len(text):
            return scan
        if text[j] != ":":
            raise JsonSyntaxError(f"expected ':' at offset {j}")
        start = skip_ws(text, j + 1)
        if start >= len(text):
            return scan
        end = value_end(text, start)
        scan.members[key] = (start, end)
        if end is None:
            return scan
        j = skip_ws(text, end)
        if j >= len(text):
            return scan
        if text[j] == "}":
            scan.end = j + 1
            return scan
        if text[j] != ",":
            raise JsonSyntaxError(f"expected ',' or '}}' at offset {j}")
        j = skip_ws(text, j + 1)
    return scan
