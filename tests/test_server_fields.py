"""Every request field is honoured or refused: an unknown field (top-level or nested) is a 400
whose ``param`` and message name its path, on every endpoint; the fields official clients send
are accepted at the values this server honours and refused (400 naming them) at the others; and
no refused request holds a KV block."""

from __future__ import annotations

import httpx
import pytest
from conftest import tiny_async_engine, wait_server_idle

from pyserve.server.app import build_app
from pyserve.server.runner import ServerThread

MODEL = "builtin:tiny"
USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}

COMPLETION = {"model": MODEL, "prompt": "hello", "max_tokens": 2}
CHAT = {"model": MODEL, "messages": [USER], "max_tokens": 2}
RESPONSE = {"model": MODEL, "input": [{"role": "user", "content": "hi"}], "max_output_tokens": 2}
MESSAGE = {"model": MODEL, "max_tokens": 2, "messages": [USER]}
COUNT = {"model": MODEL, "messages": [USER]}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _set(body: dict, path: str, value) -> dict:
    """A deep copy of ``body`` with ``value`` at the dotted ``path`` (list indices as numbers)."""
    import copy

    out = copy.deepcopy(body)
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return out


# (endpoint, a valid body, the path of the unknown field to add to it)
UNKNOWN = [
    ("/v1/completions", COMPLETION, "foo"),
    ("/v1/completions", COMPLETION, "prompt_logprobs"),  # vLLM's; echo + logprobs here
    ("/v1/completions", COMPLETION, "suffix"),
    ("/v1/completions", COMPLETION, "best_of"),
    ("/v1/completions", {**COMPLETION, "stream_options": {}}, "stream_options.foo"),
    ("/v1/chat/completions", CHAT, "foo"),
    ("/v1/chat/completions", {**CHAT, "messages": [dict(USER) for _ in range(3)]}, "messages.2.foo"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}]}]}, "messages.0.content.0.foo"),  # fmt: skip
    ("/v1/chat/completions", {**CHAT, "tools": [TOOL]}, "tools.0.function.foo"),
    ("/v1/chat/completions", {**CHAT, "tools": [TOOL]}, "tools.0.foo"),
    ("/v1/chat/completions", {**CHAT, "tools": [TOOL], "tool_choice": {
        "type": "function", "function": {"name": "f"}}}, "tool_choice.function.foo"),  # fmt: skip
    ("/v1/chat/completions", {**CHAT, "messages": [USER, {"role": "assistant", "tool_calls": [
        CALL]}]}, "messages.1.tool_calls.0.function.foo"),  # fmt: skip
    ("/v1/chat/completions", {**CHAT, "response_format": SCHEMA}, "response_format.json_schema.foo"),  # fmt: skip
    ("/v1/chat/completions", {**CHAT, "stream_options": {}}, "stream_options.foo"),
    ("/v1/responses", RESPONSE, "seed"),
    ("/v1/responses", RESPONSE, "input.0.foo"),
    ("/v1/responses", {**RESPONSE, "input": [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "hi"}]}]}, "input.0.content.0.foo"),  # fmt: skip
    ("/v1/responses", {**RESPONSE, "input": [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
     "input.0.foo"),  # fmt: skip
    ("/v1/responses", {**RESPONSE, "text": {"format": {"type": "json_object"}}},
     "text.format.foo"),  # fmt: skip
    ("/v1/responses", {**RESPONSE, "tools": [{"type": "function", "name": "f"}]}, "tools.0.foo"),  # fmt: skip
    ("/v1/responses", {**RESPONSE, "reasoning": {}}, "reasoning.foo"),
    ("/v1/messages", MESSAGE, "foo"),
    ("/v1/messages", MESSAGE, "messages.0.foo"),
    ("/v1/messages", {**MESSAGE, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}]}]}, "messages.0.content.0.foo"),  # fmt: skip
    ("/v1/messages", {**MESSAGE, "system": [{"type": "text", "text": "s",
                                             "cache_control": {"type": "ephemeral"}}]},
     "system.0.cache_control.foo"),  # fmt: skip
    ("/v1/messages", {**MESSAGE, "tools": [{"name": "f", "input_schema": {"type": "object"}}]},
     "tools.0.foo"),  # fmt: skip
    ("/v1/messages", {**MESSAGE, "metadata": {"user_id": "u"}}, "metadata.foo"),
    ("/v1/messages/count_tokens", COUNT, "foo"),
    ("/v1/messages/count_tokens", COUNT, "messages.0.foo"),
    ("/tokenize", {"prompt": "hi"}, "foo"),
    ("/tokenize", {"messages": [USER]}, "messages.0.foo"),
    ("/detokenize", {"tokens": [1, 2]}, "foo"),
    ("/v1/programs", {"program_id": "p-fields"}, "foo"),
]

