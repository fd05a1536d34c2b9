"""K simulated engines behind the program-aware router, on one virtual clock.

:class:`ClusterExecutor` implements the driver's :class:`~pyserve.sim.driver.Executor` protocol
over K C++ schedulers that share one ``_core.ProgramTable`` (so PLAS/ATLAS priorities reflect
service a program received on any engine) and a ``_core.LoadBalancer`` that picks each call's
engine when the driver releases it. Each engine keeps its own clock (the end of its last step);
the cluster always steps the engine whose next step starts earliest (a discrete-event loop).

NOTE (time): an engine steps from start time ``s`` only after the driver has released every call
due by ``s``. The driver releases up to :attr:`ClusterExecutor.now` right before each step, so when
``s`` is past ``now`` (the previous step ended earlier, e.g. on an engine that just went idle),
:meth:`ClusterExecutor.step` returns an empty step that moves the clock to ``s`` first. A call
routed to an engine whose clock is behind the call's release waits in that engine's inbox until
the engine reaches it.

NOTE (ids): the driver's TokenBook is indexed by seq id; engines reuse their dense ids, so the
cluster hands out global ids (never reused) and maps each engine's ids to them per step with one
numpy gather.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from pyserve import _core
from pyserve.cluster.router import Router, RouterOptions
from pyserve.sim.cost_model import CostModel
from pyserve.sim.driver import RunResult, StepResult, TokenBook
from pyserve.sim.executor import SimSetup, drive, prepare, run_meta
from pyserve.sim.trace import Program

_EMPTY = np.zeros(0, dtype=np.int32)


class _Engine:
    """One simulated engine: a scheduler, its clock and the calls routed to it but not due yet."""

    def __init__(self, config: _core.SchedulerConfig, programs: _core.ProgramTable) -> None:
        self.core = _core.Scheduler(config, [], programs)
        self.clock = 0.0
        self.inbox: deque = deque()  # (arrival, request_id, prompt, kwargs, global id), by arrival
        self.local_to_global = np.full(64, -1, dtype=np.int64)

    def busy(self) -> bool:
        return self.core.has_unfinished()

    def next_start(self) -> float:
        """When this engine can start its next step (inf when it has nothing to do)."""
        if self.core.has_unfinished():
            return self.clock
        if self.inbox:
            return max(self.clock, self.inbox[0][0])
        return math.inf

    def admit_due(self, now: float) -> None:
        """Adds the inbox calls that arrived by ``now`` to the scheduler."""
        while self.inbox and self.inbox[0][0] <= now:
            _, rid, prompt, kwargs, gid = self.inbox.popleft()
            local = self.core.add_request(rid, prompt, **kwargs)
            if local >= self.local_to_global.shape[0]:
                grow = max(2 * self.local_to_global.shape[0], local + 1)
                table = np.full(grow, -1, dtype=np.int64)
                table[: self.local_to_global.shape[0]] = self.local_to_global
                self.local_to_global = table
            self.local_to_global[local] = gid


class ClusterExecutor:
    """The driver's Executor protocol over ``len(configs)`` engines behind a :class:`Router`."""

    def __init__(
        self,
        config: _core.SchedulerConfig,
        num_engines: int,
        cost: CostModel,
        book: TokenBook,
        options: RouterOptions | None = None,
    ) -> None:
        if num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {num_engines}")
        if cost.block_size != config.block_size:
            raise ValueError("cost model and scheduler block sizes differ")
        self.programs = _core.ProgramTable(config.program_ttl_s)
        options = options or RouterOptions(block_size=config.block_size)
        self.router = Router(num_engines, options, programs=self.programs)
        self.engines = [_Engine(config, self.programs) for _ in range(num_engines)]
        for e in range(num_engines):  # NOTE: an engine that never reported has no headroom
            self.router.report(e, config.num_gpu_blocks, config.num_gpu_blocks)
        self.cost, self.book = cost, book
        self._now = 0.0
        self._call_ids: list[str] = []  # global id -> request id
        self.routed = np.zeros(num_engines, dtype=np.int64)

    @property
    def now(self) -> float:
        """End of the last step (or the clock an idle jump moved to), virtual seconds."""
        return self._now

    def add_request(self, request_id: str, prompt: np.ndarray, **kwargs) -> int:
        """Routes the call and queues it on its engine; returns its cluster-global seq id."""
        e = self.router.route(request_id, kwargs.get("program_id") or "", int(prompt.shape[0]))
        gid = len(self._call_ids)
        self._call_ids.append(request_id)
        arrival = float(kwargs.get("arrival_time", self._now))
        self.engines[e].inbox.append((arrival, request_id, prompt, kwargs, gid))
        self.routed[e] += 1
        return gid

    def end_program(self, program_id: str) -> None:
        """The program made its last call: it leaves the shared program table."""
        if program_id in self.programs:
            self.programs.end(program_id)

    def has_unfinished(self) -> bool:
        return any(eng.busy() or eng.inbox for eng in self.engines)

    def idle_until(self, t: float) -> None:
        self._now = max(self._now, t)

    def step(self) -> StepResult:
        """Steps the engine whose next step starts earliest (or moves the clock; see module)."""
        starts = [eng.next_start() for eng in self.engines]
        e = int(np.argmin(starts))
        s = starts[e]
        if not math.isfinite(s):
            raise RuntimeError("step() called with no work on any engine")
        if s > self._now:  # NOTE: the driver has released calls up to _now only
            self._now = s
            return StepResult(0, 0, _EMPTY, _EMPTY, _EMPTY, 0.0, [], _EMPTY)
        eng = self.engines[e]
        eng.clock = s
        eng.core.advance_clock(s)
        eng.admit_due(s)
        plan = eng.core.schedule()
        seconds = self._step_seconds(plan)
        l2g = eng.local_to_global
        gids = l2g[plan.seq_ids]
        sample = gids[plan.sample_seq_idx]
        pos = self.book.positions(sample)
        sampled = self.book.tokens[pos]
        num_seqs, num_decodes = plan.num_seqs, plan.num_decodes
        rep = eng.core.update(sampled, seconds)
        eng.clock = s + seconds
        first = l2g[np.asarray(rep.first_scheduled)]
        for gid in first.tolist():  # NOTE: the core reports each call's first step once
            self.router.started(self._call_ids[gid])
        done = [(int(l2g[f.seq_id]), f.reason) for f in rep.finished]
        for gid, _ in done:
            self.router.finished(self._call_ids[gid])
        self.router.report(e, rep.gpu_blocks_free, rep.gpu_blocks_total)
        self._now = eng.clock
        return StepResult(num_seqs, num_decodes, first, sample, sampled, seconds, done, pos)

    def _step_seconds(self, plan) -> float:
        qo = plan.qo_indptr
        seconds = self.cost.step_time(qo[1:] - qo[:-1], plan.seq_lens, plan.num_decodes)
        n_moved = plan.swap_out.shape[0] + plan.swap_in.shape[0]
        return self.cost.with_transfers(seconds, n_moved) if n_moved else seconds

    def stats(self) -> dict:
        """Core stats summed over engines, plus per-engine stats and routing counts."""
        per = [eng.core.stats() for eng in self.engines]
        total = {k: sum(p[k] for p in per) for k in per[0]}
        total["engines"] = [
            {**p, "routed": int(r), "clock_s": eng.clock}
            for p, r, eng in zip(per, self.routed, self.engines, strict=True)
        ]
        return total

    def check_invariants(self) -> None:
        """Raises if any engine's or the router's bookkeeping is inconsistent."""
        for eng in self.engines:
            eng.core.check_invariants()
        self.router.check()


