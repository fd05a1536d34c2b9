"""_core.ProgramPolicy (the policy hooks without an allocator, used by the vLLM plugin) makes the
same decisions as the native _core.Scheduler: both are driven on one trace and every call's queue,
key and service and every program's table entry are compared after each step."""

import random

import numpy as np
import pytest

from pyserve import _core
from tests.conftest import make_scheduler


def _policy_config(policy: str) -> _core.SchedulerConfig:
    cfg = _core.SchedulerConfig()
    for k, v in dict(policy=policy, num_queues=4, quantum_base=0.02, quantum_growth=2.0,
                     starvation_beta=3.0).items():  # fmt: skip
        setattr(cfg, k, v)
    return cfg


def _trace(seed: int):
    """(arrival step, request id, program id, prompt len, max tokens): ReAct chains and parallel
    branches of 5 programs plus untagged calls."""
    rng = random.Random(seed)
    out = []
    for i in range(40):
        prog = "" if i % 7 == 0 else f"p{rng.randrange(5)}"
        out.append((rng.randrange(60), f"r{i}", prog, rng.randrange(3, 40), rng.randrange(1, 25)))
    return sorted(out)


class Mirror:
    """Replays the native scheduler's events into a ProgramPolicy."""

    def __init__(self, policy: str):
        self.p = _core.ProgramPolicy(_policy_config(policy))
        self.running: set[str] = set()

    def step(self, s: _core.Scheduler, plan, seconds: float, finished: list[str]):
        self.p.begin_step()
        for sid in np.array(plan.preempted):
            rid = s.request_info(int(sid))["request_id"]
            self.p.preempted(rid)
            self.running.discard(rid)
        ran = []
        qo = np.array(plan.qo_indptr)
        for i, sid in enumerate(np.array(plan.seq_ids)):
            rid = s.request_info(int(sid))["request_id"]
            if rid not in self.running:
                self.p.started(rid)
                self.running.add(rid)
            ran.append((rid, int(qo[i + 1] - qo[i])))
        self.p.charge(ran, seconds)
        for rid in finished:
            self.p.finish(rid)
            self.running.discard(rid)


def _compare(s: _core.Scheduler, m: Mirror, live: set[str]):
    assert len(m.p) == len(live)
    for rid in live:
        native = s.request_info(s.find(rid))
        mine = m.p.info(rid)
        assert mine["queue"] == native["queue"], rid
        assert mine["service"] == pytest.approx(native["service"], abs=1e-12), rid
        assert mine["num_preemptions"] == native["num_preemptions"], rid
        if native["status"] == "waiting":
            assert mine["primary"] == native["priority_key"][0], rid
            assert mine["total_wait"] == pytest.approx(native["total_wait"], abs=1e-9), rid
    assert sorted(m.p.programs.ids()) == sorted(s.programs.ids())
    for pid in s.programs.ids():
        a, b = s.program_info(pid), m.p.programs.info(pid)
        for field in ("service", "critical", "wait", "active_calls"):
            assert b[field] == pytest.approx(a[field], abs=1e-9), (pid, field)


@pytest.mark.parametrize("policy", ["plas", "atlas", "mlfq"])
@pytest.mark.parametrize("seed", [0, 1])
def test_program_policy_matches_native_scheduler(policy, seed):
    # A small pool and batch force recompute preemptions, proactive preemptions and promotions.
    s = make_scheduler(policy=policy, num_gpu_blocks=24, max_num_seqs=4, max_model_len=96,
                       max_num_batched_tokens=32, **{k: getattr(_policy_config(policy), k)
                       for k in ("num_queues", "quantum_base", "quantum_growth",
                                 "starvation_beta")})  # fmt: skip
    m = Mirror(policy)
    trace = _trace(seed)
    live: set[str] = set()
    rng = random.Random(seed + 100)
    aborted = promotions = demotions = 0
    queues: dict[str, int] = {}
    for t in range(100_000):
        while trace and trace[0][0] <= t:
            _, rid, prog, n, mx = trace.pop(0)
            s.add_request(rid, np.arange(1, n + 1), max_tokens=mx, ignore_eos=True,
                          arrival_time=s.now, program_id=prog)
            m.p.arrive(rid, program_id=prog, arrival_time=s.now)
            live.add(rid)
        if not trace and not s.has_unfinished():
            break
        if live and t % 17 == 5:  # an abort in any state folds service in on both sides
            rid = sorted(live)[rng.randrange(len(live))]
            s.abort(rid)
            m.p.finish(rid)
            m.running.discard(rid)
            live.discard(rid)
            aborted += 1
        plan = s.schedule()
        seconds = 0.001 + 0.0005 * plan.num_tokens
        fin = s.update(np.full(plan.num_samples, 7, dtype=np.int32), seconds)
        done = [s.request_info(int(f.seq_id))["request_id"] for f in fin.finished]
        m.step(s, plan, seconds, done)
        live.difference_update(done)
        _compare(s, m, live)
        for rid in live:
            q = m.p.info(rid)["queue"]
            promotions += q < queues.get(rid, 0)
            demotions += q > queues.get(rid, 0)
            queues[rid] = q
    assert not live and aborted > 0 and demotions > 0
    assert promotions > 0
    st = s.stats()
    assert st["num_preemptions_recompute"] > 0


def test_program_policy_rejects_bad_input():
    p = _core.ProgramPolicy(_policy_config("plas"))
    p.arrive("a", program_id="x")
    with pytest.raises(ValueError, match="duplicate request id 'a'"):
        p.arrive("a")
    with pytest.raises(ValueError, match="unknown request id 'b'"):
        p.finish("b")
    with pytest.raises(ValueError, match="step_seconds"):
        p.charge([("a", 1)], -1.0)
    cfg = _policy_config("nope")
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        _core.ProgramPolicy(cfg)


def test_program_policy_plas_entry_queue_and_fold():
    p = _core.ProgramPolicy(_policy_config("plas"))
    p.arrive("a1", program_id="old")
    p.begin_step()
    p.started("a1")
    p.charge([("a1", 10)], 0.5)  # 0.5 s of service: demoted through the quanta
    p.finish("a1")
    assert p.programs.info("old")["service"] == pytest.approx(0.5)
    p.arrive("a2", program_id="old")
    p.arrive("b1", program_id="new")
    assert p.primary("b1") == 0 and p.primary("a2") > 0
    assert p.info("a2")["queue"] == p.primary("a2")
