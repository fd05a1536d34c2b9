"""Prompt logprobs (``SamplingParams.prompt_logprobs``; ``echo`` + ``logprobs`` over HTTP) equal
Hugging Face transformers' log-softmax over the same builtin:tiny weights, across chunked
prefill, and bypass the prefix cache."""

from __future__ import annotations

import httpx
import pytest
import torch
from conftest import tiny_async_engine, wait_server_idle

from pyserve import LLM, SamplingParams
from pyserve.engine import prompt_logprobs
from pyserve.model.loader import resolve_model_path
from pyserve.server.app import build_app
from pyserve.server.runner import ServerThread

openai = pytest.importorskip("openai")

MODEL = "builtin:tiny"
PROMPT = "The scheduler looks at the queue and picks the call with the lowest priority value."
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hf_logprobs():
    """token ids -> ``[L, V]`` log-softmax of transformers' logits (row p scores token p+1)."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(resolve_model_path(MODEL),
                                          attn_implementation="eager").eval()  # fmt: skip

    def run(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0].float().log_softmax(-1)

    return run


def test_offline_prompt_logprobs_match_transformers_across_chunks(hf_logprobs, monkeypatch):
    # NOTE: 16 tokens per step splits each prompt's prefill over several steps, and each step's
    # rows are scored 5 at a time (several logits slices per step).
    monkeypatch.setattr(prompt_logprobs, "SCORE_ROWS", 5)
    llm = LLM(MODEL, max_num_batched_tokens=16, block_size=4, kv_cache_bytes=8 << 20)
    ids = llm.tokenizer.encode(PROMPT)
    assert len(ids) > 32
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=3)
    first, again = llm.generate([PROMPT, PROMPT], params, use_tqdm=False)
    ref = hf_logprobs(ids)
    pl = first.prompt_logprobs
    assert len(pl) == len(ids) and pl[0] is None
    for p in range(1, len(ids)):
        entry, row = pl[p], ref[p - 1]
        assert entry[ids[p]].logprob == pytest.approx(row[ids[p]].item(), abs=1e-4)
        assert entry[ids[p]].rank == int((row > row[ids[p]]).sum()) + 1
        top = row.topk(3)
        ranked = {t: lp for t, lp in entry.items() if lp.rank <= 3}
        assert set(ranked) == set(top.indices.tolist())
        assert [ranked[t].logprob for t in top.indices.tolist()] == pytest.approx(
            top.values.tolist(), abs=1e-4)
        assert entry[ids[p]].decoded_token == llm.tokenizer.decode([ids[p]],
                                                                  skip_special_tokens=False)
    # the same prompt again is not served from the prefix cache: every position is computed
    assert again.num_cached_tokens == 0 and llm.engine.stats()["prefix_hit_tokens"] == 0
    assert [e[t].logprob for e, t in zip(again.prompt_logprobs[1:], ids[1:])] == pytest.approx(
        [e[t].logprob for e, t in zip(pl[1:], ids[1:])], abs=1e-5)
    one = llm.generate({"prompt_token_ids": ids[:1]}, params, use_tqdm=False)[0]
    assert one.prompt_logprobs == [None]
    plain = llm.generate(PROMPT, SamplingParams(max_tokens=1), use_tqdm=False)[0]
    assert plain.prompt_logprobs is None
    llm.engine.check_invariants()
    assert llm.engine.stats()["gpu_blocks_used"] == 0
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)


@pytest.fixture(scope="module")
def server():
    with ServerThread(build_app(tiny_async_engine(max_num_batched_tokens=16))) as srv:
        yield srv


def test_echo_with_logprobs_covers_the_prompt(server, hf_logprobs):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60,
                           max_retries=0)  # fmt: skip
    tok = httpx.post(server.url + "/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    ref = hf_logprobs(tok)
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, logprobs=2,
                                  echo=True, temperature=0)  # fmt: skip
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(PROMPT)
    assert len(lp.tokens) == len(tok) + 3 and len(lp.top_logprobs) == len(tok) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = [ref[p - 1, tok[p]].item() for p in range(1, len(tok))]
    assert lp.token_logprobs[1 : len(tok)] == pytest.approx(want, abs=1e-4)
    # NOTE: keys are token texts; two byte tokens may both read "\ufffd" and share one key
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs[1:])
    tops = [max(t.values()) for t in lp.top_logprobs[1 : len(tok)]]
    assert tops == pytest.approx([ref[p - 1].max().item() for p in range(1, len(tok))], abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset[len(tok)] == len(PROMPT)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, logprobs=2,
                                            echo=True, temperature=0, stream=True))  # fmt: skip
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.token_logprobs]  # fmt: skip
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-5)
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    big = httpx.post(server.url + "/v1/completions", json={
        "model": MODEL, "prompt": [PROMPT] * 8, "echo": True, "logprobs": 20, "max_tokens": 1,
        "n": 128})  # fmt: skip
    assert big.status_code == 400, big.text
    wait_server_idle(server.url, timeout_s=10)
