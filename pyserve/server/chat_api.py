"""POST /v1/chat/completions: the chat template (with tools and tool history), sampling, and
the answer (plain text, or tool calls parsed by the model's format)."""

from __future__ import annotations

from fastapi import FastAPI, Request

from pyserve.server.chat_output import SpecialText, ToolChunks, tool_chat_response
from pyserve.server.errors import bad_request
from pyserve.server.protocol import ChatCompletionRequest, ChatCompletionResponse
from pyserve.server.responses import chat_chunk, chat_response
from pyserve.server.state import ServerState, answer, make_job
from pyserve.server.tool_choice import structured_for_tool_choice
from pyserve.server.tools import ToolPlan, template_messages, template_tools, tool_plan


def render_chat(state: ServerState, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """Prompt ids of a chat (and its tools) through the model's chat template; 400 if it fails."""
    try:
        return state.client.tokenizer.apply_chat_template(messages, tools=tools)
    except ValueError as exc:
        raise bad_request(f"cannot render the chat: {exc}", param="messages") from None


def chat_plan(state: ServerState, body) -> tuple[ToolPlan, dict]:
    """The request's tool plan and the SamplingParams overrides it needs."""
    plan = tool_plan(body.tools, body.tool_choice, body.parallel_tool_calls, state.tool_parser)
    overrides: dict = {}
    if plan.forced:
        overrides.update(structured_for_tool_choice(body.tools, body.tool_choice))
    return plan, overrides


def add_chat_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        state.check_model(body.model)
        for legacy, new in (("functions", "tools"), ("function_call", "tool_choice")):
            if getattr(body, legacy) is not None:
                raise bad_request(f"{legacy} is deprecated and not supported; use {new}",
                                  param=legacy)  # fmt: skip
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")
        plan, overrides = chat_plan(state, body)
        ids = render_chat(state, template_messages(body.messages), template_tools(body.tools))
        special = SpecialText(state.client.tokenizer, plan)
        overrides.update(special.overrides)
        max_tokens = body.max_completion_tokens or body.max_tokens
        lp = (body.top_logprobs or 0) if body.logprobs else None
        job = await make_job(state, body, request, "chatcmpl", [ids], max_tokens, lp, overrides)
        text = state.token_text
        if plan.parser is None:
            def chunk(index, out, first):
                return chat_chunk(job, body.model, 0, index, out, text, first)

            async def full():
                return chat_response(job, body.model, await job.collect(), text)
        else:
            chunk = ToolChunks(job, body.model, text, plan, special)

            async def full():
                outs = await job.collect()
                return tool_chat_response(job, body.model, outs, text, plan, special)

        return await answer(state, job, request, body, full, chunk, "chat.completion.chunk")
