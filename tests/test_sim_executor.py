"""SimExecutor + program driver + bench CLI: trace semantics, determinism, invariants, speed."""

import json
import time

import numpy as np
import pytest

from pyserve import _core
from pyserve.config import parse_policy_options
from pyserve.sim import bench_cli
from pyserve.sim.cost_model import CostModel
from pyserve.sim.driver import Driver, TokenBook
from pyserve.sim.executor import SimExecutor, SimSetup, build_core_config, simulate
from pyserve.sim.presets import get_preset
from pyserve.sim.report import summarize, sustained_rate, sweep_tables
from pyserve.sim.trace import Call, Program, ProgramTokens, write_trace
from pyserve.sim.workloads import generate

BS = 16


def _dag(arrival=0.0):
    """a -> (b, tool 0.5), (c, tool 1.0) -> d (tool 0.25, joins b and c)."""
    return Program(
        "dag",
        arrival,
        (
            Call("a", 40, 5),
            Call("b", 10, 30, ("a",), True, 0.5),
            Call("c", 12, 8, ("a",), True, 1.0),
            Call("d", 7, 4, ("b", "c"), False, 0.25),
        ),
    )


def _index(r, cid):
    return r.call_ids.index(cid)


def test_dag_release_order_and_tool_delays():
    r = simulate([_dag(arrival=2.0)], "fcfs", check_invariants=True)
    a, b, c, d = (_index(r, f"dag/{x}") for x in "abcd")
    assert r.release[a] == pytest.approx(2.0)
    assert r.release[b] == pytest.approx(r.finish[a] + 0.5)
    assert r.release[c] == pytest.approx(r.finish[a] + 1.0)
    assert r.release[d] == pytest.approx(max(r.finish[b], r.finish[c]) + 0.25)
    assert r.finish[b] > r.finish[c] - 0.5  # b decodes 30 tokens, c only 8 but starts later
    for i in range(4):
        assert r.release[i] <= r.start[i] < r.first_token[i] <= r.finish[i]
    # the program ends with d: its latency is the critical path a -> {b, c} -> d
    assert r.latency[0] == pytest.approx(r.finish[d] - 2.0)
    assert r.latency_per_token[0] == pytest.approx(r.latency[0] / (5 + 30 + 8 + 4))


def test_single_call_times_match_the_cost_model_by_hand():
    prog = Program("p", 1.5, (Call("x", 100, 3),))
    r = simulate([prog], "fcfs")
    cost = CostModel(get_preset("llama3-8b-h100"), BS)
    one = np.array([1])
    t1 = cost.step_time(np.array([100]), np.array([100]), 0)
    t2 = cost.step_time(one, np.array([101]), 1)
    t3 = cost.step_time(one, np.array([102]), 1)
    assert r.queueing_delay[0] == pytest.approx(0.0)
    assert r.ttft[0] == pytest.approx(t1)
    assert np.allclose(r.inter_token_times(), [t2, t3])
    assert r.latency[0] == pytest.approx(t1 + t2 + t3)


def _chain(reuse):
    return Program("chain", 0.0, (Call("a", 50, 21), Call("b", 9, 4, ("a",), reuse, 0.1)))


def test_context_reuse_hits_the_parents_cached_blocks():
    r = simulate([_chain(True)], "fcfs")
    # the parent computed K/V for prompt + output - 1 tokens; its full blocks are reused
    assert r.stats["prefix_hit_tokens"] == (50 + 21 - 1) // BS * BS
    assert simulate([_chain(False)], "fcfs").stats["prefix_hit_tokens"] == 0
    no_cache = simulate([_chain(True)], "fcfs", SimSetup(enable_prefix_caching=False))
    assert no_cache.stats["prefix_hit_tokens"] == 0


def test_sim_is_deterministic_for_a_seed():
    progs = generate("mixed", 6, 2.0, seed=3, sharegpt_source="synthetic")
    r1, r2 = (simulate(progs, "fcfs") for _ in range(2))
    for name in ("release", "start", "first_token", "finish", "token_times"):
        assert np.array_equal(getattr(r1, name), getattr(r2, name))
    other = simulate(generate("mixed", 6, 2.0, seed=4, sharegpt_source="synthetic"), "fcfs")
    assert not np.array_equal(other.program_finish, r1.program_finish)


