"""A real uvicorn server on loopback, driven by the official openai client.

Greedy text and logprobs are checked against Hugging Face transformers running the same
builtin:tiny weights; streaming, n > 1, seeds and program sessions against the API contract.
"""

from __future__ import annotations

import httpx
import pytest
import torch
from conftest import server_metrics as metrics
from conftest import tiny_async_engine, wait_server_idle

openai = pytest.importorskip("openai")

from pyserve.config import EngineConfig  # noqa: E402
from pyserve.model.loader import resolve_model_path  # noqa: E402

MODEL = "builtin:tiny"
PROMPT = "The scheduler looks at"
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def engine():
    eng = tiny_async_engine(max_model_len=512)
    yield eng


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hf_reference():
    """(greedy continuation ids, logprob of each, top-3 ids per step) from transformers."""
    from transformers import LlamaForCausalLM

    from pyserve.model.tokenizer import load_tokenizer

    path = resolve_model_path(MODEL)
    tok = load_tokenizer(MODEL)
    hf = LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval()

    def run(prompt_ids: list[int], n: int):
        with torch.no_grad():
            seq = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)[0]  # fmt: skip
            logits = hf(seq[None]).logits[0, len(prompt_ids) - 1 : -1]
        lps = torch.log_softmax(logits.float(), dim=-1)
        out = seq[len(prompt_ids) :].tolist()
        return out, lps[torch.arange(n), out].tolist(), lps.topk(3, dim=-1).indices.tolist()

    return tok, run


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_completion_greedy_matches_transformers(client, hf_reference):
    tok, run = hf_reference
    ref_ids, ref_lps, ref_top = run(tok.encode(PROMPT), 12)
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, logprobs=3, **GREEDY)
    choice = r.choices[0]
    # NOTE: the streaming detokenizer never emits a trailing incomplete UTF-8 character.
    assert choice.text == tok.decode(ref_ids).rstrip("\ufffd")
    assert choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(tok.encode(PROMPT)) and r.usage.completion_tokens == 12
    lp = choice.logprobs
    assert lp.token_logprobs == pytest.approx(ref_lps, abs=1e-4)
    assert lp.tokens == [tok.decode([t], skip_special_tokens=False) for t in ref_ids]
    for step, top in enumerate(lp.top_logprobs):
        want = {tok.decode([t], skip_special_tokens=False) for t in ref_top[step]}
        assert set(top) == want
        assert max(top.values()) == pytest.approx(lp.token_logprobs[step], abs=1e-5)  # greedy
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


def test_chat_greedy_matches_transformers(client, hf_reference):
    tok, run = hf_reference
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    ref_ids, ref_lps, _ = run(tok.apply_chat_template(messages), 10)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                       logprobs=True, top_logprobs=2, **GREEDY)  # fmt: skip
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == tok.decode(ref_ids).rstrip("\ufffd")
    content = r.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(ref_lps, abs=1e-4)
    assert all(len(c.top_logprobs) == 2 for c in content)
    assert r.usage.prompt_tokens == len(tok.apply_chat_template(messages))


def test_streaming_with_usage_equals_non_streaming(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, **GREEDY)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16,
                                            stream=True, stream_options={"include_usage": True},
                                            **GREEDY))  # fmt: skip
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert "".join(c.choices[0].text for c in chunks[:-1]) == full.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    chat = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "stream please"}], max_tokens=8,
        stream=True, stream_options={"include_usage": True}, **GREEDY))  # fmt: skip
    assert chat[0].choices[0].delta.role == "assistant"
    assert chat[-1].usage.completion_tokens == 8 and chat[-1].usage.total_tokens > 8
    assert sum(c.choices[0].finish_reason == "length" for c in chat if c.choices) == 1


def test_n_choices_stream_and_non_stream(client, engine):
    r = client.completions.create(model=MODEL, prompt="Once", max_tokens=8, n=3, seed=7,
                                  temperature=1.0, extra_body={"ignore_eos": True})  # fmt: skip
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1  # seeds differ per choice
    # the prompt counts once, every choice's tokens count
    assert r.usage.completion_tokens == 24
    assert r.usage.prompt_tokens == len(engine.tokenizer.encode("Once"))
    texts: dict[int, str] = {}
    reasons = {}
    for chunk in client.completions.create(model=MODEL, prompt="Once", max_tokens=8, n=3, seed=7,
                                           temperature=1.0, stream=True,
                                           extra_body={"ignore_eos": True}):  # fmt: skip
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert texts == {c.index: c.text for c in r.choices}  # same seeds, same samples
    assert reasons == {0: "length", 1: "length", 2: "length"}