# fields clients send, at values that would need behaviour this server does not have
REFUSED = [
    ("/v1/completions", {**COMPLETION, "logit_bias": {"5": 10}}, "logit_bias"),
    ("/v1/chat/completions", {**CHAT, "store": True}, "store"),
    ("/v1/chat/completions", {**CHAT, "service_tier": "flex"}, "service_tier"),
    ("/v1/chat/completions", {**CHAT, "logit_bias": {"5": -100}}, "logit_bias"),
    ("/v1/chat/completions", {**CHAT, "reasoning_effort": "high"}, "reasoning_effort"),
    ("/v1/chat/completions", {**CHAT, "modalities": ["text", "audio"]}, "modalities.1"),
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {
        "include_obfuscation": True}}, "stream_options.include_obfuscation"),  # fmt: skip
    ("/v1/chat/completions", {**CHAT, "messages": [USER, {"role": "assistant", "content": "",
                                                          "refusal": "no"}]},
     "messages.1.refusal"),  # fmt: skip
    ("/v1/responses", {**RESPONSE, "reasoning": {"effort": "high"}}, "reasoning.effort"),
    ("/v1/responses", {**RESPONSE, "text": {"verbosity": "low"}}, "text.verbosity"),
    ("/v1/responses", {**RESPONSE, "service_tier": "priority"}, "service_tier"),
    ("/v1/responses", {**RESPONSE, "truncation": "auto"}, "truncation"),
    ("/v1/responses", {**RESPONSE, "include": ["reasoning.encrypted_content"]}, "include"),
    ("/v1/responses", {**RESPONSE, "input": [{"type": "reasoning", "summary": []}]}, "input.0"),
    ("/v1/messages", {**MESSAGE, "thinking": {"type": "enabled", "budget_tokens": 1024}},
     "thinking"),  # fmt: skip
    ("/v1/messages", {**MESSAGE, "service_tier": "priority"}, "service_tier"),
    ("/v1/messages", {**MESSAGE, "system": [{"type": "text", "text": "s", "citations": [{}]}]},
     "system.0.citations"),  # fmt: skip
]

# what the official clients and agent frameworks put in a body, at values honoured here
ACCEPTED = [
    ("/v1/completions", {**COMPLETION, "user": "u1", "logit_bias": {}, "seed": 3,
                         "stream_options": {"include_usage": True}}),  # fmt: skip
    ("/v1/chat/completions", {**CHAT, "user": "u1", "metadata": {"run": "7"}, "store": False,
                              "service_tier": "auto", "logit_bias": {}, "tools": [TOOL],
                              "tool_choice": "none", "parallel_tool_calls": False,
                              "prompt_cache_key": "k", "safety_identifier": "s",
                              "modalities": ["text"], "reasoning_effort": None,
                              "logprobs": True, "top_logprobs": 2,
                              "stream": True, "stream_options": {"include_usage": True,
                                                                 "include_obfuscation": False}}),
    ("/v1/chat/completions", {**CHAT, "messages": [USER, {
        "role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None,
        "function_call": None, "audio": None}, {"role": "tool", "tool_call_id": "c1",
                                                "content": "ok"}], "tools": [TOOL]}),
    ("/v1/responses", {**RESPONSE, "instructions": "Be brief.", "include": [], "store": False,
                       "metadata": {"k": "v"}, "user": "u", "truncation": "disabled",
                       "reasoning": {"effort": None}, "service_tier": "default",
                       "text": {"format": {"type": "text"}, "verbosity": "medium"},
                       "parallel_tool_calls": True, "prompt_cache_key": "k",
                       "input": [USER, {"type": "message", "role": "assistant", "id": "msg_1",
                                        "status": "completed", "content": [
                                            {"type": "output_text", "text": "hello",
                                             "annotations": [], "logprobs": []}]},
                                 {"role": "user", "content": "again"}]}),  # fmt: skip
    ("/v1/messages", {**MESSAGE, "metadata": {"user_id": "u1"}, "stop_sequences": ["\n\n"],
                      "top_k": 5, "service_tier": "auto", "thinking": {"type": "disabled"},
                      "system": [{"type": "text", "text": "Be brief.",
                                  "cache_control": {"type": "ephemeral", "ttl": "5m"}}],
                      "tools": [{"type": "custom", "name": "f", "input_schema": {
                          "type": "object"}, "cache_control": {"type": "ephemeral"}}]}),
    ("/v1/messages/count_tokens", {**COUNT, "system": [
        {"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]}),  # fmt: skip
]


@pytest.fixture(scope="module")
def server():
    with ServerThread(build_app(tiny_async_engine(max_model_len=1024))) as srv:
        yield srv


def _error(r: httpx.Response, path: str) -> dict:
    """The error object, checking the shape of the endpoint's API."""
    body = r.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and set(body["error"]) == {"type", "message", "param"}
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]


@pytest.mark.parametrize("path,body,field", UNKNOWN, ids=[f"{p} {f}" for p, _, f in UNKNOWN])
def test_unknown_field_is_a_400_naming_it(server, path, body, field):
    r = httpx.post(server.url + path, json=_set(body, field, 1), timeout=30)
    assert r.status_code == 400, r.text
    err = _error(r, path)
    assert err["param"] == field and f"'{field}'" in err["message"], err


@pytest.mark.parametrize("path,body,field", REFUSED, ids=[f"{p} {f}" for p, _, f in REFUSED])
def test_unsupported_value_is_a_400_naming_it(server, path, body, field):
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert _error(r, path)["param"] == field


@pytest.mark.parametrize("path,body", ACCEPTED, ids=[p for p, _ in ACCEPTED])
def test_client_fields_are_accepted(server, path, body):
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    if body.get("stream"):
        assert r.text.rstrip().endswith("data: [DONE]")


def test_no_block_leaked(server):
    m = wait_server_idle(server.url, 30)
    assert m["pyserve:kv_cache_blocks_used"] == 0
    r = httpx.post(server.url + "/v1/completions", json=COMPLETION, timeout=30)
    assert r.status_code == 200, r.text
