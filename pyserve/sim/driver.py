"""The program driver: replays a program trace against an executor (simulated or real).

The driver owns the trace semantics (docs/traces.md) and the measurements; the executor owns the
scheduler and the clock. Each loop iteration: issue every call whose release time has come, run
one step, record the sampled tokens and their times, and release the children of finished calls.

Timing definitions (all in the executor's clock, seconds):

- A call is *released* at ``max(finish of its parents) + tool_s`` (a root call at
  ``arrival_s + tool_s``) and added to the scheduler with ``arrival_time`` = its release.
- *Queueing delay*: start of the first step that runs the call minus its release.
- *TTFT*: end of the step that emits its first output token minus its release.
- *Inter-token times*: gaps between the end times of consecutive steps emitting its tokens.
- A program's *latency* is ``finish of its last call - arrival_s``. Every call waits for its
  parents, so this is the length of the DAG's critical path as executed (queueing, execution and
  tool time included); for a single-threaded program it is the sum over its calls.
  *Latency per token* divides it by the program's output tokens (the Autellix metric).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from pyserve.sim.trace import Program, ProgramTokens, stable_seed


class StepResult(NamedTuple):
    """What an executor reports after one step."""

    num_seqs: int  # sequences the step ran
    num_decodes: int  # of which decodes
    first_scheduled: np.ndarray  # seq ids that ran for the first time in this step
    sample_seqs: np.ndarray  # int32 [num_samples]: seq id of each sampled row
    sampled: np.ndarray  # int32 [num_samples]: the token each produced
    seconds: float  # the step's duration (the clock has already advanced by it)
    finished: list  # [(seq_id, reason)] of the calls that finished in this step
    positions: np.ndarray | None = None  # TokenBook.positions(sample_seqs) if already computed


class Executor(Protocol):
    """What the driver needs from an executor. ``SimExecutor`` implements it on a virtual clock;
    a real engine implements it on the wall clock (see :class:`pyserve.sim.executor.RealExecutor`).
    """

    @property
    def now(self) -> float: ...

    def add_request(self, request_id: str, prompt: np.ndarray, **kwargs) -> int: ...

    def step(self) -> StepResult: ...

    def has_unfinished(self) -> bool: ...

    def idle_until(self, t: float) -> None: ...

    def stats(self) -> dict: ...


class TokenBook:
    """Output tokens and their emission times of every issued call, in flat growing buffers.

    NOTE: a call owns ``tokens[offset : offset + output_tokens]`` for the whole run; the seq-id
    indexed arrays (``offset``, ``count``, ``start``) describe the call that holds that seq id
    *now* (the core reuses ids of finished calls). Everything per step is one numpy gather/scatter.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.tokens = np.zeros(capacity, dtype=np.int32)
        self.times = np.full(capacity, np.nan)
        self.size = 0
        self.offset = np.zeros(64, dtype=np.int64)
        self.count = np.zeros(64, dtype=np.int64)
        self.start = np.full(64, np.inf)  # start of the first step that ran the seq

    def open(self, seq_id: int, n: int, ids: np.ndarray | None = None) -> int:
        """Reserve ``n`` token slots for the call now holding ``seq_id``; returns their offset.
        ``ids`` (if given) pre-fills them: the simulator samples exactly these."""
        if self.size + n > self.tokens.shape[0]:
            cap = max(2 * self.tokens.shape[0], self.size + n)
            self.tokens = np.resize(self.tokens, cap)
            self.times = np.concatenate([self.times, np.full(cap - self.times.shape[0], np.nan)])
        if seq_id >= self.offset.shape[0]:
            grow = max(2 * self.offset.shape[0], seq_id + 1) - self.offset.shape[0]
            self.offset = np.concatenate([self.offset, np.zeros(grow, dtype=np.int64)])
            self.count = np.concatenate([self.count, np.zeros(grow, dtype=np.int64)])
            self.start = np.concatenate([self.start, np.full(grow, np.inf)])
        off = self.size
        if ids is not None:
            self.tokens[off : off + n] = ids
        self.size += n
        self.offset[seq_id], self.count[seq_id], self.start[seq_id] = off, 0, np.inf
        return off

    def positions(self, seq_ids: np.ndarray) -> np.ndarray:
        """Buffer index of the next token of each seq."""
        return self.offset[seq_ids] + self.count[seq_ids]

    def record(
        self, seq_ids: np.ndarray, sampled: np.ndarray, t: float, pos: np.ndarray | None = None
    ) -> None:
        """Store one sampled token per seq (seq ids unique) emitted at time ``t``; ``pos`` is
        :meth:`positions` of ``seq_ids`` when the caller has it already."""
        if pos is None:
            pos = self.offset[seq_ids] + self.count[seq_ids]
        self.tokens[pos] = sampled
        self.times[pos] = t
        self.count[seq_ids] += 1

    def mark_scheduled(self, seq_ids: np.ndarray, t: float) -> None:
        """Remember ``t`` as the first time each seq ran (keeps earlier times)."""
        self.start[seq_ids] = np.minimum(self.start[seq_ids], t)