def _tight_executor(mode):
    """A scheduler with little KV memory, so concurrent calls preempt each other."""
    setup = SimSetup(preemption_mode=mode, max_num_seqs=8, max_num_batched_tokens=256)
    cost = CostModel(get_preset(setup.preset), BS)
    cfg = build_core_config(setup, "fcfs", cost, 512)
    cfg.num_gpu_blocks = 48
    cfg.num_cpu_blocks = 256 if mode == "swap" else 0
    book = TokenBook(capacity=8)  # NOTE: tiny on purpose: exercises buffer growth
    return SimExecutor(cfg, cost, book), book


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_allocator_invariants_and_exact_lengths_under_preemption(mode):
    progs = [
        Program(f"p{i}", 0.01 * i, (Call("a", 120, 90), Call("b", 30, 60, ("a",), True)))
        for i in range(6)
    ]
    ex, book = _tight_executor(mode)
    r = Driver(progs, ex, book, vocab_size=1000).run()
    ex.check_invariants()
    st = ex.stats()
    assert st["num_preemptions_recompute"] + st["num_preemptions_swap"] > 0
    if mode == "swap":
        assert st["blocks_swapped_out"] > 0 and st["blocks_swapped_in"] == st["blocks_swapped_out"]
    assert st["gpu_blocks_used"] == 0 and st["cpu_blocks_free"] == st["cpu_blocks_total"]
    assert not np.isnan(r.token_times).any()  # every call produced all its tokens
    assert r.token_times.shape[0] == sum(p.num_output_tokens for p in progs)


def test_sampled_tokens_are_the_trace_output_ids():
    progs = [_chain(True)]
    cost = CostModel(get_preset("llama3-8b-h100"), BS)
    cfg = build_core_config(SimSetup(), "fcfs", cost, 256)
    book = TokenBook()
    ex = SimExecutor(cfg, cost, book)
    Driver(progs, ex, book, vocab_size=500).run()
    toks = ProgramTokens(progs[0], 500)
    expect = np.concatenate([toks.output_ids("a"), toks.output_ids("b")])
    assert np.array_equal(book.tokens[: book.size], expect)


def test_unknown_policy_and_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="unknown policy"):
        simulate([_chain(True)], "no-such-policy")
    with pytest.raises(ValueError, match="no programs"):
        simulate([], "fcfs")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_policy_options(["beta"])
    with pytest.raises(ValueError, match="unknown policy option"):
        parse_policy_options(["not_a_field=1"])
    with pytest.raises(ValueError, match="rates"):
        bench_cli.parse_rates("1,x")


def test_vllm_baseline_disables_caching_and_chunking():
    progs = generate("bfcl", 3, 1.0, seed=0)
    base = simulate(progs, "vllm")
    assert base.meta["enable_prefix_caching"] is False
    assert base.meta["max_num_batched_tokens"] >= max(p.calls[0].prompt_tokens for p in progs)
    assert base.stats["prefix_hit_tokens"] == 0
    assert simulate(progs, "vllm-opt").stats["prefix_hit_tokens"] > 0


