"""Builds completion / chat responses and their SSE stream chunks from engine outputs.

NOTE: JSON out of here never holds NaN or infinities: logprobs are clamped to
``LOGPROB_FLOOR`` (-9999.0, OpenAI's value for an impossible token) and every encoder runs with
``allow_nan=False``, so a NaN that slipped through is an error, never invalid JSON.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.responses import Response

from pyserve.engine.outputs import RequestOutput, TokenLogprob
from pyserve.server.errors import OpenAIError
from pyserve.server.protocol import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    PromptTokensDetails,
    TopLogprob,
    Usage,
)
from pyserve.server.serving import Job

DONE = "data: [DONE]\n\n"
LOGPROB_FLOOR = -9999.0


def finite_logprob(value: float) -> float:
    """``value`` clamped to ``[LOGPROB_FLOOR, 0]``; ValueError for NaN."""
    if math.isnan(value):
        raise ValueError("a logprob is NaN")
    return min(0.0, max(LOGPROB_FLOOR, value))


def dumps(obj: Any) -> str:
    """Compact JSON that refuses NaN and infinities (ValueError)."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


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
        res.token_logprobs.append(finite_logprob(lp.logprob))
        res.top_logprobs.append({text(t): finite_logprob(v) for t, v in lp.top.items()})
        res.text_offset.append(offset)
        offset += len(tok)
    return res


def prompt_logprobs_lists(out: RequestOutput, k: int, text: TokenText) -> CompletionLogprobs:
    """The prompt part of echoed legacy logprobs: every prompt token, None as the first token's
    logprob and alternatives, the ``k`` most likely alternatives (rank <= k) for the rest."""
    res = CompletionLogprobs()
    offset = 0
    for token_id, entry in zip(out.prompt_token_ids, out.prompt_logprobs or ()):
        tok = text(token_id)
        res.tokens.append(tok)
        res.text_offset.append(offset)
        offset += len(tok)
        if entry is None:
            res.token_logprobs.append(None)
            res.top_logprobs.append(None)
            continue
        res.token_logprobs.append(finite_logprob(entry[token_id].logprob))
        top: dict[str, float] = {}
        for t, lp in sorted(entry.items(), key=lambda item: item[1].rank):
            if lp.rank <= k:  # NOTE: two tokens may read alike; the likelier one keeps the key
                top.setdefault(text(t), finite_logprob(lp.logprob))
        res.top_logprobs.append(top)
    return res


def completion_chunk(job: Job, model: str, created: int, index: int, out: RequestOutput,
                     text: TokenText, head: str = "", prompt_k: int | None = None
                     ) -> dict | None:  # fmt: skip
    """One stream chunk for one output (None when it adds nothing visible). ``head`` is the
    echoed prompt (first chunk of a choice); with ``prompt_k`` its logprobs lead the chunk's."""
    delta = head + out.delta_text
    reason = _finish_reason(out)
    if not delta and reason is None and not out.delta_token_ids:
        return None
    lps = None
    if out.logprobs is not None and out.delta_token_ids:
        res = completion_logprobs(out.logprobs[-len(out.delta_token_ids) :], text, len(head))
        if head and prompt_k is not None:
            res = join_logprobs(prompt_logprobs_lists(out, prompt_k, text), res)
        lps = res.model_dump()
    choice = {"index": index, "text": delta, "logprobs": lps, "finish_reason": reason}
    return {"id": job.id, "object": "text_completion", "created": created, "model": model,
            "choices": [choice]}  # fmt: skip


# -- chat -----------------------------------------------------------------------------------------
def chat_logprobs(lps: Sequence[TokenLogprob], text: TokenText) -> ChatLogprobs:
    """Chat-format logprobs: one entry per token with its top alternatives."""
    content = []
    for lp in lps:
        tok = text(lp.token_id)
        top = [TopLogprob(token=text(t), logprob=finite_logprob(v), bytes=_bytes(text(t)))
               for t, v in lp.top.items()]  # fmt: skip
        content.append(ChatTokenLogprob(token=tok, logprob=finite_logprob(lp.logprob),
                                        bytes=_bytes(tok), top_logprobs=top))  # fmt: skip
    return ChatLogprobs(content=content)


def _bytes(text: str) -> list[int]:
    # NOTE: a token decoded alone may be half of a surrogate-free multibyte character: "replace".
    return list(text.encode("utf-8", "replace"))


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
                yield f"data: {dumps({**data, **usage_field})}\n\n"
        if include_usage:
            outs = [last[i] for i in sorted(last)]
            final = {"id": job.id, "object": object_name, "created": created, "model": model,
                     "choices": [], "usage": usage(job.prompts, outs, job.n).model_dump()}  # fmt: skip
            yield f"data: {dumps(final)}\n\n"
    except (OpenAIError, ValueError) as exc:
        if isinstance(exc, ValueError):  # e.g. a NaN the encoder refused: the server's fault
            exc = OpenAIError(500, f"cannot encode the output: {exc}", code="internal_error")
        job.metrics.observe_error(exc.status)
        job.on_outcome("rejected")
        yield exc.sse()
    finally:
        job.close()
    yield DONE