@dataclass
class RunResult:
    """Raw measurements of one trace replay (see the module docstring for definitions).

    Per call (index = position in ``call_ids``): ``release``, ``start``, ``first_token``,
    ``finish`` times, ``output_tokens``, ``program`` (index into ``program_ids``) and ``offset``
    into ``token_times``. Per program: ``arrival``, ``finish``, ``output_tokens``.
    """

    program_ids: list[str]
    call_ids: list[str]
    program: np.ndarray
    release: np.ndarray
    start: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    output_tokens: np.ndarray
    offset: np.ndarray
    token_times: np.ndarray
    arrival: np.ndarray
    program_finish: np.ndarray
    program_output_tokens: np.ndarray
    stats: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    num_steps: int = 0

    @property
    def latency(self) -> np.ndarray:
        """Program latency (s): finish of the last call minus arrival."""
        return self.program_finish - self.arrival

    @property
    def latency_per_token(self) -> np.ndarray:
        """Program latency divided by its output tokens (s/token)."""
        return self.latency / self.program_output_tokens

    @property
    def ttft(self) -> np.ndarray:
        """Per call: first token time minus release (s)."""
        return self.first_token - self.release

    @property
    def queueing_delay(self) -> np.ndarray:
        """Per call: start of its first step minus release (s)."""
        return self.start - self.release

    def inter_token_times(self) -> np.ndarray:
        """Gaps between consecutive tokens of the same call, all calls concatenated."""
        t = self.token_times
        if t.shape[0] < 2:
            return np.zeros(0)
        gaps = np.diff(t)
        first = np.zeros(t.shape[0], dtype=bool)
        first[self.offset] = True  # NOTE: the gap *into* each call's first token is not a gap
        return gaps[~first[1:]]


class _Calls:
    """Static per-call arrays of a trace, indexed by a global call index (gid)."""

    def __init__(self, programs: Sequence[Program]) -> None:
        self.programs = list(programs)
        self.first: list[int] = []  # gid of each program's first call
        self.ids: list[str] = []
        self.prog: list[int] = []
        self.calls = []
        self.children: list[list[int]] = []
        self.parents: list[list[int]] = []
        for pi, p in enumerate(self.programs):
            base = len(self.ids)
            self.first.append(base)
            local = {c.call_id: base + k for k, c in enumerate(p.calls)}
            for c in p.calls:
                self.ids.append(f"{p.program_id}/{c.call_id}")
                self.prog.append(pi)
                self.calls.append(c)
                self.parents.append([local[q] for q in c.parents])
                self.children.append([])
            for c in p.calls:
                for q in c.parents:
                    self.children[local[q]].append(local[c.call_id])
        self.n = len(self.ids)
        self.out = np.array([c.output_tokens for c in self.calls], dtype=np.int64)
        self.tool = np.array([c.tool_s for c in self.calls])
        # a call's context is kept after it finishes while children that reuse it are unreleased
        self.reusers = np.zeros(self.n, dtype=np.int64)
        for g, c in enumerate(self.calls):
            if c.reuse_parent_context:
                self.reusers[self.parents[g][0]] += 1


