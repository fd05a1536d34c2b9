"""Executors that run the C++ scheduler's steps: simulated (cost model) or real (the engine).

``SimExecutor`` keeps a virtual clock. Each step: ``schedule()`` -> cost model (forward time from
the batch shape plus host-link time of the planned swaps) -> the calls' deterministic output
tokens (gathered from the driver's :class:`~pyserve.sim.driver.TokenBook`) -> ``update(tokens,
seconds)``. Per step the Python side is a fixed number of numpy calls, independent of how many
calls run (the ``ARCHITECTURE.md`` rule). ``EngineExecutor`` drives the real engine on the wall
clock through the same protocol.

Policy names: any name in ``_core.policy_names()``, plus the Autellix baselines ``vllm`` (fcfs,
no prefix caching, no chunked prefill: the token budget is raised to fit any whole prompt) and
``vllm-opt`` (fcfs with chunked prefill and prefix caching).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pyserve import _core
from pyserve.config import CacheConfig, EngineConfig, SchedulerConfig, core_config
from pyserve.sim.cost_model import CostModel
from pyserve.sim.driver import Driver, Executor, RunResult, StepResult, TokenBook
from pyserve.sim.presets import get_preset
from pyserve.sim.trace import Program, prompt_len

GiB = 2**30
BASELINES = {
    # name: (core policy, prefix caching, chunked prefill)
    "vllm": ("fcfs", False, False),
    "vllm-opt": ("fcfs", True, True),
}


def policy_choices() -> list[str]:
    """Names accepted as a bench policy: the core's policies and the baseline aliases."""
    return list(_core.policy_names()) + [b for b in BASELINES if b not in _core.policy_names()]


@dataclass(frozen=True)
class SimSetup:
    """Everything but the trace and the policy that a simulated run depends on."""

    preset: str = "llama3-8b-h100"
    block_size: int = CacheConfig.block_size
    max_num_batched_tokens: int = SchedulerConfig.max_num_batched_tokens
    max_num_seqs: int = SchedulerConfig.max_num_seqs
    preemption_mode: str = SchedulerConfig.preemption_mode
    # Host pool: swap space and the host tier of the prefix cache (vllm-opt runs without one).
    swap_space_gib: float = 16.0
    kv_retention: str = SchedulerConfig.kv_retention
    # Multiplies the preset's GPU KV capacity (8.0: the "8x HBM" bound of benchmarks).
    kv_capacity_scale: float = 1.0
    enable_prefix_caching: bool = True
    policy_options: dict[str, Any] = field(default_factory=dict)
    ltr_sigma: float = 0.5

    def resolve(self, policy: str) -> tuple[str, SimSetup, bool]:
        """(core policy name, setup adjusted for a baseline alias, chunked prefill on?).
        ValueError for an unknown policy."""
        if policy in BASELINES and policy not in _core.policy_names():
            core, caching, chunked = BASELINES[policy]
            # NOTE: vLLM's defaults: LRU over the GPU pool only (no host tier; swap space off,
            # so preemption recomputes as vLLM v1 does).
            base = dataclasses.replace(
                self, enable_prefix_caching=caching, kv_retention="lru", swap_space_gib=0.0
            )
            return core, base, chunked
        if policy not in _core.policy_names():
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(policy_choices())}")
        return policy, self, True


