"""The simulator's decisions for fixed seeds, pinned: speed work must not change a single one.

Each case's fingerprint hashes every call's release, start, first-token and finish times, every
token time and the core's counters. The expected values were recorded before the simulator's
speed changes (issue 16: flat prefix-cache index, hashes computed once, token ids drawn in C++)
and still hold after them. A change that is *meant* to alter scheduling decisions updates them:
print ``fingerprint(...)`` for each case and paste the new values with the reason in the commit.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pyserve.sim.executor import SimSetup, simulate
from pyserve.sim.workloads import generate


def fingerprint(r) -> str:
    h = hashlib.sha256()
    for a in (r.release, r.start, r.first_token, r.finish, r.token_times):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    h.update(json.dumps(r.stats, sort_keys=True).encode())
    return h.hexdigest()[:16]


TIGHT = {"kv_capacity_scale": 0.05, "swap_space_gib": 2.0}
CASES = {
    # name: (workload, programs, rate, seed, policy, setup options, fingerprint)
    "mixed-fcfs": ("mixed", 40, 12.0, 1, "fcfs", {}, "b52ac1b5f5f3fe85"),
    "lats-atlas": ("lats", 6, 2.0, 1, "atlas", {}, "424fa512c28493c9"),
    # little KV memory: preemptions, repeated prefix lookups, host-tier loads and swaps
    "tight-fcfs-recompute": ("mixed", 30, 12.0, 2, "fcfs", TIGHT, "6aa93b1e8cfb91fc"),
    "tight-plas-swap": ("mixed", 30, 12.0, 2, "plas", {**TIGHT, "preemption_mode": "swap"},
                        "dc16be5ea20a71ac"),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_decisions_are_unchanged_for_fixed_seeds(name):
    workload, n, rate, seed, policy, options, want = CASES[name]
    programs = generate(workload, n, rate, seed=seed, sharegpt_source="synthetic")
    r = simulate(programs, policy, SimSetup(**options), check_invariants=True)
    assert fingerprint(r) == want
