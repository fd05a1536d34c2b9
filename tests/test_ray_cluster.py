"""Two CPU replicas of builtin:tiny on a local Ray cluster, driven through the EngineClient
protocol and the OpenAI client: calls spread as the routing rule says, a program's service is
accounted globally, a replica killed before a call starts is routed around (the call is retried),
a replica killed mid-stream fails its call with EngineError, and nothing hangs."""

from __future__ import annotations

import asyncio

import pytest

ray = pytest.importorskip("ray")

from pyserve.cluster.cluster import RayCluster  # noqa: E402
from pyserve.cluster.router import RouterOptions  # noqa: E402
from pyserve.config import EngineConfig  # noqa: E402
from pyserve.engine.client import EngineClient, EngineDeadError, EngineError  # noqa: E402
from pyserve.sampling_params import SamplingParams  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SHORT = 16  # prompts above this many tokens are "long" (sticky) calls in these tests


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    config = EngineConfig.from_kwargs("builtin:tiny", device="cpu", kv_cache_bytes=16 << 20)
    c = RayCluster(config, replicas=2, router=RouterOptions(short_call_tokens=SHORT))
    yield c
    asyncio.run(c.shutdown(drain=False))
    ray.shutdown()


async def _collect(c, rid, prompt, max_tokens=4, **kw):
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    outs = [o async for o in c.generate(rid, prompt, params, **kw)]
    return outs


def _routed(c) -> list[int]:
    return [c.router.engine_stats(e)["routed"] for e in range(2)]


def test_protocol_spread_and_stickiness(cluster):
    assert isinstance(cluster, EngineClient)
    short = [1, 2, 3, 4]

    async def run():
        before = _routed(cluster)
        outs = await asyncio.gather(*[_collect(cluster, f"s{i}", short) for i in range(4)])
        after = _routed(cluster)
        assert all(o[-1].finished and len(o[-1].token_ids) == 4 for o in outs)
        # concurrent short calls go to the least-loaded replica: both replicas get two
        assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2]
        pid = await cluster.start_program("prog-a")
        long_prompt = list(range(5, 5 + 3 * SHORT))
        for i in range(3):  # long calls of one program stick to one replica
            await _collect(cluster, f"l{i}", long_prompt + [i], program_id=pid)
        sticky = cluster.router.lb.sticky_engine(pid)
        assert sticky in (0, 1)
        assert [a - b for a, b in zip(_routed(cluster), after, strict=True)][sticky] == 3
        # the global table holds the service the replica reported for the program's calls
        info = cluster.router.programs.info(pid)
        assert info["service"] > 0 and info["active_calls"] == 0
        stats = await cluster.stats()
        assert stats["num_replicas_alive"] == 2 and len(stats["replicas"]) == 2
        await cluster.end_program(pid)
        assert not cluster.has_program(pid) and cluster.router.lb.sticky_engine(pid) == -1
        with pytest.raises(ValueError):
            await cluster.end_program(pid)
        with pytest.raises(ValueError):
            await _collect(cluster, "bad", [])
        cluster.router.check()

    asyncio.run(run())


def test_openai_client(cluster):
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    from pyserve.server.app import build_app

    app = build_app(cluster, shutdown_client=False)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            client = openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http)
            before = _routed(cluster)
            res = await asyncio.gather(*[
                client.completions.create(model=cluster.model_name, prompt=f"hello {i}",
                                          max_tokens=3, temperature=0.0)
                for i in range(4)
            ])  # fmt: skip
            assert all(r.choices[0].finish_reason in ("length", "stop") for r in res)
            assert all(a > b for a, b in zip(_routed(cluster), before, strict=True))

    asyncio.run(run())


def test_dead_replicas(cluster):
    async def run():
        # killed silently: the next calls routed to it are retried on the live replica
        ray.kill(cluster.actor(1))
        outs = await asyncio.gather(*[_collect(cluster, f"r{i}", [7, 8, 9]) for i in range(2)])
        assert all(o[-1].finished for o in outs)
        assert not cluster.router.alive(1) and cluster.router.alive(0)
        for i in range(3):
            await _collect(cluster, f"after{i}", [1, 2])
        assert cluster.router.engine_stats(1)["calls"] == 0
        # killed mid-stream: the call fails with a clear error, no hang
        params = SamplingParams(max_tokens=100000, temperature=0.0, ignore_eos=True)
        gen = cluster.generate("stream", [1, 2, 3], params)
        seen = 0
        with pytest.raises(EngineError, match="replica 0 died"):
            async for out in gen:  # NOTE: streamed outputs carry deltas
                seen += len(out.delta_token_ids)
                if seen >= 2:
                    ray.kill(cluster.actor(0))
        with pytest.raises(EngineDeadError):
            await _collect(cluster, "none-left", [1, 2])
        cluster.router.check()

    asyncio.run(asyncio.wait_for(run(), 90))
