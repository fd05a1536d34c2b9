"""Host tier of the prefix cache and KV retention: exact tokens after tier moves on builtin:tiny,
each retention policy's decisions in scenarios, invariants over both tiers."""

import numpy as np
import pytest

from pyserve import LLM, SamplingParams, _core

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
LONG = "The quick brown fox jumps over the lazy dog while the cat watches from the old fence"
FILLERS = [f"Filler prompt number {i} talks about something unrelated to foxes at all" for i in
           range(3)]  # fmt: skip


def test_prompt_served_from_host_tier_matches_recompute():
    # 24 GPU blocks of 4 tokens: the fillers evict LONG's cached blocks to the host tier.
    llm = LLM("builtin:tiny", num_gpu_blocks=24, block_size=4, max_model_len=96,
              swap_space_bytes=4 << 20, kv_retention="lru")  # fmt: skip
    want = llm.generate(LONG, GREEDY, use_tqdm=False)[0].token_ids  # computed: nothing cached
    assert llm.engine.stats()["prefix_hit_tokens"] == 0
    for f in FILLERS:
        llm.generate(f, GREEDY, use_tqdm=False)
        llm.engine.check_invariants()
    st = llm.engine.stats()
    assert st["blocks_offloaded"] > 0 and st["cpu_blocks_cached"] > 0, st
    assert llm.generate(LONG, GREEDY, use_tqdm=False)[0].token_ids == want
    st = llm.engine.stats()
    assert st["blocks_loaded"] > 0 and st["host_hit_tokens"] > 0, st
    llm.engine.check_invariants()
    assert st["gpu_blocks_used"] == 0


def _core_config(retention: str, gpu: int = 16, cpu: int = 64) -> _core.SchedulerConfig:
    c = _core.SchedulerConfig()
    c.num_gpu_blocks, c.num_cpu_blocks, c.block_size = gpu, cpu, 4
    c.max_model_len, c.max_num_batched_tokens = 64, 64
    c.kv_retention = retention
    return c


def _run_call(s, rid: str, prompt: list[int], program: str = "", out: int = 2) -> None:
    s.add_request(rid, np.array(prompt, dtype=np.int32), max_tokens=out, ignore_eos=True,
                  program_id=program, arrival_time=s.now)  # fmt: skip
    while s.find(rid) >= 0:
        plan = s.schedule()
        s.update(np.full(len(plan.sample_seq_idx), 7, dtype=np.int32), 0.01)
        s.check_invariants()


def test_unknown_retention_is_rejected():
    c = _core_config("lru")
    c.kv_retention = "mru"
    with pytest.raises(ValueError, match="kv_retention"):
        c.validate()
    assert sorted(_core.retention_names()) == ["lru", "program", "ttl"]


@pytest.mark.parametrize("retention", ["lru", "ttl", "program"])
def test_host_tier_hit_after_eviction(retention):
    s = _core.Scheduler(_core_config(retention), [])
    a = list(range(1, 33))  # 8 full blocks
    _run_call(s, "a", a, program="pa")
    s.release_all_pins()
    for i in range(4):  # fill the GPU with other programs' calls
        _run_call(s, f"f{i}", [100 + i] * 32, program=f"pf{i}")
        s.release_all_pins()
    assert s.stats()["blocks_offloaded"] > 0
    _run_call(s, "a2", a + [40, 41], program="pa")
    st = s.stats()
    assert st["blocks_loaded"] > 0 and st["host_hit_tokens"] > 0, st


def test_lru_without_host_tier_drops_and_never_pins():
    s = _core.Scheduler(_core_config("lru", cpu=0), [])
    _run_call(s, "a", list(range(1, 33)), program="pa")
    s.mark_coming_back("pa")
    assert s.stats()["gpu_blocks_pinned"] == 0
    for i in range(4):
        _run_call(s, f"f{i}", [100 + i] * 32, program=f"pf{i}")
    assert s.stats()["blocks_offloaded"] == 0 and s.stats()["cpu_blocks_cached"] == 0


