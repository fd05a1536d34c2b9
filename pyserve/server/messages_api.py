"""POST /v1/messages (Anthropic Messages) and /v1/messages/count_tokens.

The request is translated to the chat completions history and tools, rendered by the same chat
template and sent through the same engine path; the answer becomes ``text`` and ``tool_use``
blocks, or the Messages stream events (message_start, content_block_start/delta/stop,
message_delta, message_stop). ``usage.cache_read_input_tokens`` counts prefix-cache hits.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pyserve.engine.outputs import RequestOutput
from pyserve.server.chat_api import render_chat
from pyserve.server.chat_output import SpecialText, tool_message
from pyserve.server.errors import OpenAIError, bad_request
from pyserve.server.messages_protocol import (
    CountTokensRequest,
    MessagesRequest,
    chat_messages,
    openai_tools,
)
from pyserve.server.protocol import ChatMessage, SamplingFields
from pyserve.server.serving import Job
from pyserve.server.state import ServerState, answer, make_job
from pyserve.server.tool_choice import structured_for_tool_choice
from pyserve.server.tool_parsers.stream import ToolCallStream
from pyserve.server.tools import ToolDef, ToolPlan, template_messages, template_tools, tool_plan

_STOP = {"length": "max_tokens", "abort": "end_turn"}


def _prepare(state: ServerState, body: CountTokensRequest) -> tuple[list[int], ToolPlan, dict]:
    """Prompt ids, tool plan and sampling overrides of a Messages request."""
    tools_raw, choice, parallel = openai_tools(body)
    tools = [ToolDef.model_validate(t) for t in tools_raw] if tools_raw else None
    plan = tool_plan(tools, choice, parallel, state.tool_parser)
    overrides: dict = {}
    if plan.forced:
        overrides.update(structured_for_tool_choice(tools, choice))
    history = template_messages([ChatMessage(**m) for m in chat_messages(body)])
    return render_chat(state, history, template_tools(tools)), plan, overrides


def _sampling(body: MessagesRequest) -> SamplingFields:
    fields = dict(model=body.model, temperature=body.temperature, top_p=body.top_p,
                  top_k=body.top_k, stop=body.stop_sequences, stream=body.stream,
                  include_stop_str_in_output=bool(body.stop_sequences), priority=body.priority,
                  program_id=body.program_id, session_id=body.session_id,
                  thread_id=body.thread_id)  # fmt: skip
    return SamplingFields(**fields)


def _split_stop(text: str, out: RequestOutput, stops: list[str] | None
                ) -> tuple[str, str | None, str | None]:  # fmt: skip
    """(text without a matched stop sequence, stop_reason, stop_sequence)."""
    for s in stops or ():
        if out.finish_reason == "stop" and text.endswith(s):
            return text[: -len(s)], "stop_sequence", s
    return text, _STOP.get(out.finish_reason or "", "end_turn"), None


def _usage(job: Job, out: RequestOutput) -> dict:
    cached = out.num_cached_tokens
    return {"input_tokens": len(job.prompts[0]) - cached, "output_tokens": len(out.token_ids),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}  # fmt: skip


def _tool_use(call) -> dict:
    return {"type": "tool_use", "id": f"toolu_{call.id}", "name": call.name,
            "input": json.loads(call.arguments)}  # fmt: skip


def add_messages_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/messages/count_tokens")
    async def count_tokens(body: CountTokensRequest):
        state.check_model(body.model)
        ids, _, _ = _prepare(state, body)
        return {"input_tokens": len(ids)}

    @app.post("/v1/messages")
    async def messages(body: MessagesRequest, request: Request):
        state.check_model(body.model)
        if body.thinking and body.thinking.get("type") != "disabled":
            raise bad_request("extended thinking is not supported", param="thinking")
        if body.output_config and body.output_config.get("format"):
            raise bad_request("structured output formats are not supported",
                              param="output_config.format")  # fmt: skip
        ids, plan, overrides = _prepare(state, body)
        special = SpecialText(state.client.tokenizer, plan)
        overrides.update(special.overrides)
        fields = _sampling(body)
        job = await make_job(state, fields, request, "msg", [ids], body.max_tokens, None,
                             overrides)  # fmt: skip
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"

        async def full():
            out = (await job.collect())[0]
            text, reason, stop_seq = _split_stop(special.clean(out.text), out, body.stop_sequences)
            content, calls = tool_message(plan, text)
            blocks = [{"type": "text", "text": content}] if content else []
            blocks += [_tool_use(c) for c in calls]
            if calls:
                reason = "tool_use"
                job.mark_coming_back()
            return JSONResponse({"id": msg_id, "type": "message", "role": "assistant",
                                 "model": body.model, "content": blocks, "stop_reason": reason,
                                 "stop_sequence": stop_seq, "usage": _usage(job, out)})  # fmt: skip

        def stream(job: Job) -> AsyncIterator[str]:
            return _events(job, msg_id, body, plan, special)

        return await answer(state, job, request, fields, full, None, "", stream=stream)


def _sse(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


async def _events(job: Job, msg_id: str, body: MessagesRequest, plan: ToolPlan,
                  special: SpecialText) -> AsyncIterator[str]:  # fmt: skip
    """The Messages stream of one primed job."""
    start = {"id": msg_id, "type": "message", "role": "assistant", "model": body.model,
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": len(job.prompts[0]), "output_tokens": 0}}  # fmt: skip
    blocks = _Blocks(plan)
    try:
        yield _sse("message_start", {"message": start})
        out = None
        async for _, out in job.outputs():
            text = special.clean(out.text)
            if out.finished:
                text = _split_stop(text, out, body.stop_sequences)[0]
            for event in blocks.feed(text, out.finished):
                yield event
        if out is None:
            return
        _, reason, stop_seq = _split_stop(special.clean(out.text), out, body.stop_sequences)
        if blocks.called:
            reason = "tool_use"
            job.mark_coming_back()
        for event in blocks.close():
            yield event
        usage = _usage(job, out)
        yield _sse("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": stop_seq},
                                     "usage": usage})  # fmt: skip
        yield _sse("message_stop", {})
    except OpenAIError as exc:
        job.metrics.observe_error(exc.status)
        yield _sse("error", {"error": {"type": exc.type, "message": exc.message}})
    finally:
        job.close()


class _Blocks:
    """Content blocks of a streamed answer: one text block, then one per tool call."""

    def __init__(self, plan: ToolPlan) -> None:
        self.stream = ToolCallStream(plan.parser, plan.parallel) if plan.parser else None
        self.sent = 0
        self.open: int | None = None  # index of the open block
        self.count = 0
        self.call_block: dict[int, int] = {}

    @property
    def called(self) -> bool:
        return self.stream is not None and self.stream.called

    def feed(self, text: str, final: bool) -> list[str]:
        if self.stream is None:
            content, calls = text[self.sent :], []
            self.sent = len(text)
        else:
            content, calls = self.stream.feed(text, final)
        events = []
        if content:
            if self.open is None:
                events += self._start({"type": "text", "text": ""})
            events.append(_sse("content_block_delta", {
                "index": self.open, "delta": {"type": "text_delta", "text": content}}))  # fmt: skip
        for d in calls:
            if "id" in d:
                events += self.close()
                self.call_block[d["index"]] = self.count
                events += self._start({"type": "tool_use", "id": f"toolu_{d['id']}",
                                       "name": d["function"]["name"], "input": {}})  # fmt: skip
            if d["function"].get("arguments"):
                events.append(_sse("content_block_delta", {
                    "index": self.call_block[d["index"]],
                    "delta": {"type": "input_json_delta",
                              "partial_json": d["function"]["arguments"]}}))  # fmt: skip
        return events

    def _start(self, block: dict) -> list[str]:
        self.open = self.count
        self.count += 1
        return [_sse("content_block_start", {"index": self.open, "content_block": block})]

    def close(self) -> list[str]:
        if self.open is None:
            return []
        index, self.open = self.open, None
        return [_sse("content_block_stop", {"index": index})]