def required_model_len(programs: Sequence[Program], block_size: int) -> int:
    """The longest prompt + output of any call, rounded up to whole blocks."""
    if not programs:
        raise ValueError("the trace has no programs")
    need = max(prompt_len(p, c.call_id) + c.output_tokens for p in programs for c in p.calls)
    return -(-need // block_size) * block_size


def build_core_config(
    setup: SimSetup, policy: str, cost: CostModel, max_model_len: int
) -> _core.SchedulerConfig:
    """The C++ scheduler config of a simulated run: KV capacity from the preset's memory."""
    core_policy, setup, chunked = setup.resolve(policy)
    gpu_blocks = int(cost.kv_capacity_blocks(setup.block_size) * setup.kv_capacity_scale)
    if max_model_len > gpu_blocks * setup.block_size:
        raise ValueError(
            f"a call needs {max_model_len} tokens of KV but preset {setup.preset!r} holds "
            f"{gpu_blocks * setup.block_size}"
        )
    block_bytes = setup.block_size * cost.preset.model.kv_bytes_per_token
    budget = setup.max_num_batched_tokens
    if not chunked:
        # NOTE: a whole prompt always fits the budget, so a prefill is never split (vLLM without
        # chunked prefill); decodes still share the step.
        budget = max(budget, max_model_len)
    sched = SchedulerConfig(
        max_num_batched_tokens=budget,
        max_num_seqs=setup.max_num_seqs,
        policy=core_policy,
        preemption_mode=setup.preemption_mode,
        kv_retention=setup.kv_retention,
        policy_options=dict(setup.policy_options),
    )
    cache = CacheConfig(
        block_size=setup.block_size, enable_prefix_caching=setup.enable_prefix_caching
    )
    config = core_config(
        sched,
        cache,
        num_gpu_blocks=gpu_blocks,
        num_cpu_blocks=int(setup.swap_space_gib * GiB // block_bytes),
        max_model_len=max_model_len,
    )
    config.retention_reload_s_per_token = reload_s_per_token(cost, setup.max_num_batched_tokens)
    return config


def reload_s_per_token(cost: CostModel, chunk: int) -> float:
    """ttl's reload cost: the preset's time to prefill one token of a long context (one chunk
    of ``chunk`` tokens)."""
    one = np.array([chunk])
    return cost.step_time(one, one) / chunk


def plan_seconds(cost: CostModel, plan) -> float:
    """Cost-model seconds of a planned step: the forward plus its batched swaps."""
    qo = plan.qo_indptr
    seconds = cost.step_time(qo[1:] - qo[:-1], plan.seq_lens, plan.num_decodes)
    n_moved = plan.swap_out.shape[0] + plan.swap_in.shape[0]
    if n_moved:
        seconds = cost.with_transfers(seconds, n_moved)
    return seconds


class SimExecutor:
    """The :class:`~pyserve.sim.driver.Executor` protocol on a virtual clock.

    ``profile=True`` accumulates wall seconds spent in ``schedule``, the cost model and ``update``
    in :attr:`timings` (two extra clock reads per phase).
    """

    def __init__(
        self,
        config: _core.SchedulerConfig,
        cost: CostModel,
        book: TokenBook,
        profile: bool = False,
    ) -> None:
        if cost.block_size != config.block_size:
            raise ValueError(
                f"cost model block_size {cost.block_size} != scheduler block_size "
                f"{config.block_size}"
            )
        self.scheduler = _core.Scheduler(config, [])
        self.cost, self.book = cost, book
        self.clock = 0.0
        self.profile = profile
        self.timings = {"schedule": 0.0, "cost_model": 0.0, "update": 0.0}

    @property
    def now(self) -> float:
        """Virtual time (s)."""
        return self.clock

    def add_request(self, request_id: str, prompt: np.ndarray, **kwargs) -> int:
        """Forward to the core's ``add_request``; returns the dense seq id."""
        return self.scheduler.add_request(request_id, prompt, **kwargs)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def end_program(self, program_id: str) -> None:
        """The program made its last call: it leaves the program table (its size is learned)."""
        if program_id in self.scheduler.programs:
            self.scheduler.end_program(program_id)

    def mark_coming_back(self, program_id: str) -> None:
        """The program's current call ends in a tool call: it will send another."""
        self.scheduler.mark_coming_back(program_id)

    def idle_until(self, t: float) -> None:
        """Nothing runs: jump the clock to ``t`` (never backwards)."""
        self.clock = max(self.clock, t)
        self.scheduler.advance_clock(self.clock)

    def stats(self) -> dict:
        return self.scheduler.stats()

    def check_invariants(self) -> None:
        self.scheduler.check_invariants()

    def step(self) -> StepResult:
        """One scheduler step on the virtual clock."""
        if self.profile:
            return self._step_profiled()
        s = self.scheduler
        plan = s.schedule()
        seconds = self.step_seconds(plan)
        sample_seqs = plan.seq_ids[plan.sample_seq_idx]
        pos = self.book.positions(sample_seqs)
        sampled = self.book.tokens[pos]
        num_seqs, num_decodes = plan.num_seqs, plan.num_decodes
        rep = s.update(sampled, seconds)
        self.clock += seconds
        return _result(rep, num_seqs, num_decodes, sample_seqs, sampled, seconds, pos)

    def step_seconds(self, plan) -> float:
        """Cost-model seconds of a planned step: the forward plus its batched swaps."""
        return plan_seconds(self.cost, plan)

    def _step_profiled(self) -> StepResult:
        s, t = self.scheduler, self.timings
        t0 = time.perf_counter()
        plan = s.schedule()
        t1 = time.perf_counter()
        seconds = self.step_seconds(plan)
        t2 = time.perf_counter()
        sample_seqs = plan.seq_ids[plan.sample_seq_idx]
        pos = self.book.positions(sample_seqs)
        sampled = self.book.tokens[pos]
        num_seqs, num_decodes = plan.num_seqs, plan.num_decodes
        rep = s.update(sampled, seconds)
        t3 = time.perf_counter()
        t["schedule"] += t1 - t0
        t["cost_model"] += t2 - t1
        t["update"] += t3 - t2
        self.clock += seconds
        return _result(rep, num_seqs, num_decodes, sample_seqs, sampled, seconds, pos)


def _result(rep, num_seqs, num_decodes, sample_seqs, sampled, seconds, pos) -> StepResult:
    """The driver's StepResult from the core's StepReport."""
    finished = [(f.seq_id, f.reason) for f in rep.finished]
    first = np.array(rep.first_scheduled)
    return StepResult(num_seqs, num_decodes, first, sample_seqs, sampled, seconds, finished, pos)


class RealExecutor(Executor, Protocol):
    """What the real engine provides to be driven by ``bench run --executor real``.

    The :class:`~pyserve.sim.driver.Executor` protocol on the wall clock: ``now`` is seconds since
    the executor was created, ``idle_until(t)`` sleeps until then, ``add_request`` takes the
    core's keyword arguments, and ``step()`` schedules, runs the model on the plan, samples and
    calls ``update``, returning ``StepResult(plan, sample_seqs, sampled, seconds, finished)``.
    ``vocab_size`` bounds the synthetic prompt token ids the driver sends.
    """

    vocab_size: int


class EngineExecutor:
    """:class:`RealExecutor` over :class:`pyserve.engine.Engine` on the wall clock, through its
    messages and StepReports. Calls run greedily with ``ignore_eos``.

    NOTE (ids): the driver's TokenBook is indexed by seq id; this executor hands out its own ids
    (never reused) and maps each report's request ids to them.
    """

    def __init__(self, config: EngineConfig) -> None:
        from pyserve.engine import Engine

        self.engine = Engine(config)
        self.vocab_size = int(self.engine.vocab_size)
        self._gid: dict[str, int] = {}
        self._next = 0

    @property
    def now(self) -> float:
        return self.engine.now()

    def add_request(self, request_id: str, prompt: np.ndarray, **kw) -> int:
        from pyserve.engine.messages import AddCall, CallSpec
        from pyserve.sampling_params import SamplingParams

        params = SamplingParams(
            max_tokens=kw.pop("max_tokens"), temperature=0.0, ignore_eos=kw.pop("ignore_eos", True)
        )
        kw.pop("arrival_time", None)  # NOTE: the engine stamps arrivals with its own clock
        spec = CallSpec(request_id, prompt.tolist(), params, kw.pop("priority", 0.0),
                        kw.pop("program_id", None) or None, kw.pop("ltr_score", None),
                        remaining_hint=kw.pop("remaining_hint", -1.0),
                        program_remaining_hint=kw.pop("program_remaining_hint", -1.0))  # fmt: skip
        if kw:
            raise ValueError(f"unknown call options {sorted(kw)}")
        self.engine.handle(AddCall(spec))
        gid = self._gid[request_id] = self._next
        self._next += 1
        return gid

    def step(self) -> StepResult:
        rep = self.engine.step()
        gid = self._gid
        seqs = np.fromiter((gid[r] for r in rep.request_ids), np.int64, rep.num_new_tokens)
        first = np.fromiter((gid[r] for r in rep.first_scheduled), np.int64,
                            rep.first_scheduled.shape[0])  # fmt: skip
        finished = [(gid.pop(f.request_id), f.reason) for f in rep.finished]
        seconds = rep.end_time - rep.start_time
        return StepResult(rep.num_seqs, rep.num_seqs - rep.num_prefills, first, seqs,
                          rep.token_ids, seconds, finished)  # fmt: skip

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished()

    def idle_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.now))

    def stats(self) -> dict:
        return self.engine.stats()

    def check_invariants(self) -> None:
        self.engine.check_invariants()


