"""pyserve.integrations.vllm.ProgramScheduler at the scheduler level: vLLM's own scheduler with
fake requests and KV config, no model. Skipped when vLLM is not installed (see docs/vllm.md)."""

import numpy as np
import pytest

pytest.importorskip("vllm")

from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.request import RequestStatus  # noqa: E402

from pyserve import _core  # noqa: E402
from pyserve.integrations.vllm import ProgramScheduler  # noqa: E402
from tests.vllm_fakes import make, request, step  # noqa: E402

# Quanta small enough that a few 10 ms steps demote; no anti-starvation unless a test sets it.
PLAS = {"policy": "plas", "num_queues": 4, "quantum_base": 0.02, "starvation_beta": 0}


def run_program_call(s, rid, program, steps_max=50):
    s.add_request(request(rid, 20, 5, program))
    for _ in range(steps_max):
        _, done = step(s)
        if rid in done:
            return
    raise AssertionError(f"{rid} did not finish")


def first_admitted(s, ids):
    sched, _ = step(s)
    return [r for r in ids if r in sched]


def test_new_program_admitted_before_later_call_of_served_program():
    for cls, expect in ((ProgramScheduler, "b1"), (None, "a2")):
        s = make(cls, PLAS if cls else None, max_num_seqs=1)
        run_program_call(s, "a1", "A")  # program A attains service
        s.add_request(request("a2", 20, 5, "A", arrival=1.0))
        s.add_request(request("b1", 20, 5, "B", arrival=2.0))  # a later, new program
        assert first_admitted(s, ["a2", "b1"]) == [expect], cls
    assert s.policy.value == "fcfs"


def test_priority_encoding_user_priority_major_queue_minor():
    s = make(ProgramScheduler, PLAS, max_num_seqs=1)
    run_program_call(s, "a1", "A")
    q = s.program_policy.programs.info("A")["service"]
    assert q > 0 and s.policy.value == "priority"
    s.add_request(request("a2", 20, 5, "A"))
    r = request("u", 20, 5, "U")
    r.priority = 1  # a user priority beats any queue index
    s.add_request(r)
    qa = s.program_policy.info("a2")["queue"]
    assert qa > 0 and s.requests["a2"].priority == qa and s.requests["u"].priority == 4
    assert first_admitted(s, ["a2", "u"]) == ["a2"]


def test_preemption_victim_is_worst_queue_and_bounded():
    cfg = dict(PLAS, max_preemptions_per_step=1, min_steps_between_preemptions=0)
    s = make(ProgramScheduler, cfg, max_num_seqs=2)
    run_program_call(s, "a1", "A")  # program A is served: its next call enters a low queue
    s.add_request(request("hi", 20, 40, "H"))  # queue 0
    s.add_request(request("lo", 20, 40, "A"))  # A's queue
    step(s)
    assert {r.request_id for r in s.running} == {"hi", "lo"}
    worst = s.program_policy.info("lo")["queue"]
    assert worst > s.program_policy.info("hi")["queue"]
    s.add_request(request("n1", 20, 5, "N1"))
    s.add_request(request("n2", 20, 5, "N2"))
    sched, _ = step(s)
    # One preemption per step (the bound), and the victim is the worst queue, not "hi".
    assert s.requests["lo"].status == RequestStatus.PREEMPTED
    assert s.requests["lo"].num_preemptions == 1 and s.requests["hi"].num_preemptions == 0
    assert "n1" in sched and "n2" not in sched
    assert s.program_policy.info("lo")["status"] == "waiting"


def test_aborts_fold_service_into_program():
    s = make(ProgramScheduler, PLAS)
    s.add_request(request("x", 20, 50, "P"))
    for _ in range(3):
        step(s, seconds=0.05)
    served = s.program_policy.info("x")["service"]
    assert served == pytest.approx(0.15)
    s.finish_requests("x", RequestStatus.FINISHED_ABORTED)
    assert "x" not in s.program_policy
    info = s.program_policy.programs.info("P")
    assert info["service"] == pytest.approx(served) and info["active_calls"] == 0
    # The waiting path folds too (no service, but the wait and the active count).
    s.add_request(request("y", 20, 5, "P"))
    s.finish_requests(["y"], RequestStatus.FINISHED_ABORTED)
    assert s.program_policy.programs.info("P")["active_calls"] == 0 and not s.requests


