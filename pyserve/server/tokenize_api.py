"""``POST /tokenize`` and ``POST /detokenize`` as vLLM has them (outside ``/v1``).

``/tokenize`` takes a ``prompt`` or chat ``messages`` (rendered with the chat template, tools
included) and answers ``{count, max_model_len, tokens, token_strs}``; ``/detokenize`` takes
``tokens`` and answers ``{prompt}``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel, Field, model_validator

from pyserve.server.errors import bad_request
from pyserve.server.protocol import ChatMessage
from pyserve.server.strict import StrictModel
from pyserve.server.tools import ToolDef, template_messages, template_tools

TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]


class TokenizeRequest(StrictModel):
    """Exactly one of ``prompt`` and ``messages``."""

    model: str | None = Field(None, max_length=1024)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    tools: list[ToolDef] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt and messages")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(StrictModel):
    model: str | None = Field(None, max_length=1024)
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


def add_tokenize_routes(app: FastAPI, state) -> None:
    tok = state.client.tokenizer

    @app.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(body: TokenizeRequest):
        if body.model is not None:
            state.check_model(body.model)
        if body.prompt is not None:
            ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens is not False)
        else:
            if body.add_special_tokens:
                raise bad_request("add_special_tokens applies to prompt; the chat template adds "
                                  "its own", param="add_special_tokens")  # fmt: skip
            try:
                ids = tok.apply_chat_template(template_messages(body.messages),
                                              add_generation_prompt=body.add_generation_prompt,
                                              tools=template_tools(body.tools))  # fmt: skip
            except ValueError as exc:
                raise bad_request(f"cannot render the chat: {exc}", param="messages") from None
        strs = [state.token_text(t) for t in ids] if body.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=state.client.max_model_len,
                                tokens=ids, token_strs=strs)  # fmt: skip

    @app.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(body: DetokenizeRequest):
        if body.model is not None:
            state.check_model(body.model)
        vocab = getattr(tok, "vocab_size", None)
        if vocab is not None and any(t >= vocab for t in body.tokens):
            raise bad_request(f"token ids must be below the vocabulary size {vocab}",
                              param="tokens")  # fmt: skip
        return DetokenizeResponse(prompt=tok.decode(body.tokens))