def make_real_executor(config: EngineConfig) -> RealExecutor:
    """The engine's bench executor (:class:`EngineExecutor`). ValueError when the engine cannot
    be imported."""
    try:
        import pyserve.engine  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f"--executor real needs pyserve.engine, which failed to import: {e}"
        ) from None
    return EngineExecutor(config)


def prepare(programs: Sequence[Program], policy: str, setup: SimSetup):
    """(preset, cost model, core config) of a simulated run; shared by single engines and
    clusters."""
    preset = get_preset(setup.preset)
    cost = CostModel(preset, setup.block_size)
    config = build_core_config(setup, policy, cost, required_model_len(programs, setup.block_size))
    return preset, cost, config


def drive(programs: Sequence[Program], ex, book: TokenBook, preset, setup: SimSetup, desc: str,
          *, progress: bool, check_invariants: bool) -> tuple[RunResult, float]:  # fmt: skip
    """Runs the program driver over executor ``ex``; returns (result, wall seconds)."""
    driver = Driver(
        programs, ex, book, vocab_size=preset.model.vocab_size, ltr_sigma=setup.ltr_sigma
    )
    t0 = time.perf_counter()
    result = driver.run(progress=progress, desc=desc)
    wall = time.perf_counter() - t0
    if check_invariants:
        ex.check_invariants()
    return result, wall


