"""Prompt tokenization for the server, bounded and off the event loop.

A prompt text is first checked against a cheap lower bound of its token count: no token covers
more than ``max_token_chars`` characters, so a text of ``L`` characters has at least
``L / max_token_chars`` tokens; one that cannot fit the context gets its 400 before any
tokenization. Texts that pass are tokenized (and chats rendered) in a worker thread, so a long
prompt never stalls the event loop (the Rust tokenizer releases the GIL while it works).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pyserve.server.errors import bad_request

MAX_TOKEN_ID = 2**31  # int32; the engine checks the model's real vocabulary
# NOTE: normalizers may merge a few characters (NFC composition); the slack keeps the bound safe.
BOUND_SLACK = 2


def max_token_chars(tokenizer: Any) -> int | None:
    """The longest token text in the vocabulary (characters), or None if it cannot be read."""
    hf = getattr(tokenizer, "hf", None)
    vocab = getattr(hf, "get_vocab", None)
    if vocab is None:
        return None
    try:
        return max((len(t) for t in vocab()), default=None)
    except (TypeError, ValueError):
        return None


def too_long(prompt_len: int, max_model_len: int, param: str = "prompt"):
    """The 400 for a prompt that leaves no room to generate."""
    return bad_request(f"this model's maximum context length is {max_model_len} tokens, but "
                       f"the prompt has {prompt_len} tokens", param=param,
                       code="context_length_exceeded")  # fmt: skip


class PromptEncoder:
    """Turns request prompts into token ids: bounded first, then tokenized in a thread."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        chars = max_token_chars(tokenizer)
        # NOTE: None disables the pre-check (the engine still rejects over-long prompts).
        self.max_chars = None if chars is None else BOUND_SLACK * max(chars, 1) * max_model_len

    def check_text_length(self, chars: int, param: str) -> None:
        """400 when a text of ``chars`` characters must exceed the context (no tokenizing)."""
        if self.max_chars is not None and chars > self.max_chars:
            raise bad_request(f"this model's maximum context length is {self.max_model_len} "
                              f"tokens; a {chars}-character text cannot fit it", param=param,
                              code="context_length_exceeded")  # fmt: skip

    async def encode(self, text: str, param: str = "prompt") -> list[int]:
        """Token ids of one prompt text."""
        self.check_text_length(len(text), param)
        return await asyncio.to_thread(self.tokenizer.encode, text)

    async def chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of a rendered chat; 400 naming ``messages`` when it cannot be rendered."""
        self.check_text_length(sum(len(m["content"]) for m in messages), "messages")
        try:
            return await asyncio.to_thread(self.tokenizer.apply_chat_template, messages)
        except ValueError as exc:
            raise bad_request(f"cannot render the chat: {exc}", param="messages") from None

    async def completion_prompts(self, prompt: Any) -> list[list[int]]:
        """The prompts of a completions request as token-id lists (one per prompt)."""
        if isinstance(prompt, str):
            prompt = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        out = []
        for p in prompt:
            if isinstance(p, str):
                ids = await self.encode(p)
            else:
                if len(p) >= self.max_model_len:
                    raise too_long(len(p), self.max_model_len)
                if not all(0 <= t < MAX_TOKEN_ID for t in p):
                    raise bad_request(f"prompt token ids must be in [0, {MAX_TOKEN_ID})",
                                      param="prompt")  # fmt: skip
                ids = list(p)
            if not ids:
                raise bad_request("prompt is empty", param="prompt")
            out.append(ids)
        return out
