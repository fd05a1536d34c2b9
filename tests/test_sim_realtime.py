"""The server on the simulated GPU (``--executor sim``): the official openai client against a real
uvicorn server whose steps are paced by the llama3-8b-h100 cost model in wall time."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
from conftest import server_metrics, wait_server_idle

openai = pytest.importorskip("openai")

from pyserve.config import EngineConfig  # noqa: E402
from pyserve.engine import Engine  # noqa: E402
from pyserve.engine.async_engine import AsyncEngine  # noqa: E402
from pyserve.engine.messages import AddCall, CallSpec  # noqa: E402
from pyserve.sampling_params import SamplingParams  # noqa: E402
from pyserve.server.cli import register  # noqa: E402
from pyserve.sim.cost_model import CostModel  # noqa: E402
from pyserve.sim.presets import get_preset  # noqa: E402
from pyserve.sim.trace import _draw, stable_seed  # noqa: E402
from pyserve.sim.workloads import chat_output_tokens  # noqa: E402

PRESET = "llama3-8b-h100"
SIM = {"executor": "sim", "preset": PRESET}


@pytest.fixture(scope="module")
def engine():
    eng = AsyncEngine.from_config(EngineConfig.from_kwargs("builtin:tiny", **SIM))
    yield eng


def predicted_seconds(prompt_len: int, out: int, block_size: int = 16) -> tuple[float, float]:
    """The cost model's (prefill step, out - 1 decode steps) seconds of one call alone."""
    cost = CostModel(get_preset(PRESET), block_size)
    one = np.array([1])
    prefill = cost.step_time(np.array([prompt_len]), np.array([prompt_len]))
    decode = sum(cost.step_time(one, np.array([prompt_len + k]), 1) for k in range(1, out))
    return prefill, decode


def test_engine_draws_the_simulators_tokens_and_paces_steps():
    eng = Engine(EngineConfig.from_kwargs("builtin:tiny", **SIM))
    ids = list(range(100, 400))  # 300 prompt tokens
    eng.handle(AddCall(CallSpec("r1", ids, SamplingParams(max_tokens=40))))
    eng.handle(AddCall(CallSpec("r2", "no max_tokens", SamplingParams(max_tokens=None, seed=7))))
    got: dict[str, list[int]] = {"r1": [], "r2": []}
    done = {}
    t0 = time.monotonic()
    while eng.has_unfinished():
        rep = eng.step()
        for rid, tok in zip(rep.request_ids, rep.token_ids):
            got[rid].append(int(tok))
        done.update({f.request_id: f.reason for f in rep.finished})
    wall = time.monotonic() - t0
    table = eng.runner.table
    want = table[_draw(40, stable_seed("realtime", "r1"), 0, table.shape[0])]
    assert got["r1"] == want.tolist() and done["r1"] == "length"
    # r2: the ShareGPT length draw of its seed, EOS last, finish reason stop
    assert len(got["r2"]) == chat_output_tokens(7) and got["r2"][-1] == eng.eos_token_ids[0]
    assert done["r2"] == "stop"
    st = eng.stats()
    assert wall >= st["sim_modeled_seconds_total"] > 0
    assert wall - st["sim_modeled_seconds_total"] < 0.25 + 0.2 * st["sim_modeled_seconds_total"]
    assert st["gpu_blocks_used"] == 0
    # the preset's KV: what fits an H100 after Llama-3.1-8B's weights
    assert st["gpu_blocks_total"] == CostModel(get_preset(PRESET), 16).kv_capacity_blocks()
    eng.check_invariants()


