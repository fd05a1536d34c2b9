"""Tokenizer loading, incremental (streaming) detokenization and stop-string matching."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPLACEMENT = "\ufffd"  # what decode() yields for an incomplete UTF-8 sequence


class Tokenizer:
    """A model folder's tokenizer (via ``transformers.AutoTokenizer``, local files only)."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load a tokenizer from {str(path)!r}: {exc}") from exc
        self.eos_token_id: int | None = self.hf.eos_token_id
        self.all_special_ids = frozenset(self.hf.all_special_ids)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``."""
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of a chat rendered with the folder's chat template.

        ``tools`` (OpenAI function-tool dicts) reach the template as ``tools``; a template that
        refuses the chat (``raise_exception``) or fails to render raises ValueError.
        """
        from jinja2 import TemplateError

        if not getattr(self.hf, "chat_template", None):
            raise ValueError("this tokenizer has no chat template")
        extra = {"tools": tools} if tools else {}
        try:
            text = self.hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
            )
        except TemplateError as exc:
            raise ValueError(f"the chat template failed: {exc}") from None
        return self.encode(text, add_special_tokens=False)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer of a model folder or ``builtin:<name>``."""
    from pyserve.model.loader import resolve_model_path

    return Tokenizer(resolve_model_path(path))


class IncrementalDetokenizer:
    """Turns a growing list of output ids into text deltas for streaming.

    Decodes a short window of recent ids twice (with and without the newest ones) and emits the
    difference, so multi-token characters and tokenizers that drop leading spaces are handled.
    NOTE: the window starts with the prompt's last few ids so the first delta has its context.
    """

    CONTEXT = 5

    def __init__(
        self, tokenizer: Any, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-self.CONTEXT :])
        self._prefix = 0
        self._read = len(self._ids)
        self.text = ""

    def add(self, token_id: int) -> str:
        """Append one id; return the newly completed text (maybe empty)."""
        self._ids.append(int(token_id))
        decode = self.tokenizer.decode
        head = decode(self._ids[self._prefix : self._read], self.skip_special_tokens)
        full = decode(self._ids[self._prefix :], self.skip_special_tokens)
        if full.endswith(_REPLACEMENT) or len(full) <= len(head):
            return ""  # an incomplete character (or nothing visible) so far
        delta = full[len(head) :]
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > 4 * self.CONTEXT:  # keep the window short
            self._ids = self._ids[self._prefix :]
            self._read -= self._prefix
            self._prefix = 0
        self.text += delta
        return delta


class StopStringMatcher:
    """Finds stop strings in streamed text, holding back text that may start one.

    ``process(delta)`` returns ``(text_to_emit, stopped)``; after a stop nothing more is emitted.
    ``flush()`` returns the held-back text when generation ends without a stop string.
    """

    def __init__(self, stops: Sequence[str], include_stop_str: bool = False) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self.stops = tuple(stops)
        self.include_stop_str = include_stop_str
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None

    def process(self, delta: str) -> tuple[str, bool]:
        """Feed new text; return what can be shown now and whether a stop string was hit."""
        if self.stopped:
            return "", True
        buf = self._pending + delta
        hit = min(((buf.find(s), s) for s in self.stops if s in buf), default=None)
        if hit is not None:
            idx, stop = hit
            self.stopped, self.matched, self._pending = True, stop, ""
            return buf[: idx + (len(stop) if self.include_stop_str else 0)], True
        keep = self._held_suffix(buf)
        self._pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """Release the held-back text (call once when the request finishes otherwise)."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out
