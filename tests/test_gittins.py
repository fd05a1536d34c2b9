"""gittins: the Gittins rank of a known size distribution matches its closed form, the online
distribution converges, and scheduling follows the index with bounded starvation."""

import numpy as np
import pytest
from conftest import make_scheduler, run_to_end, step

from pyserve import _core

BINS = _core.ServiceDistribution.bins


def edges():
    return [_core.ServiceDistribution.edge(k) for k in range(BINS)]


def exp_quantiles(mu, n=4000, seed=0):
    """n stratified exponential sizes (mean mu) in random order."""
    x = -mu * np.log(1.0 - (np.arange(n) + 0.5) / n)
    return np.random.default_rng(seed).permutation(x)


def two_point(s1, s2, p):
    """Gittins rank at attained a of S = s1 w.p. p, else s2 (s1 < s2), textbook form."""
    mean = p * s1 + (1 - p) * s2

    def rank(a):
        if a >= s1:
            return s2 - a
        return min((s1 - a) / p, mean - a)

    return rank


def test_exponential_sizes_have_a_constant_index():
    mu = 1.5
    d = _core.ServiceDistribution(half_life=0)
    for x in exp_quantiles(mu):
        d.observe(-1, float(x))
    grid = [a for a in edges() if a <= 3 * mu] + [0.037, 0.41, 1.9, 3.3]
    ranks = np.array([d.rank(-1, a) for a in grid])
    # memoryless: rank = E[S] = 1/rate at every attained service (index constant => FCFS ties)
    assert ranks == pytest.approx(mu, rel=0.04)
    assert ranks.max() / ranks.min() < 1.06


@pytest.mark.parametrize("p", [0.8, 0.3, 0.03])
def test_two_point_distribution_matches_textbook_index(p):
    s1, s2, n = 0.5, 10.0, 1000
    d = _core.ServiceDistribution(half_life=0)
    k = round(p * n)
    for x in [s1] * k + [s2] * (n - k):
        d.observe(-1, x)
    rank = two_point(s1, s2, k / n)
    # below s1 the table interpolates between bin edges, so it is checked at the edges
    for a in [0.0] + [e for e in edges() if e < s2] + [0.7, 3.0, 9.5]:
        assert d.rank(-1, a) == pytest.approx(rank(a), rel=1e-9, abs=1e-9), a
    assert d.rank(-1, 12.0) == 12.0  # beyond every size seen: ranked by what it used


def test_known_size_is_srpt():
    d = _core.ServiceDistribution(half_life=0)
    for _ in range(50):
        d.observe(-1, 2.0)
    for a in [0.0, 0.3, 1.0, 1.999]:
        assert d.rank(-1, a) == pytest.approx(2.0 - a, abs=1e-9)


def test_online_learning_converges_and_tracks_a_shift():
    rng = np.random.default_rng(3)
    d = _core.ServiceDistribution()  # default decay: half-life 500 programs
    first = two_point(0.2, 8.0, 0.7)
    for x in np.where(rng.random(3000) < 0.7, 0.2, 8.0):
        d.observe(-1, float(x))
    assert d.rank(-1, 0.0) == pytest.approx(first(0.0), rel=0.06)
    assert d.rank(-1, 1.0) == pytest.approx(first(1.0), rel=1e-9)
    # the workload changes: the old sizes decay out within a few half-lives
    second = two_point(0.2, 8.0, 0.2)
    for x in np.where(rng.random(3000) < 0.2, 0.2, 8.0):
        d.observe(-1, float(x))
    assert d.rank(-1, 0.0) == pytest.approx(second(0.0), rel=0.06)
    assert abs(d.rank(-1, 0.0) - first(0.0)) > 0.5


