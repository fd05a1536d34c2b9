"""POST /v1/responses (OpenAI Responses API): create, stream events, function tools and
``previous_response_id`` chains over :class:`~pyserve.server.responses_store.ResponseStore`.

A chain of responses is one program: the first response names (or makes) the program id, and
every response that continues it runs under the same id.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pyserve.engine.outputs import RequestOutput
from pyserve.server.chat_api import render_chat
from pyserve.server.chat_output import SpecialText, tool_message
from pyserve.server.errors import OpenAIError, bad_request
from pyserve.server.protocol import ChatMessage, SamplingFields
from pyserve.server.response_format import text_format_outputs
from pyserve.server.responses_protocol import (
    ResponsesRequest,
    chat_tools,
    input_messages,
    unsupported,
)
from pyserve.server.responses_store import ResponseStore
from pyserve.server.serving import Job
from pyserve.server.state import ServerState, answer, make_job
from pyserve.server.tool_choice import structured_for_tool_choice
from pyserve.server.tool_parsers.stream import ToolCall, ToolCallStream
from pyserve.server.tools import template_messages, template_tools, tool_plan


class _Call:
    """One Responses call: its id, history, plan and the program of its chain."""

    def __init__(self, state: ServerState, store: ResponseStore, body: ResponsesRequest) -> None:
        field = unsupported(body)
        if field is not None:
            raise bad_request(f"{field} is not supported by this server", param=field)
        self.id = f"resp_{uuid.uuid4().hex}"
        self.body = body
        self.created = int(time.time())
        prev = None
        if body.previous_response_id is not None:
            prev = store.get(body.previous_response_id)
            if prev is None:
                raise OpenAIError(404, f"no stored response {body.previous_response_id!r} (never "
                                  "stored, or expired)", param="previous_response_id")  # fmt: skip
        self.program_id = (prev.program_id if prev else body.program_id or body.session_id
                           or f"resp-{uuid.uuid4().hex[:16]}")  # fmt: skip
        self.history = (list(prev.history) if prev else []) + input_messages(body)
        tools, choice = chat_tools(body)
        self.plan = tool_plan(tools, choice, body.parallel_tool_calls, state.tool_parser)
        self.overrides = dict(structured_for_tool_choice(tools, choice)) if self.plan.forced else {}
        self.format = body.text.format if body.text and body.text.format else None
        so = text_format_outputs(self.format)
        if so is not None:
            if "structured_outputs" in self.overrides:
                raise bad_request("text.format cannot be combined with a forced tool_choice",
                                  param="text.format")  # fmt: skip
            self.overrides["structured_outputs"] = so
        rendered = template_messages([ChatMessage(**m) for m in self.history])
        self.ids = render_chat(state, rendered, template_tools(tools))
        self.special = SpecialText(state.client.tokenizer, self.plan)
        self.overrides.update(self.special.overrides)

    def fields(self) -> SamplingFields:
        b = self.body
        return SamplingFields(model=b.model, temperature=b.temperature, top_p=b.top_p,
                              stream=b.stream, priority=b.priority,
                              program_id=self.program_id)  # fmt: skip

    def output(self, text: str, calls: list[ToolCall]) -> list[dict]:
        items = []
        if text:
            items.append(_message_item(f"msg_{uuid.uuid4().hex[:24]}", text, "completed"))
        items += [_call_item(c, "completed") for c in calls]
        return items

    def response(self, job: Job, out: RequestOutput | None, items: list[dict], status: str) -> dict:
        b = self.body
        incomplete = out is not None and out.finish_reason == "length"
        resp = {"id": self.id, "object": "response", "created_at": self.created,
                "status": "incomplete" if incomplete and status == "completed" else status,
                "model": b.model, "output": items, "previous_response_id": b.previous_response_id,
                "instructions": b.instructions, "tools": [t.model_dump() for t in b.tools or ()],
                "tool_choice": _dump(b.tool_choice or "auto"),
                "parallel_tool_calls": b.parallel_tool_calls is not False,
                "temperature": b.temperature, "top_p": b.top_p,
                "max_output_tokens": b.max_output_tokens, "metadata": b.metadata or {},
                "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                "error": None, "store": b.store, "text": {"format": self.format.dump() if self.format else {"type": "text"}},
                "truncation": "disabled", "usage": None}  # fmt: skip
        if out is not None:
            cached, p, c = out.num_cached_tokens, len(job.prompts[0]), len(out.token_ids)
            resp["usage"] = {"input_tokens": p, "input_tokens_details": {"cached_tokens": cached},
                             "output_tokens": c,
                             "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": p + c}  # fmt: skip
        return resp

    def finish(self, store: ResponseStore, job: Job, text: str | None, calls: list[ToolCall]):
        if calls:
            job.mark_coming_back()
        if self.body.store:
            msg = {"role": "assistant", "content": text or ""}
            if calls:
                msg["tool_calls"] = [c.openai() for c in calls]
            store.put(self.id, [*self.history, msg], self.program_id)


def _dump(value):
    return value.model_dump() if hasattr(value, "model_dump") else value


def _message_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip


def _call_item(call: ToolCall, status: str) -> dict:
    return {"type": "function_call", "id": f"fc_{call.id}", "call_id": call.id,
            "name": call.name, "arguments": call.arguments, "status": status}  # fmt: skip


def add_responses_routes(app: FastAPI, state: ServerState) -> None:
    store = ResponseStore()
    app.state.response_store = store

    @app.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request):
        state.check_model(body.model)
        call = _Call(state, store, body)
        fields = call.fields()
        job = await make_job(state, fields, request, "resp", [call.ids], body.max_output_tokens,
                             None, call.overrides)  # fmt: skip

        async def full():
            out = (await job.collect())[0]
            content, calls = tool_message(call.plan, call.special.clean(out.text))
            call.finish(store, job, content, calls)
            return JSONResponse(call.response(job, out, call.output(content, calls), "completed"))

        def stream(job: Job) -> AsyncIterator[str]:
            return _events(call, store, job)

        return await answer(state, job, request, fields, full, None, "", stream=stream)


async def _events(call: _Call, store: ResponseStore, job: Job) -> AsyncIterator[str]:
    """The Responses stream of one primed job."""
    seq = iter(range(1 << 62))

    def event(kind: str, **data) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': next(seq), **data})}\n\n"  # noqa: E501

    items = _Items(call, event)
    try:
        yield event("response.created", response=call.response(job, None, [], "in_progress"))
        yield event("response.in_progress", response=call.response(job, None, [], "in_progress"))
        out = None
        async for _, out in job.outputs():
            for e in items.feed(call.special.clean(out.text), out.finished):
                yield e
        if out is None:
            return
        for e in items.close():
            yield e
        calls = items.stream.calls if items.stream else []
        call.finish(store, job, items.text or None, calls)
        done = call.response(job, out, items.done, "completed")
        yield event("response.completed", response=done)
    except OpenAIError as exc:
        job.metrics.observe_error(exc.status)
        yield event("error", code=exc.code, message=exc.message, param=exc.param)
    finally:
        job.close()


class _Items:
    """Output items of a streamed response: a message item for text, then function calls."""

    def __init__(self, call: _Call, event) -> None:
        self.stream = ToolCallStream(call.plan.parser, call.plan.parallel) if call.plan.parser \
            else None  # fmt: skip
        self.event = event
        self.text = ""
        self.msg_id: str | None = None
        self.done: list[dict] = []
        self.open_calls: dict[int, dict] = {}

    def feed(self, text: str, final: bool) -> list[str]:
        if self.stream is None:
            content, deltas = text[len(self.text) :], []
        else:
            content, deltas = self.stream.feed(text, final)
        ev = self.event
        events = []
        if content:
            if self.msg_id is None:
                self.msg_id = f"msg_{uuid.uuid4().hex[:24]}"
                events.append(ev("response.output_item.added", output_index=0,
                                 item=_message_item(self.msg_id, "", "in_progress") | {
                                     "content": []}))  # fmt: skip
                events.append(
                    ev(
                        "response.content_part.added",
                        item_id=self.msg_id,
                        output_index=0,
                        content_index=0,
                        part={"type": "output_text", "text": "", "annotations": []},
                    )
                )
            self.text += content
            events.append(ev("response.output_text.delta", item_id=self.msg_id, output_index=0,
                             content_index=0, delta=content, logprobs=[]))  # fmt: skip
        for d in deltas:
            if "id" in d:
                events += self._close_message()
                call = ToolCall(d["id"], d["function"]["name"], "")
                item = _call_item(call, "in_progress")
                self.open_calls[d["index"]] = item
                events.append(ev("response.output_item.added", output_index=self._index(d),
                                 item=dict(item)))  # fmt: skip
            args = d["function"].get("arguments")
            if args:
                item = self.open_calls[d["index"]]
                item["arguments"] += args
                events.append(
                    ev(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=self._index(d),
                        delta=args,
                    )
                )
        return events

    def _index(self, delta: dict) -> int:
        """Output index of a call: after the message item, if there is one."""
        return (self.msg_id is not None) + delta["index"]

    def _close_message(self) -> list[str]:
        if self.msg_id is None or any(i["type"] == "message" for i in self.done):
            return []
        ev, item = self.event, _message_item(self.msg_id, self.text, "completed")
        part = item["content"][0]
        self.done.append(item)
        return [ev("response.output_text.done", item_id=self.msg_id, output_index=0,
                   content_index=0, text=self.text, logprobs=[]),
                ev("response.content_part.done", item_id=self.msg_id, output_index=0,
                   content_index=0, part=part),
                ev("response.output_item.done", output_index=0, item=item)]  # fmt: skip

    def close(self) -> list[str]:
        events = self._close_message()
        for item in self.open_calls.values():
            item["status"] = "completed"
            index = len(self.done)
            self.done.append(item)
            events.append(self.event("response.function_call_arguments.done", item_id=item["id"],
                                     output_index=index, arguments=item["arguments"],
                                     name=item["name"]))  # fmt: skip
            events.append(self.event("response.output_item.done", output_index=index, item=item))
        return events
