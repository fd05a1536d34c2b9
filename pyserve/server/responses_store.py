"""In-memory store of Responses API answers for ``previous_response_id`` (bounded, with a TTL).

Each entry keeps the whole chat history up to and including that response's output, and the
program id of its chain (a chain of responses is one program).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_RESPONSES = 4096
DEFAULT_TTL_S = 3600.0


@dataclass
class StoredResponse:
    """What a follow-up response needs: the history (chat messages) and the chain's program."""

    history: list[dict]
    program_id: str
    created: float


class ResponseStore:
    """``response id -> StoredResponse``; the oldest entries go first when full or expired."""

    def __init__(self, max_entries: int = DEFAULT_MAX_RESPONSES,
                 ttl_s: float = DEFAULT_TTL_S, clock=time.monotonic) -> None:  # fmt: skip
        if max_entries < 1 or not ttl_s > 0:
            raise ValueError("a response store needs max_entries >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, history: list[dict], program_id: str) -> None:
        """Stores a response (evicting the oldest entry when the store is full)."""
        self._expire()
        self._items[response_id] = StoredResponse(history, program_id, self.clock())
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None when unknown or expired."""
        self._expire()
        return self._items.get(response_id)

    def _expire(self) -> None:
        limit = self.clock() - self.ttl_s
        while self._items:
            oldest = next(iter(self._items.values()))
            if oldest.created > limit:
                break
            self._items.popitem(last=False)