def test_seed_reproducibility(client):
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, seed=seed,
                                         temperature=1.0, top_p=0.95,
                                         extra_body={"ignore_eos": True, "top_k": 50}
                                         ).choices[0].text  # fmt: skip

    assert sample(1234) == sample(1234)
    assert sample(1234) != sample(4321)


def test_stop_strings_and_penalties(client):
    base = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, **GREEDY)
    text = base.choices[0].text
    stop = text[3:6]
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, stop=[stop], **GREEDY)
    assert r.choices[0].text == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    pen = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0.0,
                                    frequency_penalty=2.0, presence_penalty=2.0,
                                    extra_body={"ignore_eos": True, "min_p": 0.01,
                                                "priority": -1})  # fmt: skip
    assert pen.choices[0].finish_reason == "length"


def test_programs_start_end_and_tags(server, client, engine):
    url = server.url
    pid = httpx.post(url + "/v1/programs").json()["id"]
    named = httpx.post(url + "/v1/programs", json={"program_id": "agent-7"}).json()
    assert named["id"] == "agent-7" and named["object"] == "program"
    assert httpx.post(url + "/v1/programs", json={"program_id": "agent-7"}).status_code == 409
    client.completions.create(model=MODEL, prompt="tool call", max_tokens=4,
                              extra_body={"program_id": pid})  # fmt: skip
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                   max_tokens=4, extra_headers={"X-Program-Id": "agent-7"})  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="thread_id"):  # no policy reads threads
        client.completions.create(model=MODEL, prompt="x", max_tokens=2,
                                  extra_headers={"X-Thread-Id": "main"})  # fmt: skip
    wait_server_idle(url, timeout_s=30.0)
    # NOTE: the engine thread is idle (nothing queued), so reading the core here is race-free.
    for p in (pid, "agent-7"):
        info = engine.engine.program_info(p)
        assert info["service"] > 0 and info["last_completion"] > 0, info
    before = metrics(url).get("pyserve:program_latency_seconds_count", 0)
    gone = httpx.delete(f"{url}/v1/programs/{pid}").json()
    assert gone["deleted"] is True and gone["latency_s"] > 0
    assert httpx.delete(f"{url}/v1/programs/agent-7").status_code == 200
    assert metrics(url)["pyserve:program_latency_seconds_count"] == before + 2
    assert httpx.delete(f"{url}/v1/programs/{pid}").status_code == 404
    # a call naming an unseen (or ended) program starts it again, implicitly
    client.completions.create(model=MODEL, prompt="late", max_tokens=2,
                              extra_body={"program_id": pid})  # fmt: skip
    assert httpx.delete(f"{url}/v1/programs/{pid}").status_code == 200


def test_metrics_count_tokens_and_blocks_are_free(server, client):
    before = metrics(server.url)
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, **GREEDY)
    after = wait_server_idle(server.url, timeout_s=30.0)
    gen = "pyserve:generation_tokens_total"
    assert after[gen] - before.get(gen, 0) == 5
    assert after["pyserve:time_to_first_token_seconds_count"] > 0
    assert after["pyserve:scheduler_step_seconds_count"] > 0
    assert after["pyserve:prefix_cache_queries_total"] >= after["pyserve:prefix_cache_hits_total"]


def test_cli_maps_flags_to_engine_options():
    import argparse

    from pyserve.server.cli import engine_kwargs, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--port", "9", "--policy", "plas", "--block-size", "32",
                              "--kv-cache-bytes", "1024", "--no-prefix-caching",
                              "--policy-option", "starvation_beta=8.5",
                              "--policy-option", "num_queues=4"])  # fmt: skip
    assert args.model == MODEL and args.host == "127.0.0.1" and args.port == 9
    kw = engine_kwargs(args)
    assert kw == {"block_size": 32, "kv_cache_bytes": 1024, "policy": "plas",
                  "enable_prefix_caching": False,
                  "policy_options": {"starvation_beta": 8.5, "num_queues": 4,
                                     "max_programs": 1_000_000}}  # fmt: skip
    EngineConfig.from_kwargs(args.model, **kw)  # every mapped flag is a real engine option
    bad = parser.parse_args(["serve", "--policy-option", "starvation_beta"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        engine_kwargs(bad)