def test_bench_run_sim_json(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    progs = [_dag(0.0), _chain(True)]
    write_trace(progs, path)
    rc = bench_cli.main(["run", "--trace", str(path), "--policy", "fcfs", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["programs"] == 2 and out["calls"] == 6
    assert out["output_tokens"] == sum(p.num_output_tokens for p in progs)
    assert out["prefix_hit_rate"] > 0 and out["latency_per_token_s"]["p99"] > 0


def test_bench_run_real_executor(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    prog = Program("chain", 0.0, (Call("a", 40, 6), Call("b", 5, 3, ("a",), True, 0.05)))
    write_trace([prog], path)
    argv = ["run", "--trace", str(path), "--policy", "sjf", "--executor", "real", "--json"]
    rc = bench_cli.main([*argv, "--block-size", "16", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["meta"]["executor"] == "real"
    assert out["calls"] == 2 and out["output_tokens"] == 9
    # the child's prompt starts with the parent's prompt + the tokens the model produced: it
    # hits the parent's (40 + 6 - 1) // 16 full blocks out of 40 + 51 looked-up tokens
    assert out["prefix_hit_rate"] == pytest.approx(32 / 91)
    assert out["latency_s"]["mean"] > 0 and out["ttft_s"]["p50"] > 0


def test_sustained_rate_interpolates_and_censors():
    rates = [1.0, 2.0, 4.0]
    assert sustained_rate(rates, [1.0, 2.0, 6.0], 4.0) == (3.0, "")
    assert sustained_rate(rates, [1.0, 2.0, 3.0], 4.0) == (4.0, ">=")
    assert sustained_rate(rates, [5.0, 6.0, 7.0], 4.0) == (1.0, "<")


def test_bench_compare_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = bench_cli.main(
        [
            "compare",
            "--workload",
            "bfcl",
            "--programs",
            "3",
            "--rates",
            "1,4",
            "--policies",
            "vllm,fcfs,bogus",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "skipping unknown policy 'bogus'" in captured.err
    assert "Throughput at equal latency" in captured.out
    assert (out / "compare.png").stat().st_size > 1000
    data = json.loads((out / "compare.json").read_text())
    assert set(data) == {"vllm", "fcfs"} and set(data["fcfs"]) == {"1.0", "4.0"}


def test_sweep_table_gains_from_a_synthetic_sweep():
    def s(v):
        return {"latency_per_token_s": {"mean": v, "p95": 2 * v, "p99": 3 * v}, "starvation_s": v}

    sweep = {
        "vllm": {1.0: s(1.0), 2.0: s(3.0), 4.0: s(9.0)},
        "fcfs": {1.0: s(1.0), 2.0: s(1.5), 4.0: s(2.5)},
    }
    table = sweep_tables(sweep, 2.0)
    # mean line = 2 (2x the best value at rate 1): vllm crosses it at 1.5/s, fcfs at 3/s
    assert "| fcfs | 3 | 2.00x | 1.00x | 3 | 2.00x | 1.00x |" in table
    assert "| vllm | 1.5 | 1.00x | 0.50x |" in table
    assert "| fcfs | p99 | 3e+03 | 4.5e+03 | 7.5e+03 |" in table
    assert "| fcfs | starvation (s) | 1 | 1.5 | 2.5 |" in table


def test_gain_over_a_baseline_already_over_the_line_is_a_bound_not_inf():
    def s(v):
        return {"latency_per_token_s": {"mean": v, "p95": v, "p99": v}, "starvation_s": 0.0}

    sweep = {
        "vllm": {1.0: s(9.0), 2.0: s(20.0), 4.0: s(40.0)},  # over the 2x line from the start
        "fcfs": {1.0: s(1.0), 2.0: s(1.5), 4.0: s(2.5)},
        "plas": {1.0: s(1.0), 2.0: s(1.0), 4.0: s(1.0)},  # never over: censored
    }
    table = sweep_tables(sweep, 2.0).split("Throughput at equal latency")[1]
    assert "inf" not in table and "| 0 |" not in table
    assert "| vllm | <1 | 1.00x | <0.33x |" in table  # sustains < 1/s: at most 1/3 of fcfs
    assert "| fcfs | 3 | >3.00x | 1.00x |" in table  # more than 3x what vllm sustains
    assert "| plas | >=4 | >4.00x | >=1.33x |" in table


@pytest.mark.parametrize("policy", [p for p in ("fcfs", "priority") if p in _core.policy_names()])
def test_summary_of_a_small_mixed_run(policy):
    r = simulate(generate("mixed", 6, 2.0, seed=1, sharegpt_source="synthetic"), policy)
    s = summarize(r)
    assert s["calls"] == len(r.call_ids) and s["makespan_s"] > 0
    assert 0 < s["prefix_hit_rate"] < 1
    assert s["ttft_s"]["p50"] <= s["ttft_s"]["p99"]


def test_speed_sanity():
    progs = generate("mixed", 6, 2.0, seed=2, sharegpt_source="synthetic")
    t0 = time.perf_counter()
    r = simulate(progs, "fcfs")
    wall = time.perf_counter() - t0
    # NOTE: loose on purpose (shared CI machines); benchmarks/bench_sim.py measures for real
    assert r.meta["sim_s"] / wall > 10
