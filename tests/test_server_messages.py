"""/v1/messages (Anthropic Messages) with the official anthropic client: text, streaming
events, tool_use / tool_result blocks, count_tokens and cache_read_input_tokens."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import tiny_async_engine, wait_server_idle
from scripted_engine import ScriptedClient

anthropic = pytest.importorskip("anthropic")

from pyserve.server.app import build_app  # noqa: E402
from pyserve.server.runner import ServerThread  # noqa: E402

MODEL = "builtin:tiny"
ARGS = {"city": "Paris", "days": [1, 2]}
CALL = "<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": ARGS}) + "\n</tool_call>"
TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                      {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                       "input": ARGS}]},  # fmt: skip
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                  "content": "sunny, 21 C"}]},  # fmt: skip
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real():
    with ServerThread(build_app(tiny_async_engine(max_model_len=1024))) as srv:
        yield srv, anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def scripted():
    engine = ScriptedClient(["Let me see. " + CALL])
    with ServerThread(build_app(engine)) as srv:
        yield engine, anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)


def test_text_message_usage_and_count_tokens(real):
    _, client = real
    kw = dict(model=MODEL, system="Answer briefly.", messages=HISTORY[:1])
    greedy = {"extra_body": {"temperature": 0.0}}  # the 2.x client dropped the argument
    count = client.messages.count_tokens(**kw).input_tokens
    m = client.messages.create(max_tokens=6, **greedy, **kw)
    assert m.type == "message" and m.role == "assistant" and m.content[0].type == "text"
    assert m.stop_reason in ("end_turn", "max_tokens")
    u = m.usage
    assert u.input_tokens + u.cache_read_input_tokens == count and u.output_tokens <= 6
    again = client.messages.create(max_tokens=6, **greedy, **kw)
    assert again.usage.cache_read_input_tokens > 0 and again.content == m.content


def test_stream_events_build_the_same_message(real):
    _, client = real
    kw = dict(model=MODEL, max_tokens=8, extra_body={"temperature": 0.0}, messages=HISTORY[:1])
    whole = client.messages.create(**kw)
    with client.messages.stream(**kw) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "message_delta" in kinds
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason


def test_stop_sequence_is_reported(real):
    _, client = real
    greedy = {"temperature": 0.0}
    text = client.messages.create(model=MODEL, max_tokens=12, extra_body=greedy,
                                  messages=HISTORY[:1]).content[0].text  # fmt: skip
    stop = text[3:5]
    m = client.messages.create(model=MODEL, max_tokens=12, extra_body=greedy, messages=HISTORY[:1],
                               stop_sequences=[stop])  # fmt: skip
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert m.content[0].text == text[: text.index(stop)]


def test_tool_history_reaches_the_template(real):
    srv, client = real
    with_tools = client.messages.count_tokens(model=MODEL, messages=HISTORY, tools=TOOLS)
    without = client.messages.count_tokens(model=MODEL, messages=HISTORY[:1])
    assert with_tools.input_tokens > without.input_tokens + 20
    from pyserve.model.tokenizer import load_tokenizer

    hf = load_tokenizer(MODEL).hf
    chat = [HISTORY[0],
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": ARGS}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "name": "get_weather",
             "content": "sunny, 21 C"}]  # fmt: skip
    tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                               "parameters": t["input_schema"]}} for t in TOOLS]
    text = hf.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=True)
    assert with_tools.input_tokens == len(hf.encode(text, add_special_tokens=False))


def test_tool_use_blocks(scripted):
    engine, client = scripted
    m = client.messages.create(model=MODEL, max_tokens=200, messages=HISTORY[:1], tools=TOOLS,
                               extra_headers={"X-Session-ID": "claude-1"})  # fmt: skip
    assert m.stop_reason == "tool_use"
    assert [b.type for b in m.content] == ["text", "tool_use"]
    assert m.content[0].text == "Let me see." and m.content[1].input == ARGS
    assert m.content[1].id.startswith("toolu_") and "claude-1" in engine.coming_back
    with client.messages.stream(model=MODEL, max_tokens=200, messages=HISTORY[:1],
                                tools=TOOLS) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[1].input == ARGS
    assert final.content[0].text == "Let me see. "


BAD = {
    "tool_result from the assistant": ([{"role": "assistant", "content": HISTORY[2]["content"]}],
                                       {}),  # fmt: skip
    "unknown tool_use_id": ([HISTORY[0], HISTORY[2]], {}),
    "image block": ([{"role": "user", "content": [{"type": "image", "source": {}}]}], {}),
    "tool_choice unknown tool": (HISTORY[:1], {"tools": TOOLS, "tool_choice": {
        "type": "tool", "name": "nope"}}),  # fmt: skip
    "thinking": (HISTORY[:1], {"thinking": {"type": "enabled", "budget_tokens": 1024}}),
    "output format": (HISTORY[:1], {"output_config": {"format": {"type": "json_schema"}}}),
    "bad session id": (HISTORY[:1], {"session_id": "bad id!"}),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_messages_get_400(real, name):
    srv, _ = real
    messages, extra = BAD[name]
    body = {"model": MODEL, "max_tokens": 4, "messages": messages, **extra}
    r = httpx.post(srv.url + "/v1/messages", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"], r.text
    wait_server_idle(srv.url, 10)
