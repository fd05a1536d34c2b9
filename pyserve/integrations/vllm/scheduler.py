"""ProgramScheduler: vLLM's own scheduler with pyserve deciding every request's priority.

vLLM keeps the KV blocks, the prefix cache, chunked prefill, async scheduling, speculative
decoding and connectors. pyserve's C++ policy (``_core.ProgramPolicy``: the same PLAS/ATLAS/MLFQ
code and program table as the native engine) decides each request's integer ``priority`` under
vLLM's ``priority`` policy, which the plugin forces on:

    priority = user priority * num_queues + queue index      (lower runs earlier)

- arrival (``add_request``): the entry queue comes from the program table;
- each step: the measured step time is charged pro rata by tokens, quantum demotions and
  anti-starvation promotions re-insert waiting requests into vLLM's heap (never mutated in
  place), the running list is kept best-first, and a strictly better waiting call may displace
  the worst running one when the batch is full (bounded, vllm#40004);
- finish and abort (``_free_request``): the call's service folds into its program.
"""

from __future__ import annotations

import math
import time
from collections import deque

from vllm.logger import init_logger
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.interface import PauseState
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from pyserve import _core
from pyserve.integrations.vllm.compat import check_instance
from pyserve.integrations.vllm.config import policy_config
from pyserve.integrations.vllm.program_ids import program_ids

# NOTE: under vLLM's logger tree so its handlers print the plugin's lines.
logger = init_logger("vllm." + __name__)


