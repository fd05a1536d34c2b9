"""Randomized property test: random arrivals, lengths, aborts and preemptions; invariants every step."""

import numpy as np
from conftest import make_scheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BUDGET = 24


def drive(s, rng: np.random.Generator, steps: int, max_len: int) -> None:
    next_id = 0
    live: list[str] = []
    for _ in range(steps):
        if rng.random() < 0.3:
            n = int(rng.integers(1, max_len))
            base = int(rng.integers(0, 3))  # shared prefixes exercise the prefix cache
            prompt = (np.arange(n, dtype=np.int32) + base * 1000) % 50 + 1
            s.add_request(
                f"r{next_id}",
                prompt,
                max_tokens=int(rng.integers(1, 20)),
                priority=float(rng.integers(0, 3)),
                arrival_time=float(next_id),
            )
            live.append(f"r{next_id}")
            next_id += 1
        if live and rng.random() < 0.05:
            rid = live.pop(int(rng.integers(0, len(live))))
            if s.find(rid) >= 0:
                s.abort(rid)
        p = s.schedule()
        assert p.num_tokens <= BUDGET
        if live and rng.random() < 0.02:  # abort while the step is in flight
            rid = live[int(rng.integers(0, len(live)))]
            if s.find(rid) >= 0:
                s.abort(rid)
        tokens = rng.integers(0, 60, size=p.num_samples).astype(np.int32)
        s.update(tokens, 0.001)
        s.check_invariants()
    for rid in live:
        if s.find(rid) >= 0:
            s.abort(rid)
    s.schedule()
    s.update(np.zeros(0, dtype=np.int32), 0.0)
    s.check_invariants()
    assert s.stats()["gpu_blocks_used"] == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(["recompute", "swap"]),
    policy=st.sampled_from(["fcfs", "priority"]),
    blocks=st.integers(10, 40),
    prefix=st.booleans(),
)
def test_random_workload_keeps_invariants(seed, mode, policy, blocks, prefix):
    s = make_scheduler(
        num_gpu_blocks=blocks,
        num_cpu_blocks=blocks,
        block_size=4,
        max_num_batched_tokens=BUDGET,
        max_num_seqs=6,
        max_model_len=40,
        preemption_mode=mode,
        policy=policy,
        enable_prefix_caching=prefix,
        eos=(0,),
        min_steps_between_preemptions=1,
    )
    drive(s, np.random.default_rng(seed), steps=400, max_len=30)


def drive_sessions(s, rng: np.random.Generator, steps: int) -> None:
    """Programs whose calls extend their previous context (prompt + output), some marked as
    coming back, some ended: the host tier, pins and prefetch under random load."""
    contexts: dict[str, np.ndarray] = {}
    live: list[str] = []
    for i in range(steps):
        if rng.random() < 0.3:
            pid = f"p{int(rng.integers(0, 5))}"
            ctx = contexts.get(pid, np.zeros(0, dtype=np.int32))
            if ctx.shape[0] > 30:
                ctx = ctx[:0]
            new = rng.integers(1, 50, size=int(rng.integers(1, 8))).astype(np.int32)
            prompt = np.concatenate([ctx, new])
            rid = f"c{i}"
            s.add_request(rid, prompt, max_tokens=int(rng.integers(1, 6)), ignore_eos=True,
                          program_id=pid, arrival_time=s.now)  # fmt: skip
            contexts[pid] = prompt
            if rng.random() < 0.5:
                s.mark_coming_back(pid)
            live.append(rid)
        if rng.random() < 0.01:
            pid = f"p{int(rng.integers(0, 5))}"
            if pid in s.programs:
                s.end_program(pid)
        if live and rng.random() < 0.03:
            rid = live.pop(int(rng.integers(0, len(live))))
            if s.find(rid) >= 0:
                s.abort(rid)
        p = s.schedule()
        tokens = rng.integers(1, 50, size=p.num_samples).astype(np.int32)
        s.update(tokens, float(rng.uniform(0.001, 0.05)))
        s.check_invariants()
    for rid in live:
        if s.find(rid) >= 0:
            s.abort(rid)
    s.release_all_pins()
    s.schedule()
    s.update(np.zeros(0, dtype=np.int32), 0.0)
    s.check_invariants()
    st_ = s.stats()
    assert st_["gpu_blocks_used"] == 0 and st_["cpu_blocks_free"] == st_["cpu_blocks_total"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    retention=st.sampled_from(["lru", "ttl", "program"]),
    gpu=st.integers(12, 30),
    cpu=st.sampled_from([0, 8, 64]),
    mode=st.sampled_from(["recompute", "swap"]),
    mask=st.sampled_from([0x7, 2**64 - 1]),
)
def test_sessions_over_host_tier_keep_invariants(seed, retention, gpu, cpu, mode, mask):
    s = make_scheduler(num_gpu_blocks=gpu, num_cpu_blocks=cpu, block_size=4,
                       max_num_batched_tokens=BUDGET, max_num_seqs=4, max_model_len=48,
                       preemption_mode=mode, kv_retention=retention, prefix_hash_mask=mask,
                       retention_ttl_max_s=0.2, eos=(0,))  # fmt: skip
    drive_sessions(s, np.random.default_rng(seed), steps=300)
