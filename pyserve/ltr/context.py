"""What the ranker reads: the last user message plus the conversation that came before it.

A ranker input is either a plain prompt (``str``: no earlier turns) or a chat: a list of
``{"role": ..., "content": ...}`` messages (OpenAI style; ShareGPT's ``human``/``gpt`` roles are
accepted too) whose last user message is the prompt and whose earlier messages are its context.
:func:`split_input` turns both into a :class:`Turns`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt", "chatgpt")
N_CONTEXT_DENSE = 4
CONTEXT_CHARS = 4000  # NOTE: the context text is cut to this many characters before tokenizing


@dataclass(frozen=True)
class Turns:
    """One ranker input: ``prompt`` (the last user message) and the ``history`` before it.

    NOTE: ``history`` is oldest first, as ``(role, text)`` with role 'user' or 'assistant'.
    """

    prompt: str
    history: tuple[tuple[str, str], ...] = ()


def _role(role) -> str:
    if role in USER_ROLES:
        return "user"
    if role in ASSISTANT_ROLES:
        return "assistant"
    return "other"


def split_input(item) -> Turns:
    """A plain prompt or a chat (list of message dicts) as :class:`Turns`.

    Raises:
        TypeError: ``item`` is neither a string, a message list nor a ``Turns``.
        ValueError: a chat without any user message, or a message without string content.
    """
    if isinstance(item, Turns):
        return item
    if isinstance(item, str):
        return Turns(item)
    if not isinstance(item, Sequence) or not all(isinstance(m, Mapping) for m in item):
        raise TypeError(f"a ranker input is a str or a list of message dicts, got {type(item)}")
    turns = []
    for i, m in enumerate(item):
        content = m.get("content", m.get("value"))
        if not isinstance(content, str):
            raise ValueError(f"message {i} needs string content")
        turns.append((_role(m.get("role", m.get("from"))), content))
    last = max((i for i, (r, _) in enumerate(turns) if r == "user"), default=-1)
    if last < 0:
        raise ValueError("a chat input needs at least one user message")
    return Turns(turns[last][1], tuple(turns[:last]))


def context_text(history: tuple[tuple[str, str], ...], max_chars: int = CONTEXT_CHARS) -> str:
    """Earlier turns, most recent first, each as ``role: text``, cut to ``max_chars``.

    NOTE: most recent first so that truncating the tokenized text keeps the nearest turns.
    """
    parts, size = [], 0
    for role, text in reversed(history):
        parts.append(f"{role}: {text}")
        size += len(parts[-1])
        if size >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def context_features(history: tuple[tuple[str, str], ...]) -> np.ndarray:
    """Scaled sizes of the context (float32 [N_CONTEXT_DENSE]).

    Whether there is one, log words of the previous assistant reply, log number of earlier
    turns, log characters of all earlier turns.
    """
    prev = next((t for r, t in reversed(history) if r == "assistant"), "")
    return np.array(
        [
            1.0 if history else 0.0,
            np.log1p(len(prev.split())) / 10.0,
            np.log1p(len(history)) / 3.0,
            np.log1p(sum(len(t) for _, t in history)) / 10.0,
        ],
        dtype=np.float32,
    )
