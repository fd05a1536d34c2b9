"""End-to-end engine on builtin:tiny: greedy invariance under batching, chunking, prefix hits and
preemption; seeded sampling; offline API; bad input."""

import pytest

from pyserve import LLM, SamplingParams
from pyserve.engine.messages import AddCall, CallSpec

PROMPTS = [
    "Hello world, this is a test of the engine",
    "The quick brown fox jumps over the lazy dog again and again",
    "def add(a, b): return a + b",
    "Once upon a time",
    "Hello world, this is a test of something else entirely",
]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def reference():
    """Each prompt alone, unlimited budget, no prefix caching."""
    llm = LLM("builtin:tiny", kv_cache_bytes=16 << 20, enable_prefix_caching=False)
    return [llm.generate(p, GREEDY, use_tqdm=False)[0].token_ids for p in PROMPTS]


def check_invariants(llm):
    llm.engine.check_invariants()
    st = llm.engine.stats()
    assert st["gpu_blocks_used"] == 0 and st["num_running"] == st["num_waiting"] == 0


@pytest.mark.parametrize("budget", [16, 64, 4096])
@pytest.mark.parametrize("prefix", [False, True])
def test_batched_greedy_equals_alone(reference, budget, prefix):
    llm = LLM("builtin:tiny", kv_cache_bytes=16 << 20, max_num_batched_tokens=budget,
              enable_prefix_caching=prefix)  # fmt: skip
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.token_ids for o in outs] == reference
    if prefix:  # second pass hits the prefix cache
        outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        assert [o.token_ids for o in outs] == reference
        assert llm.engine.stats()["prefix_hit_tokens"] > 0
    check_invariants(llm)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_greedy_survives_preemption(reference, mode):
    # 18 blocks of 4 tokens: five requests of ~30-60 tokens cannot all fit at once.
    llm = LLM("builtin:tiny", num_gpu_blocks=18, block_size=4, preemption_mode=mode,
              max_num_batched_tokens=32, max_model_len=72, swap_space_bytes=4 << 20)  # fmt: skip
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    st = llm.engine.stats()
    key = "num_preemptions_swap" if mode == "swap" else "num_preemptions_recompute"
    assert st[key] > 0, st
    assert [o.token_ids for o in outs] == reference
    check_invariants(llm)


def test_seeded_sampling_reproducible_across_batches():
    llm = LLM("builtin:tiny", kv_cache_bytes=16 << 20)
    p = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True)
    alone = llm.generate(PROMPTS[0], p, use_tqdm=False)[0].token_ids
    mixed = llm.generate(
        PROMPTS, [p] + [SamplingParams(max_tokens=9, temperature=1.0)] * 4, use_tqdm=False
    )
    assert mixed[0].token_ids == alone
    other = llm.generate(
        PROMPTS[0],
        SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=99, ignore_eos=True),
        use_tqdm=False,
    )
    assert other[0].token_ids != alone


def test_outputs_carry_text_logprobs_timings_and_n():
    llm = LLM("builtin:tiny", kv_cache_bytes=16 << 20)
    out = llm.generate(
        ["Hi there"],
        SamplingParams(max_tokens=5, logprobs=3, temperature=0, ignore_eos=True),
        use_tqdm=False,
    )[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5
    assert out.text == llm.tokenizer.decode(out.token_ids)
    assert len(out.logprobs) == 5 and all(len(lp.top) == 3 for lp in out.logprobs)
    assert all(lp.token_id == t for lp, t in zip(out.logprobs, out.token_ids))
    assert out.metrics.ttft > 0 and len(out.metrics.inter_token_times) == 4
    multi = llm.generate("Hi", SamplingParams(n=3, max_tokens=6, seed=5), use_tqdm=False)[0]
    assert [o.index for o in multi.outputs] == [0, 1, 2] and multi.finished
    assert len({tuple(o.token_ids) for o in multi.outputs}) > 1


def test_stop_strings_and_token_ids():
    llm = LLM("builtin:tiny", kv_cache_bytes=16 << 20)
    free = llm.generate("Hello", SamplingParams(max_tokens=30, temperature=0, ignore_eos=True),
                        use_tqdm=False)[0]  # fmt: skip
    stop_tok = free.token_ids[5]
    out = llm.generate(
        "Hello",
        SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[stop_tok]),
        use_tqdm=False,
    )[0]
    assert out.finish_reason == "stop" and out.token_ids[-1] == stop_tok
    text = free.text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if stop.strip():
        out = llm.generate(
            "Hello",
            SamplingParams(max_tokens=30, temperature=0, stop=[stop], ignore_eos=True),
            use_tqdm=False,
        )[0]
        assert out.finish_reason == "stop" and stop not in out.text
        assert text.startswith(out.text)
    check_invariants(llm)


def test_program_context_tags_calls():
    llm = LLM("builtin:tiny", kv_cache_bytes=16 << 20, policy="plas")
    with llm.program() as p:
        pid = p.id
        p.generate("first call", SamplingParams(max_tokens=4))
        info = llm.engine.program_info(p.id)
        assert info["service"] > 0 and info["active_calls"] == 0
        p.generate("second call", SamplingParams(max_tokens=4))
    assert llm.engine.program_info(pid) is None and not llm.engine.has_program(pid)
    with pytest.raises(ValueError, match="unknown program"):
        llm.end_program("nope")


def test_bad_input_is_rejected_before_scheduling():
    llm = LLM("builtin:tiny", kv_cache_bytes=16 << 20, max_model_len=32)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate("x" * 200, use_tqdm=False)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=-1)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(temperature=-0.5)
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([{"prompt_token_ids": [1, 2, 10**9]}], use_tqdm=False)
    with pytest.raises(ValueError, match="unknown engine option"):
        LLM("builtin:tiny", bogus_option=1)
    check_invariants(llm)


def test_ltr_model_scores_requests_on_arrival(tmp_path):
    from pyserve.ltr import Ranker

    prompts = [f"write {w} words about cats" for w in ("few", "many")] * 40
    lengths = [5 if "few" in p else 400 for p in prompts]
    ranker = Ranker.create("hash", n_buckets=1 << 10)
    ranker.fit(prompts, lengths, epochs=4, lr=5e-2, seed=0)
    ranker.save(tmp_path / "r")
    llm = LLM("builtin:tiny", kv_cache_bytes=16 << 20, policy="ltr", ltr_model=str(tmp_path / "r"),
              max_num_seqs=1)  # fmt: skip
    eng = llm.engine
    p = SamplingParams(max_tokens=2)
    eng.handle(AddCall(CallSpec("long", "write many words about cats", p)))
    eng.handle(AddCall(CallSpec("short", "write few words about cats", p)))
    first = eng.step()
    assert list(first.first_scheduled) == ["short"]  # predicted shorter runs earlier
    while eng.has_unfinished():
        eng.step()
    check_invariants(llm)
