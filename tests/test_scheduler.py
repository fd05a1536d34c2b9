"""Scheduler scenarios driven by fake sampled tokens; invariants are checked after every step."""

import numpy as np
import pytest
from conftest import make_scheduler, run_to_end, step

from pyserve import _core


def prompt(n, start=1):
    return np.arange(start, start + n, dtype=np.int32)


def test_plan_layout_matches_flashinfer_definitions():
    s = make_scheduler(block_size=4, max_num_batched_tokens=16)
    s.add_request("a", prompt(6), max_tokens=4)
    s.add_request("b", prompt(9, 100), max_tokens=4)
    for _ in range(6):
        p, _ = step(s)
        bs = 4
        n = len(p["seq_ids"])
        assert p["qo_indptr"][0] == 0 and p["qo_indptr"][-1] == len(p["input_ids"])
        for i in range(n):
            ctx = p["seq_lens"][i]
            pages = p["kv_indptr"][i + 1] - p["kv_indptr"][i]
            assert pages == -(-ctx // bs)
            assert 1 <= p["kv_last_page_len"][i] <= bs
            assert (pages - 1) * bs + p["kv_last_page_len"][i] == ctx
            q0, q1 = p["qo_indptr"][i], p["qo_indptr"][i + 1]
            # positions are the last q tokens of the context; slots agree with the page table
            assert list(p["positions"][q0:q1]) == list(range(ctx - (q1 - q0), ctx))
            pages_i = p["kv_indices"][p["kv_indptr"][i] : p["kv_indptr"][i + 1]]
            for t, pos in zip(range(q0, q1), p["positions"][q0:q1]):
                assert p["slot_mapping"][t] == pages_i[pos // bs] * bs + pos % bs
        # decodes first
        q = np.diff(p["qo_indptr"])
        assert all(q[: p["num_decodes"]] == 1)


def test_chunks_respect_budget_and_decodes_never_stall():
    s = make_scheduler(max_num_batched_tokens=8, num_gpu_blocks=128)
    s.add_request("short", prompt(3), max_tokens=40)
    step(s)  # prefill of "short"
    s.add_request("long", prompt(60, 200), max_tokens=2)
    decoded = 0
    for _ in range(12):
        p, _ = step(s)
        assert len(p["input_ids"]) <= 8
        sid = s.find("short")
        if sid >= 0:
            assert sid in p["seq_ids"][: p["num_decodes"]], "decode stalled behind a prefill"
            decoded += 1
    assert decoded == 12
    run_to_end(s)


def test_prefix_cache_skips_cached_tokens_and_copy_on_write():
    s = make_scheduler(block_size=4)
    s.add_request("a", prompt(10), max_tokens=1)
    run_to_end(s)
    s.add_request("b", prompt(10), max_tokens=1)  # 2 full blocks cached -> 8 tokens skipped
    p, _ = step(s)
    assert list(p["positions"]) == [8, 9]
    s.add_request("c", prompt(8), max_tokens=1)  # whole prompt cached -> copy + 1 token
    p, _ = step(s)
    assert list(p["positions"]) == [7]
    assert p["copy"].shape == (1, 2)
    src, dst = p["copy"][0]
    assert p["kv_indices"][-1] == dst and src != dst
    run_to_end(s)
    st = s.stats()
    assert st["prefix_hit_tokens"] == 8 + 7


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_under_memory_pressure_resumes_state(mode):
    s = make_scheduler(
        num_gpu_blocks=8,
        num_cpu_blocks=32,
        block_size=4,
        preemption_mode=mode,
        enable_prefix_caching=False,
        max_model_len=32,
    )
    for i in range(3):
        s.add_request(f"r{i}", prompt(6, 10 * i + 1), max_tokens=12)
    seen_preempt = False
    history = {}
    for _ in range(200):
        if not s.has_unfinished():
            break
        before = {}
        for rid in ("r0", "r1", "r2"):
            sid = s.find(rid)
            if sid >= 0:
                before[sid] = s.request_info(sid)
        p, fin = step(s)
        if len(p["preempted"]):
            seen_preempt = True
        if mode == "swap" and len(p["swap_in"]):
            assert len(p["swap_out"]) == 0 or set(p["swap_in"][:, 0]).isdisjoint(
                p["swap_out"][:, 1]
            )
        # A resumed request continues exactly where its token sequence says.
        for i, sid in enumerate(p["seq_ids"]):
            info = before[sid]
            q0, q1 = p["qo_indptr"][i], p["qo_indptr"][i + 1]
            start = p["positions"][q0]
            seq = history.setdefault(sid, {})
            for t, pos in zip(p["input_ids"][q0:q1], p["positions"][q0:q1]):
                if pos in seq:
                    assert seq[pos] == t
                seq[pos] = t
            if mode == "swap" and info["status"] == "swapped":
                assert start == info["num_computed_tokens"]
            if mode == "recompute" and info["status"] == "waiting" and info["num_preemptions"]:
                assert start == 0
    assert seen_preempt
    st = s.stats()
    if mode == "swap":
        assert (
            st["num_preemptions_swap"] > 0 and st["blocks_swapped_in"] == st["blocks_swapped_out"]
        )
    else:
        assert st["num_preemptions_recompute"] > 0
    assert st["gpu_blocks_used"] == 0 and st["cpu_blocks_free"] == 32


def test_priority_order_and_preempted_keeps_place():
    s = make_scheduler(policy="priority", max_num_seqs=1, max_preemptions_per_step=0)
    s.add_request("low", prompt(4), max_tokens=2, priority=5, arrival_time=0.0)
    s.add_request("high", prompt(4, 50), max_tokens=2, priority=1, arrival_time=1.0)
    p, _ = step(s)
    assert p["seq_ids"][0] == s.find("high")
    done = run_to_end(s)
    assert set(done) == {"low", "high"}


def test_preempted_request_not_overtaken_by_same_priority_newcomer():
    # vllm#41951: memory pressure preempts "a"; newcomer "c" (same priority, later) must wait.
    s = make_scheduler(
        policy="priority",
        num_gpu_blocks=4,
        block_size=4,
        max_model_len=16,
        enable_prefix_caching=False,
    )
    s.add_request("a", prompt(4), max_tokens=8, arrival_time=0.0)
    s.add_request("b", prompt(4, 20), max_tokens=8, arrival_time=0.5)
    first_seen = {}
    for k in range(40):
        p, fin = step(s)
        if len(p["preempted"]) and s.find("c") < 0:
            assert list(p["preempted"]) == [s.find("b")]  # the worse one is preempted
            s.add_request("c", prompt(4, 40), max_tokens=1, arrival_time=1.0)
            first_seen.clear()
        ids = [s.request_info(int(i))["request_id"] for i in p["seq_ids"]]
        for pos, rid in enumerate(ids):
            first_seen.setdefault(rid, (k, pos))
        if not s.has_unfinished():
            break
    # After the preemption "b" is admitted no later than "c", and ahead of it in the same step.
    assert first_seen["b"] < first_seen["c"], first_seen


def test_high_priority_arrival_preempts_full_batch_bounded():
    # vllm#40004: batch full (max_num_seqs=2) of low-priority work, not memory pressure.
    s = make_scheduler(
        policy="priority",
        max_num_seqs=2,
        max_preemptions_per_step=1,
        num_gpu_blocks=256,
        min_steps_between_preemptions=0,
    )
    s.add_request("l1", prompt(4), max_tokens=50, priority=9)
    s.add_request("l2", prompt(4, 20), max_tokens=50, priority=9)
    step(s)
    s.add_request("h1", prompt(4, 40), max_tokens=2, priority=0)
    s.add_request("h2", prompt(4, 60), max_tokens=2, priority=0)
    p, _ = step(s)
    assert len(p["preempted"]) == 1  # bounded per step
    assert s.find("h1") in p["seq_ids"]
    p, _ = step(s)
    assert s.find("h2") in p["seq_ids"]
    run_to_end(s)


def test_fcfs_never_preempts_proactively():
    s = make_scheduler(max_num_seqs=1)
    s.add_request("a", prompt(4), max_tokens=10)
    step(s)
    s.add_request("b", prompt(4, 30), max_tokens=5)
    for _ in range(4):
        p, _ = step(s)
        assert len(p["preempted"]) == 0 and list(p["seq_ids"]) == [s.find("a")]


@pytest.mark.parametrize("state", ["waiting", "prefill", "decode", "swapped", "in_flight"])
def test_abort_in_every_state(state):
    s = make_scheduler(
        num_gpu_blocks=6,
        num_cpu_blocks=16,
        block_size=4,
        max_num_batched_tokens=4,
        preemption_mode="swap",
        max_model_len=24,
    )
    s.add_request("x", prompt(10), max_tokens=10)
    if state == "prefill":
        step(s)
    elif state == "decode":
        for _ in range(3):
            step(s)
        assert s.request_info(s.find("x"))["num_computed_tokens"] >= 10
    elif state == "swapped":
        for _ in range(3):
            step(s)
        s.add_request("y", prompt(16, 50), max_tokens=4, arrival_time=-1.0)  # earlier arrival
        for _ in range(10):
            step(s)
            if s.request_info(s.find("x"))["status"] == "swapped":
                break
        assert s.request_info(s.find("x"))["status"] == "swapped"
    if state == "in_flight":
        s.schedule()
        s.abort("x")
        s.check_invariants()
    else:
        s.abort("x")
        s.check_invariants()
    with pytest.raises(ValueError):
        s.abort("x")
    run_to_end(s)


def test_abort_between_schedule_and_update_skips_its_token():
    s = make_scheduler()
    s.add_request("x", prompt(4), max_tokens=5)
    s.add_request("y", prompt(4, 9), max_tokens=5)
    p = s.schedule()
    n = p.num_samples
    s.abort("x")
    rep = s.update(np.full(n, 3, dtype=np.int32), 0.01)
    assert rep.finished == [] and list(rep.token_seq_ids) == [s.find("y")]
    s.check_invariants()
    assert s.request_info(s.find("y"))["output_token_ids"] == [3]
    run_to_end(s)


def test_stop_conditions():
    s = make_scheduler(eos=(0,))
    s.add_request("eos", prompt(4), max_tokens=10)
    s.add_request("ign", prompt(4, 10), max_tokens=3, ignore_eos=True)
    s.add_request("min", prompt(4, 20), max_tokens=10, min_tokens=2)
    s.add_request("stp", prompt(4, 30), max_tokens=10, stop_token_ids=[5])
    done = run_to_end(s, token=0)
    assert done["eos"][0] == "stop" and done["eos"][1]["output_token_ids"] == [0]
    assert done["ign"][0] == "length" and len(done["ign"][1]["output_token_ids"]) == 3
    assert done["min"][0] == "stop" and len(done["min"][1]["output_token_ids"]) == 2
    s.add_request("stp2", prompt(4, 30), max_tokens=10, stop_token_ids=[5])
    done = run_to_end(s, token=5)
    assert done["stp2"][0] == "stop"


def test_max_model_len_stops():
    s = make_scheduler(max_model_len=8)
    s.add_request("a", prompt(6), max_tokens=100)
    done = run_to_end(s)
    assert done["a"][0] == "length" and len(done["a"][1]["output_token_ids"]) == 2


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("num_gpu_blocks", 0, "num_gpu_blocks"),
        ("block_size", 12, "power of two"),
        ("max_num_batched_tokens", 0, "max_num_batched_tokens"),
        ("max_num_seqs", 0, "max_num_seqs"),
        ("policy", "nope", "unknown policy"),
        ("max_model_len", 100000, "max_model_len"),
    ],
)
def test_invalid_config(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        make_scheduler(**{field: value})


def test_bad_requests_leave_state_unchanged():
    s = make_scheduler(max_model_len=16)
    s.add_request("a", prompt(4))
    before = s.stats()
    with pytest.raises(ValueError, match="duplicate"):
        s.add_request("a", prompt(4))
    with pytest.raises(ValueError, match="empty prompt"):
        s.add_request("b", np.zeros(0, dtype=np.int32))
    with pytest.raises(ValueError, match="longer than max_model_len"):
        s.add_request("c", prompt(17))
    with pytest.raises(ValueError, match="unknown request id"):
        s.abort("zzz")
    with pytest.raises(ValueError, match="preemption_mode"):
        _core.SchedulerConfig().preemption_mode = "bogus"
    assert s.stats() == before
    s.check_invariants()
    with pytest.raises(ValueError, match="sampled tokens"):
        s.schedule()
        s.update(np.zeros(5, dtype=np.int32), 0.0)


def test_finish_stop_is_counted_as_stop_and_reported():
    s = make_scheduler()
    s.add_request("a", prompt(4), max_tokens=5)
    p = s.schedule()
    rep = s.update(np.full(p.num_samples, 3, dtype=np.int32), 0.01)
    assert list(rep.first_scheduled) == [s.find("a")] and list(rep.tokens) == [3]
    assert rep.gpu_blocks_free < rep.gpu_blocks_total and rep.num_running == 1
    f = s.finish("a", "stop")
    assert (f.request_id, f.reason, f.num_output_tokens) == ("a", "stop", 1)
    assert f.service == pytest.approx(0.01) and f.program_service == pytest.approx(0.01)
    st = s.stats()
    assert (st["num_finished_stop"], st["num_finished_abort"]) == (1, 0)
    assert s.find("a") < 0 and st["gpu_blocks_used"] == 0
    with pytest.raises(ValueError, match="unknown request"):
        s.finish("a", "stop")
    s.add_request("b", prompt(4), max_tokens=5)
    with pytest.raises(ValueError, match="finish reason"):
        s.finish("b", "bogus")
    assert len(s.programs) == 0  # an untagged call never enters the program table
    assert s.abort("b").reason == "abort" and s.stats()["num_finished_abort"] == 1
    s.check_invariants()
