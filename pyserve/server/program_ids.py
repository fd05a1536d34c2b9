"""The one rule for program (session) ids that clients send.

An id is 1..256 characters from ``A-Z a-z 0-9`` and ``- _ . : @ / + = ~``. ``/`` is allowed
(program routes take the id as a path), whitespace, control characters, ``%``, ``?`` and ``#``
are not, so an id reads the same in a body, a header and a URL path. Untagged calls are no
program in the table at all (the core keeps their one-call program inside the request), so no
client id can reach another request's program.
"""

from __future__ import annotations

import re

from pyserve.server.errors import bad_request

MAX_PROGRAM_ID_LEN = 256
PROGRAM_ID_CHARS = "A-Z a-z 0-9 - _ . : @ / + = ~"
_PROGRAM_ID = re.compile(rf"[A-Za-z0-9_.:@/+=~-]{{1,{MAX_PROGRAM_ID_LEN}}}")


def is_valid_program_id(value: object) -> bool:
    """Whether ``value`` is a string that is a valid program id."""
    return isinstance(value, str) and _PROGRAM_ID.fullmatch(value) is not None


def check_program_id(value: str, param: str = "program_id") -> str:
    """Returns ``value`` if it is a valid id; otherwise raises a 400 naming ``param``."""
    if not is_valid_program_id(value):
        shown = value[:64] + "..." if isinstance(value, str) and len(value) > 64 else value
        raise bad_request(f"invalid {param} {shown!r}: use 1 to {MAX_PROGRAM_ID_LEN} characters "
                          f"from {PROGRAM_ID_CHARS}", param=param,
                          code="invalid_program_id")  # fmt: skip
    return value
