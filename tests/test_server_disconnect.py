"""Clients that drop mid-stream, while queued, or while waiting for a non-streamed answer:
their requests are aborted and every KV block is free again. Also: an engine step that raises
fails its requests with a 500 error while the server keeps serving; shutdown drains or aborts."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
from conftest import server_metrics as metrics
from conftest import tiny_async_engine
from conftest import wait_server_idle as wait_all_free

from pyserve.config import EngineConfig
from pyserve.engine.async_engine import AsyncEngine
from pyserve.server.app import build_app
from pyserve.server.runner import ServerThread

MODEL = "builtin:tiny"
LONG = 1500  # tokens a dropped request would generate: ~tens of seconds on this CPU


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine():
    # NOTE: max_num_seqs=4 so that some of the dropped requests are still queued when they drop.
    return tiny_async_engine(max_model_len=2048, max_num_seqs=4)


@pytest.fixture(scope="module")
def server(engine):
    with ServerThread(build_app(engine, shutdown_client=False)) as srv:
        yield srv


def long_body(stream: bool, prompt: str = "tell me a very long story") -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": LONG, "ignore_eos": True,
            "stream": stream}  # fmt: skip


async def drop_after_chunks(client: httpx.AsyncClient, n_chunks: int, i: int) -> int:
    """Streams a long request and closes the connection after ``n_chunks`` events."""
    got = 0
    async with client.stream("POST", "/v1/completions", json=long_body(True, f"story {i}")) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                got += 1
                if got >= n_chunks:
                    break
    return got


async def drop_while_waiting(client: httpx.AsyncClient, i: int, stream: bool) -> None:
    """Gives up after 0.3 s (cancels the call, closing the connection), queued or not."""

    async def call() -> None:
        if stream:
            async with client.stream(
                "POST", "/v1/completions", json=long_body(True, f"q {i}")
            ) as r:
                async for _ in r.aiter_lines():
                    pass
        else:
            await client.post("/v1/completions", json=long_body(False, f"q {i}"))

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(call(), 0.3)


async def drop_all(url: str) -> list[int]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks = [drop_after_chunks(client, 2 + i % 3, i) for i in range(6)]
        tasks += [drop_while_waiting(client, i, stream=i % 2 == 0) for i in range(8)]
        res = await asyncio.gather(*tasks)
    return [r for r in res if r is not None]


def test_dropped_clients_free_their_blocks(server):
    before = metrics(server.url)
    got = asyncio.run(drop_all(server.url))
    assert got and all(g >= 2 for g in got)
    # Far less than the LONG tokens x 14 requests the dropped clients asked for would take.
    m = wait_all_free(server.url, timeout_s=20)
    assert m["pyserve:engine_step_failures_total"] == 0
    gen = m.get("pyserve:generation_tokens_total", 0) - before.get(
        "pyserve:generation_tokens_total", 0
    )
    assert gen == 0  # no dropped request ran to completion


def test_raw_socket_reset_mid_stream(server):
    body = json.dumps(long_body(True, "raw socket")).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(head + body)
        data = b""
        while data.count(b"data: ") < 3:
            chunk = sock.recv(4096)
            assert chunk, "server closed the stream early"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        # RST instead of FIN: the harshest way for a client to vanish.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_all_free(server.url, timeout_s=20)


def test_server_still_answers_after_drops(server):
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "ok",
                                                          "max_tokens": 3, "ignore_eos": True},
                   timeout=30)  # fmt: skip
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    wait_all_free(server.url, timeout_s=10)


class FailingSteps:
    """Wraps the model runner so that the next ``count`` forward passes raise."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.runner = engine.engine.runner
        self.original = self.runner.execute
        self.count = 0

    def __call__(self, *args, **kwargs):
        if self.count > 0:
            self.count -= 1
            raise RuntimeError("injected device fault")
        return self.original(*args, **kwargs)

    def __enter__(self) -> FailingSteps:
        self.runner.execute = self  # NOTE: one attribute store; the loop thread sees either
        return self

    def __exit__(self, *exc) -> None:
        self.runner.execute = self.original


def test_failed_step_is_a_500_and_the_server_keeps_serving(server, engine):
    url = server.url + "/v1/completions"
    body = {"model": MODEL, "prompt": "fault", "max_tokens": 8, "ignore_eos": True}
    failures = metrics(server.url)["pyserve:engine_step_failures_total"]
    with FailingSteps(engine) as fault:
        fault.count = 1
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["type"] == "server_error" and "injected device fault" in err["message"]
        # Mid-stream: the error arrives as an SSE event, then [DONE].
        with httpx.stream("POST", url, json={**body, "max_tokens": 200, "stream": True},
                          timeout=30) as s:  # fmt: skip
            assert s.status_code == 200
            events = []
            for line in s.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:
                        fault.count = 1
    assert events[-1] == "[DONE]" and "injected device fault" in events[-2], events[-3:]
    assert len(events) < 100  # it stopped at the fault
    ok = httpx.post(url, json=body, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 8
    m = wait_all_free(server.url, timeout_s=10)
    assert m["pyserve:engine_step_failures_total"] == failures + 2
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("drain", [True, False])
def test_shutdown_drains_or_aborts(drain):
    from pyserve.engine.client import EngineDeadError
    from pyserve.sampling_params import SamplingParams

    async def scenario():
        eng = AsyncEngine.from_config(EngineConfig.from_kwargs(MODEL, kv_cache_bytes=8 << 20))
        params = SamplingParams(max_tokens=400 if not drain else 12, ignore_eos=True)

        async def consume(i: int):
            last = None
            async for out in eng.generate(f"s{i}", f"prompt {i}", params):
                last = out
            return last

        tasks = [asyncio.create_task(consume(i)) for i in range(3)]
        await asyncio.sleep(0.3)
        await eng.shutdown(drain=drain)
        outs = await asyncio.gather(*tasks)
        with pytest.raises(EngineDeadError):
            await consume(99)
        return eng, outs

    eng, outs = asyncio.run(scenario())
    reasons = {o.finish_reason for o in outs}
    assert reasons == ({"length"} if drain else {"abort"})
    if drain:
        assert all(len(o.token_ids) == 12 for o in outs)
    st = eng.engine.stats()  # the loop thread has exited: safe to read
    assert st["gpu_blocks_used"] == 0 and st["num_running"] == st["num_waiting"] == 0
    eng.engine.check_invariants()