def run_meta(executor: str, policy: str, config, preset, wall: float, sim_s: float) -> dict:
    """The settings every simulated run records in ``RunResult.meta``."""
    return {
        "executor": executor,
        "policy": policy,
        "core_policy": config.policy,
        "preset": preset.name,
        "block_size": config.block_size,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "max_num_seqs": config.max_num_seqs,
        "preemption_mode": config.preemption_mode,
        "enable_prefix_caching": config.enable_prefix_caching,
        "num_gpu_blocks": config.num_gpu_blocks,
        "num_cpu_blocks": config.num_cpu_blocks,
        "kv_retention": config.kv_retention,
        "kv_bytes_per_token": preset.model.kv_bytes_per_token,
        "wall_s": wall,
        "sim_s": sim_s,
        "speedup": sim_s / wall if wall > 0 else math.inf,
    }


def simulate(
    programs: Sequence[Program],
    policy: str,
    setup: SimSetup | None = None,
    *,
    progress: bool = False,
    profile: bool = False,
    check_invariants: bool = False,
) -> RunResult:
    """Replay ``programs`` under ``policy`` in the simulator; returns the raw measurements."""
    setup = setup or SimSetup()
    preset, cost, config = prepare(programs, policy, setup)
    book = TokenBook()
    ex = SimExecutor(config, cost, book, profile=profile)
    result, wall = drive(programs, ex, book, preset, setup, policy, progress=progress,
                         check_invariants=check_invariants)  # fmt: skip
    result.meta = run_meta("sim", policy, config, preset, wall, ex.now)
    result.meta["timings"] = dict(ex.timings) if profile else {}
    return result


def replay_real(
    programs: Sequence[Program],
    policy: str,
    setup: SimSetup | None = None,
    model: str = "builtin:tiny",
    *,
    progress: bool = False,
    engine_executor: str = "real",
) -> RunResult:
    """Replay ``programs`` on the real engine (wall clock) with the same trace semantics.

    Uses the scheduler options of ``setup``. ``engine_executor="sim"`` runs the engine's steps on
    the simulated ``setup.preset`` GPU in wall time (``pyserve.sim.realtime``; its host pool is
    ``setup.swap_space_gib``); with ``real`` the preset is not used. ValueError when the engine
    does not provide a bench executor (see :func:`make_real_executor`).
    """
    setup = setup or SimSetup()
    core_policy, setup, chunked = setup.resolve(policy)
    budget = setup.max_num_batched_tokens
    if not chunked:
        budget = max(budget, required_model_len(programs, setup.block_size))
    extra: dict[str, Any] = {}
    if engine_executor == "sim":
        extra = {"executor": "sim", "preset": setup.preset,
                 "swap_space_bytes": int(setup.swap_space_gib * GiB)}  # fmt: skip
    config = EngineConfig.from_kwargs(
        model,
        block_size=setup.block_size,
        enable_prefix_caching=setup.enable_prefix_caching,
        max_num_batched_tokens=budget,
        max_num_seqs=setup.max_num_seqs,
        policy=core_policy,
        preemption_mode=setup.preemption_mode,
        kv_retention=setup.kv_retention,
        policy_options=dict(setup.policy_options),
        **extra,
    )
    ex = make_real_executor(config)
    book = TokenBook()
    driver = Driver(
        programs,
        ex,
        book,
        vocab_size=int(ex.vocab_size),
        ltr_sigma=setup.ltr_sigma,
        emit_trace_tokens=False,
    )
    t0 = time.perf_counter()
    result = driver.run(progress=progress, desc=policy)
    result.meta = {
        "executor": "real",
        "engine_executor": engine_executor,
        **({"preset": setup.preset} if engine_executor == "sim" else {}),
        "policy": policy,
        "core_policy": core_policy,
        "model": model,
        "block_size": setup.block_size,
        "max_num_batched_tokens": budget,
        "max_num_seqs": setup.max_num_seqs,
        "preemption_mode": setup.preemption_mode,
        "enable_prefix_caching": setup.enable_prefix_caching,
        "kv_bytes_per_token": int(getattr(ex, "kv_bytes_per_token", 0)),
        "wall_s": time.perf_counter() - t0,
        "sim_s": ex.now,
    }
    return result