def run_cluster(
    programs: Sequence[Program],
    engines: int = 4,
    routing: str = "locality",
    policy: str = "plas",
    setup: SimSetup | None = None,
    *,
    preset: str | None = None,
    load_signal: str = "calls",
    short_call_tokens: int = 2048,
    progress: bool = False,
    check_invariants: bool = False,
) -> RunResult:
    """Replays ``programs`` on ``engines`` simulated engines behind the router.

    ``routing``: locality | round_robin | least_loaded; ``load_signal``: calls | llumnix;
    ``policy``: the per-engine scheduling policy (as for ``simulate``); ``preset`` overrides
    ``setup.preset``. Returns the driver's RunResult; ``meta`` records the cluster settings and
    ``stats["engines"]`` the per-engine stats. ValueError for bad arguments.
    """
    setup = setup or SimSetup()
    if preset is not None:
        import dataclasses

        setup = dataclasses.replace(setup, preset=preset)
    options = RouterOptions(
        routing=routing,
        load_signal=load_signal,
        short_call_tokens=short_call_tokens,
        block_size=setup.block_size,
    )
    pre, cost, config = prepare(programs, policy, setup)
    book = TokenBook()
    ex = ClusterExecutor(config, engines, cost, book, options)
    result, wall = drive(programs, ex, book, pre, setup, f"{routing}/{policy}",
                         progress=progress, check_invariants=check_invariants)  # fmt: skip
    result.meta = run_meta("sim-cluster", policy, config, pre, wall,
                           max(eng.clock for eng in ex.engines))  # fmt: skip
    result.meta.update(routing=routing, load_signal=load_signal,
                       short_call_tokens=short_call_tokens, engines=engines,
                       routed=ex.routed.tolist())  # fmt: skip
    return result