def test_chat_and_completions_stream_with_the_openai_client(client, server):
    r = client.chat.completions.create(model="builtin:tiny", max_tokens=12,
                                       messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content
    chunks = list(client.completions.create(model="builtin:tiny", prompt="Once upon", max_tokens=9,
                                            stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 9
    stream = client.chat.completions.create(model="builtin:tiny", stream=True,
                                            messages=[{"role": "user", "content": "go"}],
                                            max_tokens=5)  # fmt: skip
    deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(deltas)
    wait_server_idle(server.url, 10)


def test_wall_latency_matches_the_cost_model(client):
    prompt, out = [10 + (7 * i) % 500 for i in range(2000)], 40  # 2000 prompt tokens
    t0 = time.monotonic()
    times = [time.monotonic() - t0 for c in client.completions.create(
        model="builtin:tiny", prompt=prompt, max_tokens=out, stream=True) if c.choices]  # fmt: skip
    prefill, decode = predicted_seconds(len(prompt), out)
    assert len(times) == out and decode > 0.2
    # NOTE: the prefill step is paced too; HTTP and request parsing come on top of it
    assert times[0] >= prefill
    # the 39 decode steps: paced on the simulated GPU's clock, so host jitter does not add up
    span = times[-1] - times[0]
    assert abs(span - decode) < 0.15 * decode + 0.02, (span, decode)


def test_prefix_hits_across_a_session(client, server):
    ctx = [{"role": "system", "content": "You are a coding agent. " * 60},
           {"role": "user", "content": "fix the bug"}]  # fmt: skip
    first = client.chat.completions.create(model="builtin:tiny", messages=ctx, max_tokens=4,
                                           extra_body={"session_id": "agent-1"})  # fmt: skip
    ctx += [{"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "now run the tests"}]  # fmt: skip
    second = client.chat.completions.create(model="builtin:tiny", messages=ctx, max_tokens=4,
                                            extra_body={"session_id": "agent-1"})  # fmt: skip
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens >= 500
    assert cached >= first.usage.prompt_tokens - 32, (cached, first.usage.prompt_tokens)
    m = wait_server_idle(server.url, 10)
    assert m["pyserve:kv_cache_blocks_used"] == 0
    assert m["pyserve:sim_modeled_seconds_total"] > 0 and "pyserve:sim_step_lag_seconds" in m


def test_structured_output_draws_only_what_the_grammar_allows(client):
    schema = {"type": "string", "enum": ["yes", "no"]}
    r = client.chat.completions.create(
        model="builtin:tiny", messages=[{"role": "user", "content": "ok?"}], max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )  # fmt: skip
    assert r.choices[0].message.content in ('"yes"', '"no"')
    assert r.choices[0].finish_reason == "stop"


def test_logprobs_are_the_draws(client):
    r = client.completions.create(model="builtin:tiny", prompt="abc", max_tokens=3, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == 3
    assert len({round(x, 4) for x in lp.token_logprobs}) == 1 and lp.token_logprobs[0] < -3
    assert all(len(top) == 2 for top in lp.top_logprobs)
    # prompt logprobs (echo): under the same uniform draw
    r = client.completions.create(model="builtin:tiny", prompt="abc", max_tokens=2, logprobs=1,
                                  echo=True)  # fmt: skip
    lp = r.choices[0].logprobs
    n_prompt = r.usage.prompt_tokens
    assert len(lp.token_logprobs) == n_prompt + 2 and lp.token_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])


def test_metrics_and_invariants_after_the_module(engine, server):
    m = server_metrics(server.url)
    assert m["pyserve:kv_cache_blocks_total"] > 20000  # an H100's KV, not the host's
    engine.engine.check_invariants()


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


@pytest.mark.parametrize("argv, message", [
    (["--executor", "sim"], "--executor sim needs --preset"),
    (["--executor", "sim", "--preset", "no-such-gpu"], "unknown preset 'no-such-gpu'"),
    (["--preset", PRESET], "--preset needs --executor sim"),
    (["--executor", "sim", "--preset", PRESET, "--dtype", "bfloat16"], "--dtype has no effect"),
])  # fmt: skip
def test_serve_cli_errors(argv, message, capsys):
    args = _serve_args(*argv)
    assert args.func(args) == 2
    assert message in capsys.readouterr().err
