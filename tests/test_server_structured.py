"""``response_format`` through a real server and the official openai client: schema-valid
outputs on many seeds, ``chat.completions.parse`` with a pydantic model, 400s naming the field
for bad schemas, and no KV block left in use afterwards."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import pytest
from conftest import tiny_async_engine, wait_server_idle

openai = pytest.importorskip("openai")
pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

from pyserve.server.app import build_app  # noqa: E402
from pyserve.server.runner import ServerThread  # noqa: E402

MODEL = "builtin:tiny"
MESSAGES = [{"role": "user", "content": "Describe a pet as JSON."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "friendly": {"type": "boolean"},
    },
    "required": ["name", "legs", "kind", "friendly"],
    "additionalProperties": False,
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=10)
    legs: int = pydantic.Field(ge=0, le=8)
    kind: Literal["cat", "dog", "bird"]
    friendly: bool


@pytest.fixture(scope="module")
def server():
    with ServerThread(build_app(tiny_async_engine(max_model_len=512))) as srv:
        yield srv


def _schema_format(schema: dict, strict: bool | None = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "pet", "schema": schema,
                                                   "strict": strict}}  # fmt: skip


def test_json_schema_validates_on_many_seeds(server, client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=16, seed=7,
                                       max_tokens=64, response_format=_schema_format(SCHEMA))  # fmt: skip
    reasons = [c.finish_reason for c in r.choices]
    assert reasons.count("stop") >= 14, reasons
    for c in r.choices:
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.message.content), SCHEMA)
    assert len({c.message.content for c in r.choices}) > 8
    wait_server_idle(server.url, 30)


def test_parse_with_a_pydantic_model(server, client):
    for seed in range(6):
        r = client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Pet,
                                          seed=seed, max_tokens=64)  # fmt: skip
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(msg.parsed, Pet) and msg.parsed.kind in ("cat", "dog", "bird")
    wait_server_idle(server.url, 30)


def test_streaming_json_object_and_completions(server, client):
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=3, stream=True,
                                            max_tokens=64,
                                            response_format=_schema_format(SCHEMA, None))  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=8, seed=1, max_tokens=48,
                                       response_format={"type": "json_object"})  # fmt: skip
    for c in r.choices:
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.message.content), dict)
        else:
            assert c.message.content.startswith("{")
    r = client.completions.create(model=MODEL, prompt="Pet:", max_tokens=64, seed=2,
                                  extra_body={"response_format": _schema_format(SCHEMA)})  # fmt: skip
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMA)
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, seed=1,
                                       response_format={"type": "text"})  # fmt: skip
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        (_schema_format({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}),
         "response_format.json_schema.schema.properties.a.not"),
        (_schema_format({"type": "objekt"}), "response_format.json_schema.schema.type"),
        (_schema_format({"type": "array", "uniqueItems": True}),
         "response_format.json_schema.schema.uniqueItems"),
        (_schema_format({"$ref": "#/$defs/missing"}), "response_format.json_schema.schema"),
        (_schema_format({"type": "string", "format": "credit-card"}),
         "response_format.json_schema.schema.format"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}},
         "response_format.json_schema.name"),
        ({"type": "yaml"}, "response_format.type"),
    ],
)  # fmt: skip
def test_bad_response_format_is_400_naming_the_field(server, response_format, param):
    for path, body in (("/v1/chat/completions", {"messages": MESSAGES}),
                       ("/v1/completions", {"prompt": "Hi"})):  # fmt: skip
        r = httpx.post(server.url + path, json={"model": MODEL, "max_tokens": 4, **body,
                                                "response_format": response_format})  # fmt: skip
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param, r.json()
    wait_server_idle(server.url, 30)


def test_min_tokens_with_response_format_is_400(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": MESSAGES, "min_tokens": 3,
        "response_format": {"type": "json_object"}})  # fmt: skip
    assert r.status_code == 400 and "min_tokens" in r.json()["error"]["message"]
    wait_server_idle(server.url, 30)


def test_responses_text_format(server, client):
    fmt = {"type": "json_schema", "name": "pet", "schema": SCHEMA, "strict": True}
    for _ in range(4):  # NOTE: the Responses API has no seed: each call samples afresh
        r = client.responses.create(model=MODEL, input="Describe a pet.", max_output_tokens=128,
                                    text={"format": fmt})  # fmt: skip
        assert r.status == "completed" and r.text.format.type == "json_schema"
        jsonschema.validate(json.loads(r.output_text), SCHEMA)
    parsed = client.responses.parse(model=MODEL, input="Describe a pet.", text_format=Pet,
                                    max_output_tokens=128)  # fmt: skip
    assert isinstance(parsed.output_parsed, Pet)
    events = list(client.responses.create(model=MODEL, input="Any JSON.", max_output_tokens=48,
                                          text={"format": {"type": "json_object"}},
                                          stream=True))  # fmt: skip
    done = events[-1].response
    if done.status == "completed":
        assert isinstance(json.loads(done.output_text), dict)
    else:
        assert done.output_text.startswith("{")
    wait_server_idle(server.url, 30)


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ({"type": "json_schema", "schema": SCHEMA}, "text.format.name"),
        ({"type": "json_schema", "name": "p", "schema": {"type": "objekt"}},
         "text.format.schema.type"),
        ({"type": "yaml"}, "text.format.type"),
    ],
)  # fmt: skip
def test_bad_text_format_is_400_naming_the_field(server, fmt, param):
    r = httpx.post(server.url + "/v1/responses", json={"model": MODEL, "input": "x",
                                                       "text": {"format": fmt}})  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    r = httpx.post(server.url + "/v1/responses", json={
        "model": MODEL, "input": "x", "tools": tools, "tool_choice": "required",
        "text": {"format": {"type": "json_object"}}})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "text.format", r.text
    wait_server_idle(server.url, 30)
