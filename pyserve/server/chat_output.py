"""Chat answers with tool calls: the final message and the streamed ``tool_calls`` deltas.

Without a tool plan the plain builders of :mod:`pyserve.server.responses` are used. With one,
each choice's text goes through the plan's parser: complete answers become ``message.tool_calls``
with ``finish_reason: "tool_calls"``; streams send content, then each call's id and name, then
argument fragments (see :class:`~pyserve.server.tool_parsers.stream.ToolCallStream`).
"""

from __future__ import annotations

from typing import Any

from pyserve.engine.outputs import RequestOutput
from pyserve.server.protocol import AssistantMessage, ChatChoice, ChatCompletionResponse
from pyserve.server.responses import TokenText, chat_logprobs, usage
from pyserve.server.serving import Job
from pyserve.server.tool_parsers.stream import ToolCall, ToolCallStream, final_calls
from pyserve.server.tools import ToolPlan


class SpecialText:
    """Keeps a format's markers visible when the tokenizer counts them as special tokens.

    ``overrides`` turns ``skip_special_tokens`` off for such formats; ``clean(text)`` then drops
    the other special tokens' text (end-of-turn markers and the like) from what is parsed.
    """

    def __init__(self, tokenizer: Any, plan: ToolPlan) -> None:
        hf = getattr(tokenizer, "hf", None)
        special = set(getattr(hf, "all_special_tokens", ()) or ())
        for tok in (getattr(hf, "added_tokens_decoder", None) or {}).values():
            if getattr(tok, "special", False):
                special.add(str(tok))
        markers = set(plan.parser.markers) if plan.parser else set()
        self.overrides = {"skip_special_tokens": False} if markers & special else {}
        self._drop = sorted(special - markers, key=len, reverse=True) if self.overrides else []

    def clean(self, text: str) -> str:
        for tok in self._drop:
            text = text.replace(tok, "")
        return text


def tool_message(plan: ToolPlan, text: str) -> tuple[str | None, list[ToolCall]]:
    """Content and tool calls of one complete answer."""
    if plan.parser is None:
        return text, []
    return final_calls(plan.parser, text, plan.parallel)


def tool_chat_response(job: Job, model: str, outs: list[RequestOutput], text: TokenText,
                       plan: ToolPlan, special: SpecialText) -> ChatCompletionResponse:  # fmt: skip
    """The non-streaming chat answer, tool calls parsed out of each choice."""
    choices = []
    for i, out in enumerate(outs):
        content, calls = tool_message(plan, special.clean(out.text))
        if calls:
            job.mark_coming_back()
        msg = AssistantMessage(content=content, tool_calls=[c.openai() for c in calls])
        choices.append(ChatChoice(
            index=i, message=msg, finish_reason="tool_calls" if calls else out.finish_reason,
            logprobs=chat_logprobs(out.logprobs, text) if out.logprobs is not None else None,
        ))  # fmt: skip
    return ChatCompletionResponse(id=job.id, model=model, choices=choices,
                                  usage=usage(job.prompts, outs, job.n))  # fmt: skip


class ToolChunks:
    """The chunk function of a streamed chat with a tool plan (one parser state per choice)."""

    def __init__(self, job: Job, model: str, text: TokenText, plan: ToolPlan,
                 special: SpecialText) -> None:  # fmt: skip
        self.job, self.model, self.text = job, model, text
        self.plan, self.special = plan, special
        self.streams: dict[int, ToolCallStream] = {}

    def __call__(self, index: int, out: RequestOutput, first: bool) -> dict | None:
        stream = self.streams.setdefault(index, ToolCallStream(self.plan.parser, self.plan.parallel))
        content, calls = stream.feed(self.special.clean(out.text), out.finished)
        reason = out.finish_reason if out.finished else None
        if out.finished and stream.called:
            reason = "tool_calls"
            self.job.mark_coming_back()
        if not (first or content or calls or reason or out.delta_token_ids):
            return None
        delta: dict = {"role": "assistant"} if first else {}
        if content or (first and not calls):
            delta["content"] = content
        if calls:
            delta["tool_calls"] = calls
        lps = None
        if out.logprobs is not None and out.delta_token_ids:
            lps = chat_logprobs(out.logprobs[-len(out.delta_token_ids) :], self.text).model_dump()
        choice = {"index": index, "delta": delta, "logprobs": lps, "finish_reason": reason}
        return {"id": self.job.id, "object": "chat.completion.chunk", "created": 0,
                "model": self.model, "choices": [choice]}  # fmt: skip