class ProgramScheduler(Scheduler):
    """vLLM ``--scheduler-cls`` whose priorities come from pyserve's program-aware policies.

    Instantiating it returns the async variant when ``scheduler_config.async_scheduling`` is on.
    """

    def __new__(cls, *args, **kwargs):
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        if cls is ProgramScheduler and vllm_config.scheduler_config.async_scheduling:
            cls = AsyncProgramScheduler
        return super().__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        self.pyserve_config = policy_config(vllm_config.additional_config)
        sc = vllm_config.scheduler_config
        if sc.policy != "priority":
            logger.info("pyserve: scheduling policy %r -> 'priority' (pyserve sets priorities)",
                        sc.policy)  # fmt: skip
            sc.policy = "priority"
        super().__init__(*args, **kwargs)
        check_instance(self)
        assert self.policy == SchedulingPolicy.PRIORITY
        self.program_policy = _core.ProgramPolicy(self.pyserve_config)
        # The wall clock of service and waits (seconds); tests substitute a fake one.
        self.clock = time.monotonic
        self._clock0 = self.clock()
        # Wall-clock step timing: schedule() end times not yet matched by update_from_output().
        self._scheduled_at: deque[float] = deque()
        self._last_update = 0.0
        # Requests the policy counts as running -> the step they were (re)admitted at.
        self._admitted: dict[str, int] = {}
        self._user_priority: dict[str, int] = {}
        logger.info("pyserve: program-aware scheduling with %s", self.describe())

    def describe(self) -> str:
        """The active policy settings, one line."""
        c = self.pyserve_config
        return (f"policy={c.policy} num_queues={c.num_queues} quantum_base={c.quantum_base}s "
                f"quantum_growth={c.quantum_growth} starvation_beta={c.starvation_beta} "
                f"max_preemptions_per_step={c.max_preemptions_per_step} "
                f"program_ttl_s={c.program_ttl_s}")  # fmt: skip

    # ---- priorities ------------------------------------------------------------------------
    def _now(self) -> float:
        return self.clock() - self._clock0

    def _priority(self, request_id: str) -> int:
        q = self.program_policy.primary(request_id)
        # NOTE: atlas/plas/mlfq keys are integer queue indices (config.POLICIES).
        return self._user_priority[request_id] * self.pyserve_config.num_queues + int(q)

    def _reprioritize(self, request: Request) -> None:
        """Give a request its current policy priority; a queued one is re-inserted into the
        heap that holds it (its heap position depends on the priority)."""
        new = self._priority(request.request_id)
        if new == request.priority:
            return
        for queue in (self.waiting, self.kv_holding_waiting):
            before = len(queue)
            queue.remove_requests((request,))
            if len(queue) < before:
                request.priority = new
                queue.add_request(request)
                return
        request.priority = new  # running (a list, re-sorted each step) or not queued

    # ---- arrival ---------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        rid = request.request_id
        if rid in self.requests:  # a streaming-input continuation of a live request
            super().add_request(request)
            return
        ids = program_ids(request)
        self.program_policy.advance_clock(self._now())
        self.program_policy.arrive(rid, program_id=ids.program_id, priority=request.priority,
                                   arrival_time=self.program_policy.now)  # fmt: skip
        self._user_priority[rid] = request.priority
        request.priority = self._priority(rid)  # NOTE: before vLLM pushes it into its heap
        super().add_request(request)

    # ---- each step -------------------------------------------------------------------------
    def schedule(self, throttle_prefills: bool = False):
        self.program_policy.advance_clock(self._now())
        for rid in self.program_policy.begin_step():  # anti-starvation promotions
            self._reprioritize(self.requests[rid])
        # Best-first running order: vLLM gives running requests the token budget in list order.
        self.running.sort(key=lambda r: (r.priority, r.arrival_time))
        self._proactive_preemption()
        out = super().schedule(throttle_prefills)
        step = self.program_policy.step
        for rid in out.num_scheduled_tokens:
            if rid not in self._admitted:
                self.program_policy.started(rid)
                self._admitted[rid] = step
        self._scheduled_at.append(self.clock())
        return out

    def update_from_output(self, scheduler_output, model_runner_output):
        t = self.clock()
        scheduled = self._scheduled_at.popleft() if self._scheduled_at else t
        # NOTE: with async scheduling the next step is scheduled before this one's output
        # arrives; the step ran from the later of its schedule() and the previous output.
        seconds = max(0.0, t - max(scheduled, self._last_update))
        self._last_update = t
        ran = list(scheduler_output.num_scheduled_tokens.items())
        for rid in self.program_policy.charge(ran, seconds):  # quantum demotions
            self._reprioritize(self.requests[rid])
        return super().update_from_output(scheduler_output, model_runner_output)

    def _proactive_preemption(self) -> None:
        """vllm#40004: while the batch is full, a waiting call of a strictly better class
        displaces the worst running one; bounded per step, recent admissions protected."""
        cfg = self.pyserve_config
        if self._pause_state != PauseState.UNPAUSED:
            return
        free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks
        step = self.program_policy.step
        for _ in range(cfg.max_preemptions_per_step):
            if not self.waiting:
                return
            cand = self.waiting.peek_request()
            want = math.ceil(min(cand.num_tokens - cand.num_computed_tokens,
                                 self.max_num_scheduled_tokens) / self.block_size)  # fmt: skip
            if len(self.running) < self.max_num_running_reqs and free_blocks() >= want:
                return
            victim = self._victim(step - cfg.min_steps_between_preemptions)
            if victim is None or not self._better_class(cand, victim):
                return
            self.running.remove(victim)
            self._preempt_request(victim, time.monotonic())

    def _victim(self, admitted_before: int) -> Request | None:
        for r in reversed(self.running):  # NOTE: running is sorted best-first
            if r.status != RequestStatus.RUNNING or not self._request_blocks_can_be_freed(r):
                continue
            if self._admitted.get(r.request_id, admitted_before) <= admitted_before:
                return r
        return None

    def _better_class(self, a: Request, b: Request) -> bool:
        pa, pb = self._user_priority[a.request_id], self._user_priority[b.request_id]
        if pa != pb:
            return pa < pb
        pp = self.program_policy
        return pp.preempt_class(a.request_id) < pp.preempt_class(b.request_id)

    def _preempt_request(self, request: Request, timestamp: float, drop_stale_output=False):
        super()._preempt_request(request, timestamp, drop_stale_output=drop_stale_output)
        rid = request.request_id
        if self._admitted.pop(rid, None) is not None:
            self.program_policy.preempted(rid)

    # ---- finish and abort ------------------------------------------------------------------
    def _free_request(self, request: Request, delay_free_blocks: bool = False):
        rid = request.request_id
        if rid in self.program_policy:
            self.program_policy.advance_clock(self._now())
            self.program_policy.finish(rid)  # folds service into the program table
            self._admitted.pop(rid, None)
            del self._user_priority[rid]
        return super()._free_request(request, delay_free_blocks=delay_free_blocks)


class AsyncProgramScheduler(ProgramScheduler, AsyncScheduler):
    """ProgramScheduler over vLLM's AsyncScheduler (chosen by ProgramScheduler.__new__)."""