def test_heap_order_survives_promotions():
    cfg = dict(PLAS, starvation_beta=2.0)
    s = make(ProgramScheduler, cfg, max_num_seqs=1)
    for i, prog in enumerate("ABCDE"):
        run_program_call(s, f"{prog}0", prog)  # each program attains service
        s.clock.t += 0.01 * i
    s.add_request(request("long", 20, 200, "L"))  # occupies the single slot
    step(s)
    for i, prog in enumerate("ABCDE"):
        s.add_request(request(f"{prog}1", 20, 5, prog, arrival=float(i)))
    promoted = set()
    for _ in range(40):
        step(s, seconds=0.02)
        waiting = list(s.waiting)  # pop order of vLLM's heap
        keys = [(r.priority, r.arrival_time, r.request_id) for r in waiting]
        assert keys == sorted(keys)
        for r in waiting:
            assert r.priority == int(s.program_policy.primary(r.request_id))
            if r.priority == 0:
                promoted.add(r.request_id)
    assert promoted, "anti-starvation never promoted a waiting call"


def test_async_scheduling_picks_async_variant_and_runs():
    s = make(ProgramScheduler, PLAS, async_scheduling=True)
    assert isinstance(s, AsyncScheduler) and isinstance(s, ProgramScheduler)
    s.add_request(request("a", 20, 3, "P"))
    assert s.requests["a"].priority == 0
    for _ in range(10):
        if "a" in step(s)[1]:
            break
    assert "a" not in s.program_policy and s.program_policy.programs.info("P")["service"] > 0
    sync = make(ProgramScheduler, PLAS)
    assert not isinstance(sync, AsyncScheduler)


@pytest.mark.parametrize(
    "bad, match",
    [({"policy": "fcfs"}, "pyserve.policy must be one of atlas"),
     ({"quantum": 1}, "unknown key.*quantum"),
     ({"num_queues": 0}, "num_queues must be"),
     ({"quantum_base": "x"}, "quantum_base must be")],
)  # fmt: skip
def test_bad_config_is_rejected_naming_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        make(ProgramScheduler, bad)


def test_program_id_from_session_and_thread_fields():
    s = make(ProgramScheduler, PLAS)
    with pytest.raises(ValueError, match="thread_id"):
        s.add_request(request("t1", 20, 3, "P", thread_id=3))
    r = request("s1", 20, 3, None)
    r.session_id = "sess-9"
    s.add_request(r)
    assert s.program_policy.info("s1")["program_id"] == "sess-9"
    s.add_request(request("s2", 20, 3, 42))  # numeric ids are honoured as text
    assert s.program_policy.info("s2")["program_id"] == "42"


def test_decisions_match_native_scheduler_on_one_trace():
    """The same trace through the native _core.Scheduler and through vLLM + ProgramScheduler
    (same batch limit, budget and step times): the same calls run in every step."""
    cfg = dict(PLAS, starvation_beta=4.0, max_preemptions_per_step=2,
               min_steps_between_preemptions=2)  # fmt: skip
    rng = np.random.default_rng(0)
    trace = []  # (arrival step, id, program, prompt, max tokens)
    for i in range(24):
        trace.append((int(rng.integers(0, 40)), f"r{i:02d}", f"p{rng.integers(0, 5)}",
                      int(rng.integers(4, 40)), int(rng.integers(1, 12))))  # fmt: skip
    trace.sort()
    ncfg = _core.SchedulerConfig()
    for k, v in dict(num_gpu_blocks=64, block_size=16, max_num_batched_tokens=256,
                     max_num_seqs=3, max_model_len=256, **cfg).items():  # fmt: skip
        setattr(ncfg, k, v)
    native = _core.Scheduler(ncfg, [0])
    s = make(ProgramScheduler, cfg, max_num_seqs=3, num_blocks=65)  # vLLM keeps 1 null block
    pending = list(trace)
    for t in range(400):
        while pending and pending[0][0] <= t:
            _, rid, prog, n, mx = pending.pop(0)
            arrival = s.clock.t - s._clock0
            native.add_request(rid, np.arange(1, n + 1), max_tokens=mx, ignore_eos=True,
                               arrival_time=arrival, program_id=prog)  # fmt: skip
            s.add_request(request(rid, n, mx, prog, arrival=arrival))
        if not pending and not native.has_unfinished():
            break
        plan = native.schedule()
        seconds = 0.004 + 0.0001 * plan.num_tokens
        ran = {native.request_info(int(i))["request_id"] for i in np.array(plan.seq_ids)}
        native.update(np.full(plan.num_samples, 7, dtype=np.int32), seconds)
        sched, _ = step(s, seconds=seconds)
        assert set(sched) == ran, t
    assert not native.has_unfinished() and not s.requests
    assert native.stats()["num_preemptions_recompute"] > 0