def test_a_class_ranks_from_the_pool_until_it_has_enough_programs():
    d = _core.ServiceDistribution(half_life=0)
    for _ in range(100):
        d.observe(0, 1.0)
    for _ in range(15):
        d.observe(1, 4.0)
    assert d.count(-1) == pytest.approx(115) and d.count(1) == pytest.approx(15)
    pooled = d.rank(-1, 0.0)
    assert d.rank(1, 0.0) == pytest.approx(pooled)  # 15 < 16 programs: pooled
    d.observe(1, 4.0)
    assert d.rank(1, 0.0) == pytest.approx(4.0) and d.rank(0, 0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        d.observe(0, -1.0)


def gittins(**kw):
    opts = dict(policy="gittins", num_queues=4, quantum_base=0.01, quantum_growth=2.0,
                starvation_beta=0.0, max_num_seqs=1, num_gpu_blocks=256, gittins_classes=0,
                min_steps_between_preemptions=0, max_preemptions_per_step=0)  # fmt: skip
    opts.update(kw)
    return make_scheduler(**opts)


def prompt(n=4, start=1):
    return np.arange(start, start + n, dtype=np.int32)


def teach(s, sizes_steps):
    """Completes one program per entry, each a single call of that many 10 ms steps."""
    for i, n in enumerate(sizes_steps):
        s.add_request(f"t{i}", prompt(4, 100 + i), max_tokens=n, program_id=f"T{i}")
        run_to_end(s)
        s.end_program(f"T{i}")


def first_scheduled(s):
    p, _ = step(s)
    return s.request_info(int(p["seq_ids"][0]))["request_id"]


def test_program_table_learns_sizes_from_program_ends():
    s = gittins()
    teach(s, [3, 3, 5])
    d = s.programs.service
    assert d.count(-1) == pytest.approx(3, rel=0.01)  # decayed weights (half-life 500)
    s.add_request("u", prompt(), max_tokens=2)  # an untagged call completes its program
    run_to_end(s)
    assert d.count(-1) == pytest.approx(4, rel=0.01)


def test_near_done_program_runs_before_a_new_one_unlike_plas():
    # every program takes 10 steps: one that attained 8 has 2 left, a new one 10 (SRPT-like);
    # least attained service (plas) would run the new one first
    for policy, expect in (("gittins", "a2"), ("plas", "b1")):
        s = gittins(policy=policy)
        teach(s, [10] * 20)
        s.add_request("a1", prompt(), max_tokens=8, program_id="A")
        run_to_end(s)
        s.add_request("b1", prompt(4, 30), max_tokens=10, program_id="B", arrival_time=s.now)
        s.add_request("a2", prompt(4, 20), max_tokens=2, program_id="A", arrival_time=s.now)
        assert first_scheduled(s) == expect, policy


def test_threaded_calls_share_the_critical_path():
    s = gittins(max_num_seqs=4)
    teach(s, [6] * 20)
    s.add_request("c1", prompt(), max_tokens=3, program_id="P")
    s.add_request("c2", prompt(4, 10), max_tokens=5, program_id="P")
    done = run_to_end(s)
    crit = s.program_info("P")["critical"]
    assert crit == pytest.approx(max(done["c1"][1]["service"], done["c2"][1]["service"]))
    s.add_request("c3", prompt(4, 20), max_tokens=2, program_id="P")
    s.add_request("c4", prompt(4, 30), max_tokens=2, program_id="P")
    k3, k4 = (s.request_info(s.find(c))["priority_key"][0] for c in ("c3", "c4"))
    assert s.request_info(s.find("c3"))["snapshot"] == pytest.approx(crit)
    assert k3 == k4 == pytest.approx(s.programs.service.rank(-1, crit))


@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_starvation_is_bounded(beta):
    # a program past every size seen ranks last; a stream of fresh short programs would starve
    # it forever without anti-starvation, and with beta its wait is bounded by beta x service
    s = gittins(starvation_beta=beta)
    teach(s, [2] * 20)
    s.add_request("h1", prompt(), max_tokens=10, program_id="H")
    run_to_end(s)
    s.add_request("h2", prompt(4, 40), max_tokens=2, program_id="H", arrival_time=s.now)
    waited = None
    for k in range(200):
        s.add_request(f"n{k}", prompt(4, 1000 + k), max_tokens=1, arrival_time=s.now)
        _, fin = step(s)
        if s.request_info(s.find("h2"))["status"] != "waiting":
            waited = k
            break
    if beta == 0.0:
        assert waited is None
    else:
        # W >= beta * T with T = 0.1 s of service: promoted after about 20 steps of 10 ms
        assert waited is not None and 15 <= waited <= 25
