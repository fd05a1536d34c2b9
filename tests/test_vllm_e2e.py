"""End to end: vLLM's OpenAI api_server on the builtin:tiny Llama folder, driven by the official
openai client with X-Session-ID and vllm_xargs. Contention: one slot; program A has service;
A's next call and a new program B's call wait behind a long call. With the plugin B's call
finishes first; under vLLM's default scheduler A's (it arrived first). Skipped without vLLM."""

import asyncio
import time

import pytest

pytest.importorskip("vllm")

import openai  # noqa: E402

from pyserve.integrations.vllm.server import PLUGIN, api_server, free_port, server_command  # noqa: E402
from pyserve.model.builtin import ensure_builtin  # noqa: E402

pytestmark = pytest.mark.slow

# No proactive preemption here: the order of admission alone decides (preemption is covered by
# tests/test_vllm_plugin.py).
PYSERVE = {"policy": "plas", "max_preemptions_per_step": 0}


async def contention(url: str) -> list[str]:
    """Returns the ids of A's and B's second calls in the order they finished."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none")
    model = (await client.models.list()).data[0].id
    finished: list[str] = []

    async def call(name, tokens, headers=None, xargs=None):
        body = {"ignore_eos": True, **({"vllm_xargs": xargs} if xargs else {})}
        r = await client.completions.create(model=model, prompt=f"call {name}", max_tokens=tokens,
                                            extra_headers=headers, extra_body=body)  # fmt: skip
        assert r.usage.completion_tokens == tokens
        finished.append(name)

    await call("a1", 32, headers={"X-Session-ID": "A"})  # program A attains service
    stream = await client.completions.create(
        model=model, prompt="long call", max_tokens=160, stream=True,
        extra_body={"ignore_eos": True, "vllm_xargs": {"program_id": "L"}})  # fmt: skip
    first = await stream.__anext__()  # the long call holds the only slot
    assert first.choices
    a2 = asyncio.create_task(call("a2", 24, xargs={"program_id": "A"}))  # A via vllm_xargs
    await asyncio.sleep(0.3)
    b1 = asyncio.create_task(call("b1", 24, headers={"X-Session-ID": "B"}))  # a new program
    async for _ in stream:
        pass
    await asyncio.gather(a2, b1)
    return [n for n in finished if n in ("a2", "b1")]


@pytest.mark.timeout(900)
def test_new_program_finishes_first_under_plugin_not_under_default():
    model = str(ensure_builtin("tiny"))
    ports = free_port(), free_port()
    cmds = [server_command(model, ports[0], scheduler_cls=PLUGIN, pyserve=PYSERVE, max_num_seqs=1),
            server_command(model, ports[1], max_num_seqs=1)]  # fmt: skip
    t0 = time.monotonic()
    with api_server(cmds[0], ports[0]) as (plugin_url, plugin_log), \
         api_server(cmds[1], ports[1]) as (default_url, _):  # fmt: skip
        print(f"servers up after {time.monotonic() - t0:.0f}s")
        with open(plugin_log) as f:
            assert "pyserve: program-aware scheduling with policy=plas" in f.read()
        assert asyncio.run(contention(plugin_url)) == ["b1", "a2"]
        assert asyncio.run(contention(default_url)) == ["a2", "b1"]