# -- large answers --------------------------------------------------------------------------------
class JSONBytesResponse(Response):
    """A response whose body is JSON text rendered already (by :func:`json_response`)."""

    media_type = "application/json"


# NOTE: the non-streaming answers are rendered as JSON text piece by piece (one small json.dumps
# per token) in a worker thread: each GIL-holding C call is short, so the event loop keeps
# answering while a 40 MB answer is built. Their shape is CompletionResponse /
# ChatCompletionResponse (the routes' response models).
def _top_json(lp: TokenLogprob, text: TokenText) -> str:
    tops = [{"token": text(t), "logprob": finite_logprob(v), "bytes": _bytes(text(t))}
            for t, v in lp.top.items()]  # fmt: skip
    tok = text(lp.token_id)
    return dumps({"token": tok, "logprob": finite_logprob(lp.logprob), "bytes": _bytes(tok),
                  "top_logprobs": tops})  # fmt: skip


def _head(job: Job, obj: str, model: str, outs: Sequence[RequestOutput]) -> str:
    """The response object up to its choices list, as JSON text without the closing brace."""
    head = {"id": job.id, "object": obj, "created": int(time.time()), "model": model,
            "usage": usage(job.prompts, outs, job.n).model_dump()}  # fmt: skip
    return dumps(head)[:-1]


def chat_json(job: Job, model: str, outs: list[RequestOutput], text: TokenText) -> bytes:
    """The non-streaming answer of /v1/chat/completions (JSON bytes)."""
    parts = []
    for i, out in enumerate(outs):
        lps = "null"
        if out.logprobs is not None:
            lps = '{"content":[' + ",".join(_top_json(lp, text) for lp in out.logprobs) + "]}"
        choice = {"index": i, "message": {"role": "assistant", "content": out.text},
                  "finish_reason": out.finish_reason}  # fmt: skip
        parts.append(dumps(choice)[:-1] + ',"logprobs":' + lps + "}")
    return (_head(job, "chat.completion", model, outs) + ',"choices":[' + ",".join(parts)
            + "]}").encode()  # fmt: skip


def _completion_lps_json(lps: Sequence[TokenLogprob], text: TokenText, offset: int,
                         prompt: CompletionLogprobs | None = None) -> str:  # fmt: skip
    res = completion_logprobs(lps, text, offset)
    if prompt is not None:
        res = join_logprobs(prompt, res)
    fields = []
    for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        items = ",".join(dumps(v) for v in getattr(res, name))
        fields.append(f'"{name}":[{items}]')
    return "{" + ",".join(fields) + "}"


def join_logprobs(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    """``a``'s entries followed by ``b``'s (echoed prompt, then the completion)."""
    return CompletionLogprobs(tokens=a.tokens + b.tokens,
                              token_logprobs=a.token_logprobs + b.token_logprobs,
                              top_logprobs=a.top_logprobs + b.top_logprobs,
                              text_offset=a.text_offset + b.text_offset)  # fmt: skip


def completion_json(job: Job, model: str, outs: list[RequestOutput], echo: Sequence[str] | None,
                    text: TokenText, prompt_k: int | None = None) -> bytes:  # fmt: skip
    """The non-streaming answer of /v1/completions (JSON bytes). ``prompt_k``: echo with
    logprobs, whose entries then cover the prompt tokens too."""
    parts = []
    for i, out in enumerate(outs):
        head = echo[i // job.n] if echo else ""
        prompt = (prompt_logprobs_lists(out, prompt_k, text)
                  if echo and prompt_k is not None else None)  # fmt: skip
        lps = ("null" if out.logprobs is None
               else _completion_lps_json(out.logprobs, text, len(head), prompt))  # fmt: skip
        choice = {"index": i, "text": head + out.text, "finish_reason": out.finish_reason}
        parts.append(dumps(choice)[:-1] + ',"logprobs":' + lps + "}")
    return (_head(job, "text_completion", model, outs) + ',"choices":[' + ",".join(parts)
            + "]}").encode()  # fmt: skip


async def json_response(build: Callable[..., bytes], *args: Any) -> Response:
    """``build(*args)`` (JSON bytes) run in a worker thread, off the event loop."""
    return JSONBytesResponse(await asyncio.to_thread(build, *args))
