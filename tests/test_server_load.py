"""Bounded load on loopback: 200 concurrent streaming clients, a few thousand requests; every
request is answered completely, the server's counters agree, and no KV block is leaked."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from conftest import server_metrics as metrics
from conftest import tiny_async_engine

from pyserve.server.app import build_app
from pyserve.server.runner import ServerThread

MODEL = "builtin:tiny"
CLIENTS = 200
PER_CLIENT = 10  # 2000 requests in total
MAX_TOKENS = 3
TIME_LIMIT_S = 150.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server():
    eng = tiny_async_engine(max_model_len=256, max_num_seqs=256)
    with ServerThread(build_app(eng), log_level="error") as srv:
        yield srv


async def one_request(client: httpx.AsyncClient, cid: int, k: int) -> dict:
    """Streams one completion and checks that it is complete; returns its usage."""
    body = {"model": MODEL, "prompt": f"client {cid} request {k}", "max_tokens": MAX_TOKENS,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
            "program_id": None}  # fmt: skip
    events = []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]", events
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("error" not in c for c in chunks), chunks
    usage = chunks[-1]["usage"]
    reasons = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert reasons == ["length"] and usage["completion_tokens"] == MAX_TOKENS, chunks
    assert len({c["id"] for c in chunks}) == 1
    return usage


async def client_loop(client: httpx.AsyncClient, cid: int) -> list[dict]:
    return [await one_request(client, cid, k) for k in range(PER_CLIENT)]


async def run_load(url: str) -> list[dict]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        per_client = await asyncio.gather(*(client_loop(client, c) for c in range(CLIENTS)))
    return [u for us in per_client for u in us]


@pytest.mark.timeout(300)
def test_200_concurrent_streaming_clients(server):
    before = metrics(server.url)
    t0 = time.monotonic()
    usages = asyncio.run(run_load(server.url))
    elapsed = time.monotonic() - t0
    total = CLIENTS * PER_CLIENT
    assert len(usages) == total  # every request answered completely
    assert elapsed < TIME_LIMIT_S, f"{total} requests took {elapsed:.1f} s"
    deadline = time.monotonic() + 30
    while True:
        m = metrics(server.url)
        idle = m["pyserve:num_requests_running"] + m["pyserve:num_requests_waiting"] == 0
        if idle and m["pyserve:kv_cache_blocks_used"] == 0:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.1)

    def delta(name: str) -> float:
        return m.get(name, 0.0) - before.get(name, 0.0)

    # The server's own counters agree with what the clients saw: nothing lost or doubled.
    assert delta("pyserve:request_success_total") == total
    assert delta("pyserve:generation_tokens_total") == total * MAX_TOKENS
    assert delta("pyserve:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert m["pyserve:engine_step_failures_total"] == 0
    assert m.get("pyserve:request_errors_total", 0) == before.get("pyserve:request_errors_total", 0)
    print(f"load: {total} requests from {CLIENTS} clients in {elapsed:.1f} s")
