"""/v1/responses with the official openai client's Responses API: create, stream events,
function calls and their outputs, and previous_response_id chains (one program per chain)."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import tiny_async_engine, wait_server_idle
from scripted_engine import ScriptedClient

openai = pytest.importorskip("openai")

from pyserve.server.app import build_app  # noqa: E402
from pyserve.server.responses_store import ResponseStore  # noqa: E402
from pyserve.server.runner import ServerThread  # noqa: E402

MODEL = "builtin:tiny"
ARGS = {"city": "Paris"}
CALL = "<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": ARGS}) + "\n</tool_call>"
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real():
    with ServerThread(build_app(tiny_async_engine(max_model_len=1024))) as srv:
        yield srv, openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def scripted():
    engine = ScriptedClient([CALL, "It is sunny in Paris."])
    with ServerThread(build_app(engine)) as srv:
        yield engine, openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


def test_create_and_chain(real):
    srv, client = real
    r1 = client.responses.create(model=MODEL, input="Tell me about the river.",
                                 instructions="Be brief.", max_output_tokens=5, temperature=0.0)
    assert r1.object == "response" and r1.output[0].type == "message"
    assert isinstance(r1.output_text, str) and r1.usage.output_tokens <= 5
    r2 = client.responses.create(model=MODEL, input="And then?", previous_response_id=r1.id,
                                 max_output_tokens=5, temperature=0.0)  # fmt: skip
    # the chain's history (instructions, first input, first output) is in the second prompt
    assert r2.usage.input_tokens > r1.usage.input_tokens + r1.usage.output_tokens
    assert r2.usage.input_tokens_details.cached_tokens > 0  # the chain's prefix was cached
    assert r2.previous_response_id == r1.id
    wait_server_idle(srv.url, 10)


def test_stream_events(real):
    _, client = real
    kw = dict(model=MODEL, input="Tell me about the river.", max_output_tokens=6, temperature=0.0)
    whole = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == events[-1].response.output_text


def test_function_call_then_output(scripted):
    engine, client = scripted
    r1 = client.responses.create(model=MODEL, input="Weather in Paris?", tools=TOOLS)
    call = r1.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == ARGS
    r2 = client.responses.create(model=MODEL, previous_response_id=r1.id, tools=TOOLS, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    assert r2.output_text == "It is sunny in Paris."
    prompt = engine.tokenizer.decode(engine.prompts[-1], skip_special_tokens=False)
    assert "sunny, 21 C" in prompt and call.call_id in prompt and "get_weather" in prompt
    assert engine.program_ids[-1] == engine.program_ids[-2]  # one program per chain
    assert engine.program_ids[-1] in engine.coming_back


def test_streamed_function_call(scripted):
    engine, client = scripted
    engine.answers = [CALL]
    events = list(client.responses.create(model=MODEL, input="Weather?", tools=TOOLS,
                                          stream=True))  # fmt: skip
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == ARGS
    done = events[-1].response
    assert done.output[0].type == "function_call" and done.output[0].arguments == args


def test_required_tool_choice_is_enforced_by_the_grammar(real):
    _, client = real
    r = client.responses.create(model=MODEL, input="x", tools=TOOLS, tool_choice="required",
                                max_output_tokens=64)  # fmt: skip
    calls = [o for o in r.output if o.type == "function_call"]
    assert r.status == "completed" and calls and calls[0].name == TOOLS[0]["name"]
    assert isinstance(json.loads(calls[0].arguments), dict)


def test_bad_requests(real):
    srv, client = real
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_nope")
    for body, param in (
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format.name"),
        ({"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]},
         "messages.0.tool_call_id"),
        ({"input": []}, "input"),
        ({"input": "x", "session_id": "bad id!"}, "session_id"),  # the program-id rule
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "truncation": "auto"}, "truncation"),
        ({"input": "x", "include": ["reasoning.encrypted_content"]}, "include"),
    ):
        r = httpx.post(srv.url + "/v1/responses", json={"model": MODEL, **body}, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param, r.text
    wait_server_idle(srv.url, 10)


def test_store_bound_and_ttl():
    now = [0.0]
    store = ResponseStore(max_entries=2, ttl_s=10.0, clock=lambda: now[0])
    for i in range(3):
        store.put(f"r{i}", [], "p")
    assert store.get("r0") is None and store.get("r2") is not None and len(store) == 2
    now[0] = 10.5
    assert store.get("r2") is None and len(store) == 0
    with pytest.raises(ValueError):
        ResponseStore(max_entries=0)
