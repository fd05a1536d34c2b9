"""Every kind of bad input gets an OpenAI-style 4xx error (never a 5xx, never a hang), and the
server keeps serving with no KV block leaked."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import tiny_async_engine, wait_server_idle

from pyserve.server.app import build_app
from pyserve.server.runner import ServerThread

KEY = "sk-test-123"
MODEL = "builtin:tiny"
LIMIT = 16 << 10  # request body bytes
CONTEXT = 128  # max_model_len
AUTH = {"Authorization": f"Bearer {KEY}"}
OK_COMPLETION = {"model": MODEL, "prompt": "hello", "max_tokens": 4}
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine():
    return tiny_async_engine(max_model_len=CONTEXT)


@pytest.fixture(scope="module")
def server(engine):
    app = build_app(engine, api_key=KEY, max_request_bytes=LIMIT)
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=20) as c:
        yield c


def check_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param, err
    return err


def with_(base: dict, **changes) -> dict:
    body = {**base, **changes}
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()

BAD_COMPLETIONS = {
    "missing model": (with_(OK_COMPLETION, model=DROP), 400, "model"),
    "missing prompt": (with_(OK_COMPLETION, prompt=DROP), 400, "prompt"),
    "prompt wrong type": (with_(OK_COMPLETION, prompt=123), 400, "prompt"),
    "prompt empty list": (with_(OK_COMPLETION, prompt=[]), 400, None),
    "max_tokens string": (with_(OK_COMPLETION, max_tokens="ten"), 400, "max_tokens"),
    "max_tokens negative": (with_(OK_COMPLETION, max_tokens=-5), 400, "max_tokens"),
    "max_tokens zero": (with_(OK_COMPLETION, max_tokens=0), 400, "max_tokens"),
    "max_tokens huge": (with_(OK_COMPLETION, max_tokens=10**12), 400, "max_tokens"),
    "max_tokens past context": (with_(OK_COMPLETION, max_tokens=CONTEXT), 400, "max_tokens"),
    "temperature negative": (with_(OK_COMPLETION, temperature=-0.5), 400, "temperature"),
    "temperature string": (with_(OK_COMPLETION, temperature="hot"), 400, "temperature"),
    "top_p zero": (with_(OK_COMPLETION, top_p=0.0), 400, "top_p"),
    "top_p above one": (with_(OK_COMPLETION, top_p=1.5), 400, "top_p"),
    "top_k below -1": (with_(OK_COMPLETION, top_k=-7), 400, "top_k"),
    "min_p above one": (with_(OK_COMPLETION, min_p=2), 400, "min_p"),
    "presence_penalty": (with_(OK_COMPLETION, presence_penalty=3), 400, "presence_penalty"),
    "repetition_penalty": (with_(OK_COMPLETION, repetition_penalty=0), 400, None),
    "n zero": (with_(OK_COMPLETION, n=0), 400, "n"),
    "n huge": (with_(OK_COMPLETION, n=1000), 400, "n"),
    "logprobs too many": (with_(OK_COMPLETION, logprobs=50), 400, "logprobs"),
    "seed negative": (with_(OK_COMPLETION, seed=-1), 400, "seed"),
    "empty stop string": (with_(OK_COMPLETION, stop=[""]), 400, None),
    "min_tokens over max": (with_(OK_COMPLETION, min_tokens=10, max_tokens=2), 400, None),
    "prompt too long (ids)": (with_(OK_COMPLETION, prompt=[5] * CONTEXT), 400, "prompt"),
    "prompt too long (text)": (with_(OK_COMPLETION, prompt="word " * 400), 400, "prompt"),
    "token id out of vocab": (with_(OK_COMPLETION, prompt=[1, 2, 10**9]), 400, None),
    "negative token id": (with_(OK_COMPLETION, prompt=[-3]), 400, None),
    "stream token out of vocab": (with_(OK_COMPLETION, prompt=[10**6], stream=True), 400, None),
    "nested ids overflow": (with_(OK_COMPLETION, prompt=[[5, 10**20]], echo=True), 400, "prompt"),
    "echo ids out of vocab": (with_(OK_COMPLETION, prompt=[[5, 10**6]], echo=True), 400, None),
    "top_k overflow": (with_(OK_COMPLETION, top_k=10**30), 400, "top_k"),
    "stop_token_ids overflow": (with_(OK_COMPLETION, stop_token_ids=[2**40]), 400, None),
    "unknown model": (with_(OK_COMPLETION, model="gpt-17"), 404, "model"),
    "program id too long": (with_(OK_COMPLETION, program_id="p" * 300), 400, "program_id"),
    "session id conflict": (with_(OK_COMPLETION, program_id="a", session_id="b"), 400,
                            "session_id"),  # fmt: skip
    "priority string": (with_(OK_COMPLETION, priority="high"), 400, "priority"),
    "parent_ids wrong type": (with_(OK_COMPLETION, parent_ids="abc"), 400, "parent_ids"),
    "parent_ids unsupported": (with_(OK_COMPLETION, parent_ids=["a"]), 400, "parent_ids"),
    "thread_id unsupported": (with_(OK_COMPLETION, thread_id="t0"), 400, "thread_id"),
}

BAD_CHATS = {
    "missing messages": (with_(OK_CHAT, messages=DROP), 400, "messages"),
    "empty messages": (with_(OK_CHAT, messages=[]), 400, "messages"),
    "bad role": (with_(OK_CHAT, messages=[{"role": "robot", "content": "x"}]), 400, None),
    "messages not a list": (with_(OK_CHAT, messages="hi"), 400, "messages"),
    "content wrong type": (with_(OK_CHAT, messages=[{"role": "user", "content": 5}]), 400, None),
    "top_logprobs without logprobs": (with_(OK_CHAT, top_logprobs=2), 400, "top_logprobs"),
    "max_completion_tokens negative": (with_(OK_CHAT, max_completion_tokens=-1), 400, None),
    "chat too long": (
        with_(OK_CHAT, messages=[{"role": "user", "content": "a b " * 300}]),
        400,
        "prompt",
    ),  # fmt: skip
    "chat max_tokens past context": (with_(OK_CHAT, max_tokens=10**6), 400, "max_tokens"),
    "chat unknown model": (with_(OK_CHAT, model="other"), 404, "model"),
}


@pytest.mark.parametrize("name", list(BAD_COMPLETIONS))
def test_bad_completion(http, name):
    body, status, param = BAD_COMPLETIONS[name]
    check_error(http.post("/v1/completions", json=body), status, param)


@pytest.mark.parametrize("name", list(BAD_CHATS))
def test_bad_chat(http, name):
    body, status, param = BAD_CHATS[name]
    check_error(http.post("/v1/chat/completions", json=body), status, param)


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1, 2]", b"null", b'"text"',
                                 b'{"model": "builtin:tiny", "prompt": "x", "temperature": NaN}',
                                 b'{"model": "builtin:tiny", "prompt": "x", "top_p": Infinity}',
                                 b"\xff\xfe\x00garbage"])  # fmt: skip
def test_malformed_bodies(http, raw):
    r = http.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
    check_error(r, 400)


def test_wrong_content_type(http):
    r = http.post("/v1/completions", content=json.dumps(OK_COMPLETION), headers={
        "Content-Type": "text/plain"})  # fmt: skip
    check_error(r, 400)


def test_program_header_unknown_and_ids(http):
    check_error(http.delete("/v1/programs/ghost"), 404, "program_id")
    r = http.post("/v1/completions", json=OK_COMPLETION, headers={"X-Program-Id": "ghost"})
    assert r.status_code == 200  # an unseen program starts implicitly
    assert http.delete("/v1/programs/ghost").status_code == 200
    check_error(http.post("/v1/programs", json={"program_id": ""}), 400, "program_id")
    check_error(http.post("/v1/programs", json={"program_id": "x" * 1000}), 400, "program_id")
    pid = http.post("/v1/programs", json={"program_id": "dup"}).json()["id"]
    check_error(http.post("/v1/programs", json={"program_id": pid}), 409, "program_id")
    assert http.delete(f"/v1/programs/{pid}").status_code == 200


def test_body_over_limit(http):
    big = {"model": MODEL, "prompt": "x" * (LIMIT + 10)}
    err = check_error(http.post("/v1/completions", json=big), 413)
    assert err["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit applies to what is streamed
        for _ in range(40):
            yield b" " * 1024

    check_error(http.post("/v1/completions", content=chunks(),
                          headers={"Content-Type": "application/json"}), 413)  # fmt: skip


def test_api_key_missing_or_wrong(server):
    with httpx.Client(base_url=server.url, timeout=20) as c:
        err = check_error(c.post("/v1/completions", json=OK_COMPLETION), 401)
        assert err["code"] == "missing_api_key"
        for auth in ("Bearer wrong", f"Basic {KEY}", "Bearer", KEY):
            r = c.post("/v1/completions", json=OK_COMPLETION, headers={"Authorization": auth})
            check_error(r, 401)
        check_error(c.get("/v1/models"), 401)
        assert c.get("/health").status_code == 200  # health and metrics stay open
        assert c.get("/metrics").status_code == 200


def test_api_key_from_environment(engine, monkeypatch):
    import asyncio

    monkeypatch.setenv("PYSERVE_API_KEY", "from-env")
    app = build_app(engine, shutdown_client=False)

    async def calls():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            no = await c.get("/v1/models")
            yes = await c.get("/v1/models", headers={"Authorization": "Bearer from-env"})
        return no, yes

    no, yes = asyncio.run(calls())
    check_error(no, 401)
    assert yes.status_code == 200 and yes.json()["data"][0]["id"] == MODEL


def test_unknown_route_and_method(http):
    check_error(http.get("/v1/nothing"), 404)
    check_error(http.get("/v1/completions"), 405)


def test_still_serving_and_no_leaked_blocks(server, http):
    # Runs last in this module (pytest keeps file order).
    r = http.post("/v1/completions", json=with_(OK_COMPLETION, max_tokens=6, ignore_eos=True))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6
    r = http.post("/v1/chat/completions", json=OK_CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    m = wait_server_idle(server.url, timeout_s=20)
    assert m["pyserve:engine_step_failures_total"] == 0
    errors = sum(v for k, v in m.items() if k == "pyserve:request_errors_total")
    assert errors >= 1  # the engine-side rejection (token id out of vocab) was counted
