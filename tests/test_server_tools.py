"""Tool calling in /v1/chat/completions with the official openai client.

A scripted engine (tests/scripted_engine.py) answers with tool calls so the parsing, the ids and
the streamed ``tool_calls`` deltas can be checked; the real tiny engine checks that tools and
tool history reach the chat template as Hugging Face renders it, and that bad input gets a 400
naming the field with no KV block left in use.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from conftest import tiny_async_engine, wait_server_idle
from scripted_engine import ScriptedClient

openai = pytest.importorskip("openai")

from pyserve.server.app import build_app  # noqa: E402
from pyserve.server.runner import ServerThread  # noqa: E402

MODEL = "builtin:tiny"
ARGS = {"city": "Paris", "days": [1, 2], "note": "a \"quoted\" } brace"}
CALL = "<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": ARGS}) + "\n</tool_call>"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]  # fmt: skip
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}]},  # fmt: skip
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scripted():
    engine = ScriptedClient(["Let me look.\n" + CALL + "\n" + CALL.replace("Paris", "Oslo")])
    with ServerThread(build_app(engine)) as srv:
        yield engine, openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def engine():
    return tiny_async_engine(max_model_len=1024)


@pytest.fixture(scope="module")
def real(engine):
    with ServerThread(build_app(engine)) as srv:
        yield srv, openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


def test_tool_calls_are_parsed(scripted):
    engine, client = scripted
    r = client.chat.completions.create(model=MODEL, messages=HISTORY[:1], tools=TOOLS,
                                       extra_body={"session_id": "s-tools"})  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look."
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert json.loads(calls[0].function.arguments) == ARGS
    assert json.loads(calls[1].function.arguments)["city"] == "Oslo"
    assert calls[0].id != calls[1].id and all(c.id.startswith("call_") for c in calls)
    assert engine.program_ids[-1] == "s-tools" and "s-tools" in engine.coming_back


@pytest.mark.parametrize("per_step", [1, 4, 50])
def test_streamed_tool_call_deltas_join_into_json(scripted, per_step):
    engine, client = scripted
    engine.tokens_per_step = per_step
    chunks = list(client.chat.completions.create(model=MODEL, messages=HISTORY[:1], tools=TOOLS,
                                                 stream=True, parallel_tool_calls=False))
    content, calls, reasons = "", {}, []
    for chunk in chunks:
        d = chunk.choices[0].delta
        content += d.content or ""
        reasons.append(chunk.choices[0].finish_reason)
        for tc in d.tool_calls or ():
            if tc.id is not None:
                assert tc.index not in calls and tc.function.name == "get_weather"
                calls[tc.index] = {"id": tc.id, "args": ""}
            calls[tc.index]["args"] += tc.function.arguments or ""
    assert list(calls) == [0]  # parallel_tool_calls=False: the first call only
    assert json.loads(calls[0]["args"]) == ARGS
    assert content.strip() == "Let me look." and reasons[-1] == "tool_calls"


def test_tool_choice_none_leaves_text(scripted):
    _, client = scripted
    r = client.chat.completions.create(model=MODEL, messages=HISTORY[:1], tools=TOOLS,
                                       tool_choice="none")  # fmt: skip
    assert r.choices[0].message.tool_calls is None or r.choices[0].message.tool_calls == []
    assert "<tool_call>" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_tools_and_history_render_as_the_template_says(real):
    srv, client = real
    from pyserve.model.tokenizer import load_tokenizer

    hf = load_tokenizer(MODEL).hf
    history = json.loads(json.dumps(HISTORY))
    history[1]["tool_calls"][0]["function"]["arguments"] = ARGS  # templates take objects
    history[2]["name"] = "get_weather"
    text = hf.apply_chat_template(history, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert '"name": "get_weather"' in text and '"tool_call_id": "call_1"' in text
    assert "<tools>" in text and "sunny, 21 C" in text
    ref = hf.encode(text, add_special_tokens=False)
    tok = httpx.post(srv.url + "/tokenize", json={"messages": HISTORY, "tools": TOOLS}).json()
    assert tok["tokens"] == ref
    r = client.chat.completions.create(model=MODEL, messages=HISTORY, tools=TOOLS, max_tokens=2)
    assert r.usage.prompt_tokens == len(ref)
    plain = client.chat.completions.create(model=MODEL, messages=HISTORY[:1], max_tokens=2)
    assert plain.usage.prompt_tokens < r.usage.prompt_tokens


BAD = {
    "tool_choice without tools": ({"tool_choice": "auto"}, "tool_choice"),
    "unknown named tool": ({"tools": TOOLS, "tool_choice": {"type": "function",
                                                             "function": {"name": "nope"}}},
                           "tool_choice"),  # fmt: skip
    "bad tool type": ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    "bad tool name": ({"tools": [{"type": "function", "function": {"name": "a b"}}]},
                      "tools.0.function.name"),  # fmt: skip
    "duplicate tools": ({"tools": TOOLS * 2}, "tools"),
    "tool_choice string": ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    "orphan tool message": ({"messages": [HISTORY[0], HISTORY[2]]}, "messages.1.tool_call_id"),
    "tool message without id": ({"messages": [HISTORY[0], {"role": "tool", "content": "x"}]},
                                "messages.1.tool_call_id"),  # fmt: skip
    "arguments not json": ({"messages": [HISTORY[0], {**HISTORY[1], "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
        "messages.1.tool_calls.0.function.arguments"),  # fmt: skip
    "session id conflict": ({"program_id": "a", "session_id": "b"}, "session_id"),
    "legacy functions": ({"functions": [{"name": "f"}]}, "functions"),
    "legacy function_call": ({"function_call": "auto"}, "function_call"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_tool_fields_get_400_naming_them(real, name):
    srv, _ = real
    extra, param = BAD[name]
    body = {"model": MODEL, "messages": HISTORY[:1], "max_tokens": 4, **extra}
    r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    wait_server_idle(srv.url, 10)


def test_unseen_program_starts_implicitly_and_aliases(real):
    srv, client = real
    r = client.chat.completions.create(model=MODEL, messages=HISTORY[:1], max_tokens=2,
                                       extra_body={"program_id": "implicit-1"})  # fmt: skip
    assert r.choices[0].finish_reason in ("stop", "length")
    client.chat.completions.create(model=MODEL, messages=HISTORY[:1], max_tokens=2,
                                   extra_headers={"X-Session-ID": "implicit-2"})  # fmt: skip
    for pid in ("implicit-1", "implicit-2"):
        assert httpx.delete(f"{srv.url}/v1/programs/{pid}").status_code == 200
    assert httpx.delete(f"{srv.url}/v1/programs/implicit-1").status_code == 404
    wait_server_idle(srv.url, 10)


def test_cached_tokens_in_usage(real):
    _, client = real
    messages = [{"role": "user", "content": "The cache keeps blocks of keys and values " * 6}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens


def test_model_card_tokenize_detokenize(real):
    srv, client = real
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other-model")
    r = httpx.post(srv.url + "/tokenize", json={"prompt": "The scheduler", "return_token_strs": True})
    body = r.json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"]) > 0
    assert "".join(body["token_strs"]).replace("Ġ", " ") == "The scheduler"
    back = httpx.post(srv.url + "/detokenize", json={"tokens": body["tokens"]}).json()
    assert back == {"prompt": "The scheduler"}
    assert httpx.post(srv.url + "/detokenize", json={"tokens": [10**6]}).status_code == 400
    assert httpx.post(srv.url + "/tokenize", json={}).status_code == 400


def test_async_engine_marks_coming_back(real, engine):
    srv, client = real
    client.chat.completions.create(model=MODEL, messages=HISTORY[:1], max_tokens=2,
                                   extra_body={"session_id": "back-1"})  # fmt: skip
    wait_server_idle(srv.url, 10)
    assert asyncio.run(engine.mark_coming_back("back-1"))
    assert engine.engine.program_info("back-1")["coming_back"]
    assert not asyncio.run(engine.mark_coming_back("never-started"))
    client.chat.completions.create(model=MODEL, messages=HISTORY[:1], max_tokens=2,
                                   extra_headers={"X-Session-ID": "back-1"})  # fmt: skip
    wait_server_idle(srv.url, 10)
    assert not engine.engine.program_info("back-1")["coming_back"]  # the next call cleared it


def test_coming_back_reaches_the_core_program_table():
    from pyserve import _core

    table = _core.ProgramTable()
    assert not table.mark_coming_back("p")  # unknown
    table.start("p", 0.0)
    assert not table.coming_back("p") and table.mark_coming_back("p")
    assert table.coming_back("p") and table.info("p")["coming_back"]
    _core.program_call_arrived(table, "p", 1.0)  # the next call clears the mark
    assert not table.coming_back("p")
