"""The program-aware router: short vs long calls, stickiness, least-loaded, dead engines, the
global program table across engines, invariants, and the simulated cluster."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pyserve import _core
from pyserve.cluster.router import Router, RouterOptions
from pyserve.sim.cluster import run_cluster
from pyserve.sim.workloads import generate


def make_router(n=3, **kw) -> Router:
    kw.setdefault("short_call_tokens", 100)
    return Router(n, RouterOptions(**kw))


def test_short_calls_balance_long_calls_stick():
    r = make_router()
    assert [r.route(f"s{i}", "p", 50) for i in range(3)] == [0, 1, 2]
    assert r.lb.sticky_engine("p") == -1
    r.finished("s1")
    first = r.route("l0", "p", 101)  # first long call: least-loaded engine, recorded
    assert first == 1 and r.lb.sticky_engine("p") == 1
    assert all(r.route(f"l{i}", "p", 5000) == 1 for i in range(1, 5))
    assert r.route("s3", "p", 100) != 1  # a short call of the same program still balances
    assert r.route("anon", None, 5000) != 1  # untagged long calls are never sticky
    r.check()


def test_least_loaded_and_round_robin_ignore_programs():
    ll = make_router(routing="least_loaded")
    assert [ll.route(f"c{i}", "p", 5000) for i in range(3)] == [0, 1, 2]
    rr = make_router(routing="round_robin")
    assert [rr.route(f"c{i}", "p", 5000) for i in range(5)] == [0, 1, 2, 0, 1]


def test_kv_headroom_breaks_ties_and_llumnix_signal():
    r = make_router(2)
    r.report(0, 10, 100)
    r.report(1, 80, 100)
    assert r.route("a", None, 1) == 1
    m = make_router(2, load_signal="llumnix")
    m.report(0, 10, 100)
    m.report(1, 80, 100)
    assert [m.route(f"c{i}", None, 16) for i in range(3)] == [1, 1, 1]  # 80/(n+1) > 10
    assert m.route("big", None, 16 * 70) == 1  # 79 blocks free after the queued ones: 76/4 > 10
    assert m.route("next", None, 16) == 0  # 6 blocks of headroom over 5 calls < 10
    m.started("big")
    assert m.lb.engine(1)["queued_blocks"] == 3


def test_dead_engines_are_never_chosen():
    r = make_router(3)
    assert r.route("x", "p", 1000) == 0
    assert r.mark_dead(0) == ["x"]
    assert r.lb.sticky_engine("p") == -1
    assert {r.route(f"c{i}", "p", 1000) for i in range(6)} == {1}  # re-stuck to a live engine
    assert {r.route(f"d{i}", None, 1) for i in range(6)} <= {1, 2}
    r.mark_dead(1)
    r.mark_dead(2)
    with pytest.raises(RuntimeError, match="no live engine"):
        r.route("z", None, 1)
    r.check()


def test_bad_input():
    with pytest.raises(ValueError, match="routing"):
        RouterOptions(routing="random")
    with pytest.raises(ValueError, match="load signal"):
        RouterOptions(load_signal="x")
    with pytest.raises(ValueError, match="num_engines"):
        Router(0)
    r = make_router(2)
    r.route("a", None, 1)
    with pytest.raises(ValueError, match="already routed"):
        r.route("a", None, 1)
    with pytest.raises(ValueError, match="prompt_tokens"):
        r.route("b", None, -1)
    with pytest.raises(ValueError, match="out of range"):
        r.report(2, 0, 1)
    with pytest.raises(ValueError, match="unknown call"):
        r.lb.finished("nope")


def test_stickiness_forgotten_when_program_ends_or_expires():
    r = make_router(2, program_ttl_s=5.0)
    r.start_program("p")
    r.route("c", "p", 1000, account=True)
    assert r.lb.sticky_engine("p") == 0
    r.call_finished("c", service=0.5, wait=0.1, critical=0.7)
    info = r.programs.info("p")
    assert info["service"] == pytest.approx(0.5) and info["critical"] == pytest.approx(0.7)
    assert info["active_calls"] == 0
    r.end_program("p")
    assert r.lb.sticky_engine("p") == -1 and "p" not in r.programs
    r.route("d", "q", 1000, account=True)
    r.finished("d")
    assert r.collect(now=r.clock() + 10.0) == 1 and r.lb.sticky_engine("q") == -1


def _scheduler(table, policy="plas"):
    cfg = _core.SchedulerConfig()
    cfg.num_gpu_blocks, cfg.block_size, cfg.max_model_len = 64, 4, 128
    cfg.policy, cfg.quantum_base, cfg.starvation_beta = policy, 0.001, 0.0
    return _core.Scheduler(cfg, [0], table)


def _run_to_end(s, seconds=0.01):
    while s.has_unfinished():
        p = s.schedule()
        s.update(np.full(p.num_samples, 5, dtype=np.int32), seconds)


def test_program_priority_is_global_across_engines():
    shared = _core.ProgramTable(600.0)
    a, b = _scheduler(shared), _scheduler(shared)
    alone = _scheduler(None)
    prompt = np.arange(1, 9, dtype=np.int32)
    a.add_request("c0", prompt, max_tokens=8, program_id="p")
    _run_to_end(a)
    assert shared.info("p")["service"] == pytest.approx(0.08)
    sid = b.add_request("c1", prompt, max_tokens=4, program_id="p")
    solo = alone.add_request("c1", prompt, max_tokens=4, program_id="p")
    # the call on engine b enters the queue of the service p received on engine a
    assert b.request_info(sid)["queue"] > 0
    assert alone.request_info(solo)["queue"] == 0


def test_sync_program_raises_local_entry_to_global_values():
    local = _core.ProgramTable(600.0)
    _core.sync_program(local, "p", 2.0, 1.0, 0.5)
    s = _scheduler(local)
    sid = s.add_request("c", np.arange(1, 5, dtype=np.int32), max_tokens=2, program_id="p")
    assert s.request_info(sid)["queue"] > 0
    info = local.info("p")
    assert info["service"] == 2.0 and info["active_calls"] == 1
    _core.sync_program(local, "p", 1.0, 0.0, 0.0)  # never lowers
    assert local.info("p")["service"] == 2.0
    with pytest.raises(ValueError):
        _core.sync_program(local, "p", -1.0)


def test_replica_applies_global_program_values():
    from pyserve.cluster.replica import Replica
    from pyserve.config import EngineConfig
    from pyserve.engine.messages import CallSpec
    from pyserve.sampling_params import SamplingParams

    rep = Replica(EngineConfig.from_kwargs("builtin:tiny", device="cpu", kv_cache_bytes=8 << 20))
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)

    async def run():
        items = [
            x
            async for x in rep.generate(CallSpec("c", [1, 2, 3], params, program_id="p"),
                                        program_values=(3.0, 2.0, 0.0))
        ]  # fmt: skip
        out, report, (free, total) = items[-1]
        assert out.finished and len(out.token_ids) == 3 and 0 < free <= total
        assert report["service"] > 0 and report["critical"] >= 2.0
        info = rep.engine.program_info("p")
        assert info["service"] == pytest.approx(3.0 + report["service"])

    asyncio.run(run())


@pytest.mark.parametrize("routing", ["locality", "round_robin", "least_loaded"])
def test_sim_cluster_runs_every_call(routing):
    progs = generate("sharegpt", 12, 4.0, 1, "synthetic")
    r = run_cluster(progs, engines=3, routing=routing, policy="plas", check_invariants=True)
    assert np.isfinite(r.finish).all() and len(r.call_ids) == sum(len(p.calls) for p in progs)
    assert sum(r.meta["routed"]) == len(r.call_ids)
    assert (np.asarray(r.meta["routed"]) > 0).all()
    assert r.stats["engines"] and len(r.stats["engines"]) == 3
    # calls wait for their parents: no call starts before it is released
    assert (r.start >= r.release - 1e-9).all() and (r.finish > r.start).all()


def test_sim_cluster_locality_keeps_program_context():
    progs = generate("sharegpt", 20, 6.0, 2, "synthetic")
    hit = {}
    for routing in ("locality", "round_robin"):
        r = run_cluster(progs, engines=4, routing=routing, policy="plas", short_call_tokens=256)
        hit[routing] = r.stats["prefix_hit_tokens"] / r.stats["prefix_query_tokens"]
    assert hit["locality"] > hit["round_robin"]


def test_serve_args():
    import argparse

    from pyserve.cluster.cli import register_serve_args, wants_cluster

    p = argparse.ArgumentParser()
    register_serve_args(p)
    args = p.parse_args(["--replicas", "3", "--routing", "least_loaded"])
    assert wants_cluster(args) and args.short_call_tokens == 2048
    assert not wants_cluster(p.parse_args([]))
    assert wants_cluster(p.parse_args(["--ray-address", "auto"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--routing", "random"])


def test_sim_cluster_releases_a_call_before_an_engine_steps_past_it():
    """Regression: engine 0 runs a long prefill step while engine 1 finishes ``b`` and goes idle;
    ``c`` (due 10 ms later, routed to engine 0) must join engine 0's next step, not the one after
    (the cluster used to step engine 0 before the driver had released ``c``)."""
    from pyserve.sim.cluster import ClusterExecutor
    from pyserve.sim.cost_model import CostModel
    from pyserve.sim.driver import Driver, TokenBook
    from pyserve.sim.executor import SimSetup, build_core_config, required_model_len
    from pyserve.sim.presets import get_preset
    from pyserve.sim.trace import Call, Program

    progs = [
        Program("p1", 0.0, (Call("a", 2000, 3),)),
        Program("p2", 0.0, (Call("b", 10, 3), Call("c", 10, 3, ("b",), False, 0.01))),
    ]
    setup = SimSetup()
    pre = get_preset(setup.preset)
    cost = CostModel(pre, setup.block_size)
    config = build_core_config(setup, "plas", cost, required_model_len(progs, setup.block_size))
    book = TokenBook()
    ex = ClusterExecutor(config, 2, cost, book, RouterOptions(routing="round_robin"))
    driver = Driver(progs, ex, book, vocab_size=pre.model.vocab_size)
    step, late = ex.step, []

    def checked_step():
        start = min(eng.next_start() for eng in ex.engines)
        due = driver.heap[0][0] if driver.heap else np.inf
        r = step()
        if r.num_seqs and due <= start:
            late.append((due, start))
        return r

    ex.step = checked_step
    r = driver.run()
    assert ex.routed.tolist() == [2, 1]
    prefill_end = r.token_times[r.offset[0]]  # a's first token: the end of its prefill step
    assert r.release[2] < prefill_end
    assert late == [] and r.start[2] == pytest.approx(prefill_end)