class Driver:
    """Replays ``programs`` on ``executor``; :meth:`run` returns a :class:`RunResult`.

    Every call is added with ``max_tokens = output_tokens`` and ``ignore_eos=True`` so it ends at
    exactly its trace length. Policy hints travel with every call (policies ignore what they do
    not use): ``remaining_hint`` = the call's output tokens and ``program_remaining_hint`` = the
    program's unfinished output tokens (the sjf/srpt oracles), and ``ltr_score`` = output tokens
    times ``exp(ltr_sigma * z)``, z ~ N(0, 1) seeded per call — a stand-in for a learned ranker
    (``ltr_sigma = 0`` ranks perfectly). An executor with an ``end_program(program_id)`` method
    is told when a program's last call finished, as a client ends a program (``gittins`` learns
    program sizes from these ends).
    """

    def __init__(
        self,
        programs: Sequence[Program],
        executor: Executor,
        book: TokenBook,
        *,
        vocab_size: int = 32000,
        ltr_sigma: float = 0.5,
        emit_trace_tokens: bool = True,
    ) -> None:
        if not programs:
            raise ValueError("the trace has no programs")
        if not (ltr_sigma >= 0 and math.isfinite(ltr_sigma)):
            raise ValueError(f"ltr_sigma must be finite and >= 0, got {ltr_sigma}")
        self.ex, self.book = executor, book
        self._end_program = getattr(executor, "end_program", None)
        self._mark_coming_back = getattr(executor, "mark_coming_back", None)
        self.c = _Calls(programs)
        self.vocab_size, self.ltr_sigma = vocab_size, ltr_sigma
        self.emit_trace_tokens = emit_trace_tokens
        n = self.c.n
        self.release = np.full(n, np.nan)
        self.start = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.offset = np.full(n, -1, dtype=np.int64)
        self.pending = np.array([len(p) for p in self.c.parents], dtype=np.int64)
        self.prog_left = np.array([len(p.calls) for p in self.c.programs], dtype=np.int64)
        self.prog_out_left = np.array([p.num_output_tokens for p in self.c.programs], np.int64)
        self.seq_gid = np.full(64, -1, dtype=np.int64)
        self.full: dict[int, np.ndarray] = {}  # gid -> prompt + output, while reusers remain
        self.prompts: dict[int, np.ndarray] = {}  # gid -> prompt, while the call runs
        self.tokens: dict[int, ProgramTokens] = {}  # program index -> its token ids, while live
        self.heap: list[tuple[float, int]] = []
        for pi, p in enumerate(self.c.programs):
            for g in range(self.c.first[pi], self.c.first[pi] + len(p.calls)):
                if not self.c.parents[g]:
                    heapq.heappush(self.heap, (p.arrival_s + self.c.tool[g], g))
        self.done = 0
        self.num_steps = 0

    def run(self, progress: bool = False, desc: str = "calls") -> RunResult:
        """Replay the whole trace. ``progress`` shows a tqdm bar over finished calls."""
        from tqdm import tqdm

        bar = tqdm(total=self.c.n, unit="call", desc=desc, disable=not progress, leave=False)
        ex, book = self.ex, self.book
        idle_steps = 0
        try:
            while self.done < self.c.n:
                self._release_due(ex.now)
                if not ex.has_unfinished():
                    if not self.heap:
                        raise RuntimeError("calls remain but none is pending: the DAG is stuck")
                    ex.idle_until(self.heap[0][0])
                    continue
                r = ex.step()
                self.num_steps += 1
                idle_steps = idle_steps + 1 if r.num_seqs == 0 else 0
                if idle_steps > 1000:
                    raise RuntimeError("the scheduler ran 1000 empty steps with work pending")
                if r.sample_seqs.shape[0]:
                    book.record(r.sample_seqs, r.sampled, ex.now, r.positions)
                if r.first_scheduled.shape[0]:
                    book.mark_scheduled(r.first_scheduled, ex.now - r.seconds)
                if r.finished:
                    for seq, reason in r.finished:
                        self._finish(seq, reason, ex.now)
                    bar.update(len(r.finished))
        finally:
            bar.close()
        return self._result()

    def _release_due(self, now: float) -> None:
        while self.heap and self.heap[0][0] <= now:
            t, g = heapq.heappop(self.heap)
            self._issue(g, t)

    def _issue(self, g: int, t: float) -> None:
        c, pi = self.c.calls[g], self.c.prog[g]
        toks = self.tokens.get(pi)
        if toks is None:
            toks = self.tokens[pi] = ProgramTokens(self.c.programs[pi], self.vocab_size)
        prompt = toks.new_prompt_ids(c.call_id)
        if c.reuse_parent_context:
            parent = self.c.parents[g][0]
            prompt = np.concatenate([self.full[parent], prompt])
            self.c.reusers[parent] -= 1
            if self.c.reusers[parent] == 0:
                del self.full[parent]
        out = int(self.c.out[g])
        seq = self.ex.add_request(
            self.c.ids[g],
            prompt,
            max_tokens=out,
            ignore_eos=True,
            arrival_time=t,
            program_id=self.c.programs[pi].program_id,
            ltr_score=out * self._ltr_noise(g),
            remaining_hint=float(out),
            program_remaining_hint=float(self.prog_out_left[pi]),
        )
        if self.c.children[g] and self._mark_coming_back is not None:
            # NOTE: the program continues after this call (the trace's tool call): retention
            # policies may keep its KV for the next call.
            self._mark_coming_back(self.c.programs[pi].program_id)
        ids = toks.output_ids(c.call_id) if self.emit_trace_tokens else None
        self.offset[g] = self.book.open(seq, out, ids)
        if seq >= self.seq_gid.shape[0]:
            grow = max(2 * self.seq_gid.shape[0], seq + 1) - self.seq_gid.shape[0]
            self.seq_gid = np.concatenate([self.seq_gid, np.full(grow, -1, dtype=np.int64)])
        self.seq_gid[seq] = g
        self.release[g] = t
        if self.c.reusers[g]:
            self.prompts[g] = prompt

    def _ltr_noise(self, g: int) -> float:
        if self.ltr_sigma == 0:
            return 1.0
        # NOTE: z ~ N(0, 1) by Box-Muller from the call's stable 64-bit seed (cheap, per call)
        bits = stable_seed("ltr", self.c.ids[g])
        u1 = ((bits >> 32) + 0.5) / 2.0**32
        u2 = ((bits & 0xFFFFFFFF) + 0.5) / 2.0**32
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        return math.exp(self.ltr_sigma * z)

    def _finish(self, seq: int, reason: str, now: float) -> None:
        g = int(self.seq_gid[seq])
        out, off = int(self.c.out[g]), int(self.offset[g])
        made = int(self.book.count[seq])
        if made != out or reason != "length":
            raise RuntimeError(
                f"call {self.c.ids[g]} finished ({reason}) after {made} tokens; the trace "
                f"says {out}"
            )
        self.finish[g] = now
        self.start[g] = self.book.start[seq]
        self.done += 1
        pi = self.c.prog[g]
        self.prog_out_left[pi] -= out
        self.prog_left[pi] -= 1
        if self.c.reusers[g]:
            self.full[g] = np.concatenate([self.prompts.pop(g), self.book.tokens[off : off + out]])
        if self.prog_left[pi] == 0:
            self.tokens.pop(pi, None)
            if self._end_program is not None:
                self._end_program(self.c.programs[pi].program_id)
        for child in self.c.children[g]:
            self.pending[child] -= 1
            if self.pending[child] == 0:
                parents_done = max(self.finish[q] for q in self.c.parents[child])
                heapq.heappush(self.heap, (parents_done + self.c.tool[child], child))

    def _result(self) -> RunResult:
        c = self.c
        prog = np.array(c.prog, dtype=np.int64)
        prog_finish = np.full(len(c.programs), -np.inf)
        np.maximum.at(prog_finish, prog, self.finish)
        first_token = self.book.times[self.offset]
        # NOTE: repack each call's token times contiguously in call order
        packed = np.concatenate([[0], np.cumsum(c.out)[:-1]]).astype(np.int64)
        idx = np.repeat(self.offset - packed, c.out) + np.arange(int(c.out.sum()))
        token_times = self.book.times[idx]
        return RunResult(
            program_ids=[p.program_id for p in c.programs],
            call_ids=list(c.ids),
            program=prog,
            release=self.release.copy(),
            start=self.start.copy(),
            first_token=first_token,
            finish=self.finish.copy(),
            output_tokens=c.out.copy(),
            offset=packed,
            token_times=token_times,
            arrival=np.array([p.arrival_s for p in c.programs]),
            program_finish=prog_finish,
            program_output_tokens=np.array([p.num_output_tokens for p in c.programs], np.int64),
            stats=dict(self.ex.stats()),
            num_steps=self.num_steps,
        )