def test_ttl_pins_a_live_program_then_expires():
    c = _core_config("ttl")
    c.retention_ttl_max_s, c.retention_ttl_scale, c.retention_reload_s_per_token = 5.0, 100.0, 1e-3
    s = _core.Scheduler(c, [])
    _run_call(s, "a", list(range(1, 33)), program="pa")
    pinned = s.stats()["gpu_blocks_pinned"]
    assert pinned == 8  # 34 tokens: 8 full cached blocks, pinned for min(5, 100*0.034*free) s
    _run_call(s, "u", [9] * 8)  # an untagged call (its own program, gone at once): no pin
    assert s.stats()["gpu_blocks_pinned"] == pinned
    s.advance_clock(s.now + 10.0)
    s.schedule()
    s.update(np.zeros(0, dtype=np.int32), 0.0)
    assert s.stats()["gpu_blocks_pinned"] == 0


def test_ttl_pins_give_way_under_pressure():
    s = _core.Scheduler(_core_config("ttl", gpu=16), [])
    _run_call(s, "a", list(range(1, 33)), program="pa")
    assert s.stats()["gpu_blocks_pinned"] == 8
    _run_call(s, "b", [50 + (i % 7) for i in range(60)], program="pb")  # needs 15 of 16 blocks
    assert s.program_info("pb") is not None
    s.check_invariants()


def test_program_pins_only_when_coming_back_and_drops_ended_programs():
    s = _core.Scheduler(_core_config("program"), [])
    _run_call(s, "a", list(range(1, 33)), program="pa")
    assert s.stats()["gpu_blocks_pinned"] == 0  # ended the turn: no pin
    s.add_request("b", np.arange(200, 232, dtype=np.int32), max_tokens=2, ignore_eos=True,
                  program_id="pb")  # fmt: skip
    s.mark_coming_back("pb")  # its call ends in a tool call
    assert s.program_info("pb")["coming_back"]
    while s.find("b") >= 0:
        plan = s.schedule()
        s.update(np.full(len(plan.sample_seq_idx), 7, dtype=np.int32), 0.01)
    assert s.stats()["gpu_blocks_pinned"] == 8
    s.end_program("pb")  # an ended program's pin goes, and its blocks are not kept on the host
    assert s.stats()["gpu_blocks_pinned"] == 0
    before = s.stats()["blocks_offloaded"]
    for i in range(4):
        _run_call(s, f"f{i}", [100 + i] * 32, program=f"pf{i}")
        s.end_program(f"pf{i}")  # ended programs: their blocks drop instead of moving
    st = s.stats()
    # only pa's blocks (a live program) may have moved to the host tier: at most 8
    assert 0 < st["blocks_offloaded"] - before <= 8, st
    s.check_invariants()


def test_program_prefetches_host_blocks_of_a_waiting_call():
    c = _core_config("program", gpu=40)
    c.max_num_seqs = 1
    s = _core.Scheduler(c, [])
    _run_call(s, "a", list(range(1, 33)), program="pa")
    for i in range(9):
        _run_call(s, f"f{i}", [100 + i] * 32, program=f"pf{i}")
    assert s.stats()["blocks_offloaded"] > 0
    # a long call occupies the only seat; pa's next call waits and is prefetched meanwhile
    s.add_request("long", np.full(8, 300, dtype=np.int32), max_tokens=20, ignore_eos=True)
    s.schedule()
    s.update(np.zeros(1, dtype=np.int32), 0.01)
    s.add_request("a2", np.array(list(range(1, 33)) + [5], dtype=np.int32), max_tokens=1,
                  ignore_eos=True, program_id="pa")  # fmt: skip
    plan = s.schedule()
    assert len(plan.swap_in) > 0
    s.update(np.full(len(plan.sample_seq_idx), 7, dtype=np.int32), 0.01)
    assert s.stats()["blocks_prefetched"] > 0
    s.check_invariants()
