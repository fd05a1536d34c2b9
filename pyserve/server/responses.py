"""Builds completion / chat responses and their SSE stream chunks from engine outputs."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from pyserve.engine.outputs import RequestOutput, TokenLogprob
from pyserve.server.errors import OpenAIError
from pyserve.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    PromptTokensDetails,
    TopLogprob,
    Usage,
)
from pyserve.server.serving import Job

DONE = "data: [DONE]\n\n"


class TokenText:
    """Token id -> text for logprobs (memoised; special tokens kept visible)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            if len(self._cache) < 65536:
                self._cache[token_id] = text
        return text


def usage(prompts: Sequence[list[int]], outs: Sequence[RequestOutput], n: int = 1) -> Usage:
    """Token counts: each prompt once, every choice's output; ``cached_tokens`` are the prompt
    tokens served from the prefix cache (``n`` choices per prompt, counted for the first)."""
    p = sum(len(ids) for ids in prompts)
    c = sum(len(o.token_ids) for o in outs)
    cached = sum(o.num_cached_tokens for i, o in enumerate(outs) if i % n == 0)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))  # fmt: skip


def _finish_reason(out: RequestOutput) -> str | None:
    return out.finish_reason if out.finished else None


# -- completions ----------------------------------------------------------------------------------
def completion_logprobs(lps: Sequence[TokenLogprob], text: TokenText, offset: int = 0
                        ) -> CompletionLogprobs:  # fmt: skip
    """Legacy parallel-list logprobs; ``offset`` is the text offset of the first token."""
    res = CompletionLogprobs()
    for lp in lps:
        tok = text(lp.token_id)
        res.tokens.append(tok)
        res.token_logprobs.append(lp.logprob)
        res.top_logprobs.append({text(t): v for t, v in lp.top.items()})
        res.text_offset.append(offset)
        offset += len(tok)
    return res


def completion_response(job: Job, model: str, outs: list[RequestOutput], echo: Sequence[str] | None,
                        text: TokenText) -> CompletionResponse:  # fmt: skip
    """The non-streaming answer of /v1/completions."""
    choices = []
    for i, out in enumerate(outs):
        head = echo[i // job.n] if echo else ""
        lps = (completion_logprobs(out.logprobs, text, len(head))
               if out.logprobs is not None else None)  # fmt: skip
        choices.append(CompletionChoice(index=i, text=head + out.text, logprobs=lps,
                                        finish_reason=out.finish_reason))  # fmt: skip
    return CompletionResponse(
        id=job.id, model=model, choices=choices, usage=usage(job.prompts, outs, job.n)
    )


def completion_chunk(job: Job, model: str, created: int, index: int, out: RequestOutput,
                     text: TokenText, head: str = "") -> dict | None:  # fmt: skip
    """One stream chunk for one output (None when it adds nothing visible)."""
    delta = head + out.delta_text
    reason = _finish_reason(out)
    if not delta and reason is None and not out.delta_token_ids:
        return None
    lps = None
    if out.logprobs is not None and out.delta_token_ids:
        lps = completion_logprobs(out.logprobs[-len(out.delta_token_ids) :], text).model_dump()
    choice = {"index": index, "text": delta, "logprobs": lps, "finish_reason": reason}
    return {"id": job.id, "object": "text_completion", "created": created, "model": model,
            "choices": [choice]}  # fmt: skip


# -- chat -----------------------------------------------------------------------------------------
def chat_logprobs(lps: Sequence[TokenLogprob], text: TokenText) -> ChatLogprobs:
    """Chat-format logprobs: one entry per token with its top alternatives."""
    content = []
    for lp in lps:
        tok = text(lp.token_id)
        top = [TopLogprob(token=text(t), logprob=v, bytes=list(text(t).encode()))
               for t, v in lp.top.items()]  # fmt: skip
        content.append(ChatTokenLogprob(token=tok, logprob=lp.logprob, bytes=list(tok.encode()),
                                        top_logprobs=top))  # fmt: skip
    return ChatLogprobs(content=content)


def chat_response(job: Job, model: str, outs: list[RequestOutput], text: TokenText
                  ) -> ChatCompletionResponse:  # fmt: skip
    """The non-streaming answer of /v1/chat/completions."""
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=out.text),
            logprobs=chat_logprobs(out.logprobs, text) if out.logprobs is not None else None,
            finish_reason=out.finish_reason,
        )  # fmt: skip
        for i, out in enumerate(outs)
    ]
    return ChatCompletionResponse(id=job.id, model=model, choices=choices,
                                  usage=usage(job.prompts, outs, job.n))  # fmt: skip


def chat_chunk(job: Job, model: str, created: int, index: int, out: RequestOutput,
               text: TokenText, first: bool) -> dict | None:  # fmt: skip
    """One chat stream chunk; the first of each choice carries the assistant role."""
    reason = _finish_reason(out)
    if not first and not out.delta_text and reason is None and not out.delta_token_ids:
        return None
    delta: dict = {"role": "assistant"} if first else {}
    if out.delta_text or first:
        delta["content"] = out.delta_text
    lps = None
    if out.logprobs is not None and out.delta_token_ids:
        lps = chat_logprobs(out.logprobs[-len(out.delta_token_ids) :], text).model_dump()
    choice = {"index": index, "delta": delta, "logprobs": lps, "finish_reason": reason}
    return {"id": job.id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [choice]}  # fmt: skip


# -- SSE ------------------------------------------------------------------------------------------
ChunkFn = Callable[[int, RequestOutput, bool], dict | None]


async def sse_stream(job: Job, chunk: ChunkFn, include_usage: bool, model: str,
                     object_name: str) -> AsyncIterator[str]:  # fmt: skip
    """Server-sent events for a job: chunks, the optional usage chunk, then ``[DONE]``.

    NOTE: the caller primed the job. Cleanup is synchronous (``job.close()``) because a
    disconnect cancels this generator and any await in its ``finally`` would be cancelled too.
    """
    created = int(time.time())
    seen: set[int] = set()
    last: dict[int, RequestOutput] = {}
    usage_field = {"usage": None} if include_usage else {}
    try:
        async for index, out in job.outputs():
            data = chunk(index, out, index not in seen)
            seen.add(index)
            last[index] = out
            if data is not None:
                data["created"] = created
                yield f"data: {json.dumps({**data, **usage_field})}\n\n"
        if include_usage:
            outs = [last[i] for i in sorted(last)]
            final = {"id": job.id, "object": object_name, "created": created, "model": model,
                     "choices": [], "usage": usage(job.prompts, outs, job.n).model_dump()}  # fmt: skip
            yield f"data: {json.dumps(final)}\n\n"
    except OpenAIError as exc:
        job.metrics.observe_error(exc.status)
        yield exc.sse()
    finally:
        job.close()
    yield DONE
