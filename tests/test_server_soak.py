"""Soak / chaos: normal, malformed, abandoned and slow clients at once against a small KV pool.

Every well-formed request completes with the right token count, /health answers throughout, the
KV cache drains to 0 and the request counters add up (started = completed + aborted + rejected).
Bounded in time and count, 127.0.0.1 only. CI runs it for SOAK_S = 15 s; set
``PYSERVE_SOAK_S=60`` (or more) for the full run the issue asks for.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

import httpx
import pytest
from conftest import tiny_async_engine, wait_server_idle

from pyserve.server.app import build_app
from pyserve.server.connections import ConnectionLimits
from pyserve.server.runner import ServerThread

SOAK_S = float(os.environ.get("PYSERVE_SOAK_S", "15"))
MODEL = "builtin:tiny"
HEALTH_LIMIT_S = 2.0  # generous: the CI machine is shared; the event loop itself is not blocked
MALFORMED = [
    b'{"model": "builtin:tiny", "prompt": ',  # truncated JSON
    b'{"model": "builtin:tiny", "prompt": "\\ud800"}',  # lone surrogate
    b'{"model": "builtin:tiny", "prompt": "x", "n": 99}',
    b'{"model": "builtin:tiny", "prompt": [1, -5]}',
    b'{"model": "builtin:tiny", "prompt": "x", "max_tokens": 100000}',
    b'{"model": "nope", "prompt": "x"}',
    b'{"model": "builtin:tiny", "prompt": "x", "program_id": "\\u0001call:x"}',
    b'{"model": "builtin:tiny", "prompt": "x", "temperature": "hot"}',
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server():
    engine = tiny_async_engine(num_gpu_blocks=48, max_model_len=256, max_num_seqs=16)
    app = build_app(engine, body_timeout_s=1.0)
    limits = ConnectionLimits(header_timeout_s=1.0, max_connections=256)
    with ServerThread(app, limits=limits) as srv:
        yield srv


class Tally:
    def __init__(self) -> None:
        self.ok = self.bad = self.abandoned = self.slow = self.health = 0
        self.worst_health = 0.0


async def normal(c: httpx.AsyncClient, rng: random.Random, t: Tally) -> None:
    n = rng.randint(1, 24)
    chat = rng.random() < 0.5
    stream = rng.random() < 0.5
    body = {"model": MODEL, "max_tokens": n, "ignore_eos": True, "stream": stream,
            "stream_options": {"include_usage": True} if stream else None}  # fmt: skip
    if chat:
        body["messages"] = [{"role": "user", "content": f"question {rng.random()}"}]
    else:
        body["prompt"] = f"prompt {rng.random()}"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    if not stream:
        r = await c.post(path, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == n
    else:
        usage = None
        async with c.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    usage = chunk.get("usage") or usage
        assert usage is not None and usage["completion_tokens"] == n
    t.ok += 1


async def malformed(c: httpx.AsyncClient, rng: random.Random, t: Tally) -> None:
    r = await c.post("/v1/completions", content=rng.choice(MALFORMED),
                     headers={"Content-Type": "application/json"})  # fmt: skip
    assert 400 <= r.status_code < 500, r.text
    t.bad += 1


async def abandoned(c: httpx.AsyncClient, rng: random.Random, t: Tally) -> None:
    body = {"model": MODEL, "prompt": "go on", "max_tokens": 200, "ignore_eos": True}
    if rng.random() < 0.5:
        async with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            async for _ in r.aiter_lines():
                break  # leave after the first line
    else:
        try:
            await c.post("/v1/completions", json=body, timeout=rng.uniform(0.05, 0.5))
        except httpx.TimeoutException:
            pass
    t.abandoned += 1


async def slow(url: str, rng: random.Random, t: Tally) -> None:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        if rng.random() < 0.5:  # slowloris: headers that never end
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            for _ in range(4):
                await asyncio.sleep(0.4)
                writer.write(b"X-Slow: 1\r\n")
        else:  # a partial body
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 500\r\n\r\n{\"mo")  # fmt: skip
        await asyncio.wait_for(reader.read(), 5.0)  # the server closes it
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    t.slow += 1


async def health(c: httpx.AsyncClient, stop: float, t: Tally) -> None:
    while time.monotonic() < stop:
        t0 = time.monotonic()
        r = await c.get("/health")
        assert r.status_code == 200
        t.worst_health = max(t.worst_health, time.monotonic() - t0)
        t.health += 1
        await asyncio.sleep(0.2)


async def soak(url: str, seconds: float) -> Tally:
    t = Tally()
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=64)

    async def worker(kind: str, seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            while time.monotonic() < stop:
                if kind == "normal":
                    await normal(c, rng, t)
                elif kind == "malformed":
                    await malformed(c, rng, t)
                    await asyncio.sleep(0.05)
                elif kind == "abandoned":
                    await abandoned(c, rng, t)
                else:
                    await slow(url, rng, t)

    async with httpx.AsyncClient(base_url=url, timeout=30) as hc:
        kinds = ["normal"] * 4 + ["malformed"] * 2 + ["abandoned"] * 2 + ["slow"] * 2
        await asyncio.gather(health(hc, stop, t),
                             *(worker(k, i) for i, k in enumerate(kinds)))  # fmt: skip
    return t


def test_soak(server):
    t = asyncio.run(soak(server.url, SOAK_S))
    print("soak tally:", vars(t))
    assert t.ok >= 8 and t.bad >= 8 and t.abandoned >= 4 and t.slow >= 2, vars(t)
    assert t.health >= SOAK_S / 0.5 and t.worst_health < HEALTH_LIMIT_S, vars(t)
    m = wait_server_idle(server.url, timeout_s=60)
    assert m["pyserve:kv_cache_blocks_used"] == 0
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics").text
    ended: dict[str, float] = {}
    started = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "pyserve:http_requests_ended_total":
                ended[s.labels["outcome"]] = s.value
            elif s.name == "pyserve:http_requests_started_total":
                started = s.value
    # NOTE: the /metrics request that produced `text` has started but not ended.
    assert started == sum(ended.values()) + 1, (started, ended)
    assert ended["completed"] >= t.ok + t.health
    assert ended["rejected"] >= t.bad and ended["aborted"] >= 1
