"""The sealed engine: typed messages in, one StepReport per step out.

Each step: ``schedule()`` in C++ → the model runs the StepPlan and samples from the persistent
per-slot settings → ``update()`` in C++ fills the step's report in one call. Detokenizing, stop
strings and output assembly are the consumer's (``OutputProcessor``), off the step.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence

import numpy as np
import torch

from pyserve import _core
from pyserve.config import EngineConfig, core_config
from pyserve.engine.components import build_executor
from pyserve.engine.messages import Abort, AddCall, Admitted, CallSpec, Message, ProgramOp
from pyserve.engine.prompt_logprobs import PromptLogprobTracker
from pyserve.engine.report import StepReport
from pyserve.engine.slot_sampling import SlotSampling
from pyserve.sampling_params import SamplingParams
from pyserve.structured.manager import StructuredOutputManager


def check_prompt_length(num_tokens: int, max_model_len: int) -> None:
    """The one prompt-length check: a prompt must leave room for one generated token.
    ValueError otherwise."""
    if num_tokens == 0:
        raise ValueError("prompt is empty")
    if num_tokens >= max_model_len:
        raise ValueError(f"prompt of {num_tokens} tokens leaves no room to generate within "
                         f"max_model_len={max_model_len}")  # fmt: skip


class Engine:
    """One model replica: the C++ scheduler plus an executor, behind :meth:`handle` (messages)
    and :meth:`step` (reports). The executor (``config.model.executor``) runs the model on torch
    or, under ``sim``, paces each step by a cost-model preset (``pyserve.sim.realtime``).

    Not thread-safe: one thread drives it (``AsyncEngine`` wraps it for servers and replicas).
    Program membership (:meth:`has_program`) may be asked from any thread.
    """

    def __init__(self, config: EngineConfig, programs: _core.ProgramTable | None = None) -> None:
        self.config = config
        parts = build_executor(config)
        self.device = parts.device
        self.model = parts.model  # None under executor sim (no weights)
        self.tokenizer = parts.tokenizer
        self.vocab_size = parts.vocab_size
        self.max_model_len = parts.max_model_len
        self.eos_token_ids = parts.eos_token_ids
        self.runner = parts.runner
        core_cfg = core_config(config.scheduler, config.cache, num_gpu_blocks=parts.num_gpu_blocks,
                               num_cpu_blocks=parts.num_cpu_blocks,
                               max_model_len=self.max_model_len)  # fmt: skip
        for key, value in parts.core_options.items():  # NOTE: a --policy-option wins
            if key not in config.scheduler.policy_options:
                setattr(core_cfg, key, value)
        # NOTE: the core is private to this file (tests/test_sealed_engine.py checks it).
        self._core = _core.Scheduler(core_cfg, self.eos_token_ids, programs)
        self._slots = SlotSampling(self.vocab_size, self.eos_token_ids, self.device)
        self._rid = np.empty(64, dtype=object)  # request id by core seq id
        self.ranker = None
        if config.scheduler.ltr_model:
            from pyserve.ltr import Ranker

            self.ranker = Ranker.load(config.scheduler.ltr_model)
        self.structured: StructuredOutputManager | None = None  # built by the first constraint
        self._prompt_lps = PromptLogprobTracker(self.device)
        self._t0 = time.monotonic()

    # -- messages ------------------------------------------------------------------------------
    def now(self) -> float:
        """Seconds since the engine started (the clock of arrival times and reports)."""
        return time.monotonic() - self._t0

    def handle(self, msg: Message):
        """Applies one message between steps (see ``pyserve.engine.messages`` for results).
        Raises ValueError for bad input, with nothing changed."""
        if isinstance(msg, AddCall):
            return self._add(msg.spec)
        if isinstance(msg, Abort):
            return self._finish(msg.request_id, msg.reason)
        if isinstance(msg, ProgramOp):
            return self._program(msg)
        raise TypeError(f"not an engine message: {type(msg).__name__}")

    def encode(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        """(text or None, token ids) of a prompt; ValueError for ids outside the vocabulary."""
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        ids = [int(t) for t in prompt]
        if any(t < 0 or t >= self.vocab_size for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        return None, ids

    def _add(self, spec: CallSpec) -> Admitted:
        p = spec.params
        if p.n != 1:
            raise ValueError("an engine call takes n == 1; use expand_n() for n > 1")
        text, ids = self.encode(spec.prompt)
        check_prompt_length(len(ids), self.max_model_len)
        grammar = None
        if p.structured_outputs is not None:  # NOTE: compiled (or refused) before queueing
            grammar = self._structured().compile(p.structured_outputs)
        score = spec.ltr_score if spec.ltr_score is not None else self.score_prompt(text, ids)
        max_tokens = p.max_tokens if p.max_tokens is not None else self.max_model_len - len(ids)
        # NOTE: a salt of its own keeps a prompt-logprobs call off the prefix cache (every prompt
        # position must be computed); its blocks are cached under that salt only.
        salt = "" if p.prompt_logprobs is None else f"\x00prompt-logprobs\x00{spec.request_id}"
        now = self.now()
        self._core.advance_clock(now)
        try:
            sid = self._core.add_request(
                spec.request_id, np.asarray(ids, dtype=np.int32), max_tokens=max_tokens,
                min_tokens=p.min_tokens, ignore_eos=p.ignore_eos,
                stop_token_ids=list(p.stop_token_ids or ()), priority=float(spec.priority),
                arrival_time=now, cache_salt=salt, program_id=spec.program_id or "",
                ltr_score=float(score),
                remaining_hint=float(spec.remaining_hint),
                program_remaining_hint=float(spec.program_remaining_hint),
            )  # fmt: skip
        except (TypeError, OverflowError) as exc:  # argument conversion in the bindings
            raise ValueError(f"invalid request {spec.request_id!r}: {exc}") from None
        self._slots.add(sid, p, ids)
        self.runner.admit(sid, spec.request_id, p, len(ids))
        if p.prompt_logprobs is not None:
            self._prompt_lps.add(sid, spec.request_id, ids, p.prompt_logprobs)
        if grammar is not None:
            self.structured.add(sid, grammar)
        if sid >= self._rid.shape[0]:
            grown = np.empty(max(2 * self._rid.shape[0], sid + 1), dtype=object)
            grown[: self._rid.shape[0]] = self._rid
            self._rid = grown
        self._rid[sid] = spec.request_id
        return Admitted(spec, text, ids, now)

    def _structured(self) -> StructuredOutputManager:
        if self.structured is None:
            self.structured = StructuredOutputManager.for_tokenizer(
                self.tokenizer, self.vocab_size, self.eos_token_ids)  # fmt: skip
        return self.structured

    def score_prompt(self, text: str | None, ids: list[int]) -> float:
        """The ranker's score (lower = predicted shorter), scored once on arrival; 0 without one."""
        if self.ranker is None:
            return 0.0
        return float(
            self.ranker.score([text if text is not None else self.tokenizer.decode(ids)])[0]
        )

    def _finish(self, request_id: str, reason: str):
        sid = self._core.find(request_id)
        if sid < 0:
            return None
        done = self._core.finish(request_id, reason)
        self._release(sid)
        return done

    def _release(self, sid: int) -> None:
        """Drops a finished sequence's per-slot state (sampling row, grammar matcher)."""
        self._slots.finish(sid)
        self._prompt_lps.remove(sid)
        if self.structured is not None:
            self.structured.remove(sid)

    def _program(self, op: ProgramOp):
        if op.op == "start":
            pid = op.program_id or f"prog-{uuid.uuid4().hex[:16]}"
            self._core.advance_clock(self.now())  # NOTE: the TTL counts from now, not the last step
            self._core.start_program(pid)
            return pid
        if op.op == "end":
            self._core.end_program(op.program_id or "")
            return None
        if op.op == "sync" and op.program_id and op.values is not None:
            service, critical, wait = op.values
            _core.sync_program(self._core.programs, op.program_id, service, critical, wait,
                               self.now())  # fmt: skip
            return None
        if op.op == "collect":
            return self._core.programs.collect(self.now())
        raise ValueError(f"bad program operation {op!r}")

    def has_program(self, program_id: str) -> bool:
        """Whether the program is started and not yet ended (or expired). Any thread."""
        return program_id in self._core.programs

    def program_info(self, program_id: str) -> dict | None:
        """The program table's entry (service, critical, wait, ...), None if absent."""
        return self._core.program_info(program_id)

    def has_unfinished(self) -> bool:
        return self._core.has_unfinished()

    def mark_coming_back(self, program_id: str) -> bool:
        """Marks a program whose last call ended with a tool call (its next call clears it);
        False when the program is unknown (never started, ended or expired)."""
        return self._core.programs.mark_coming_back(program_id)

    def stats(self) -> dict:
        """The core's counters (see ``_core.Scheduler.stats``), the number of programs and the
        executor's own (``sim_*`` under executor sim: pacing and lag)."""
        return {**self._core.stats(), "num_programs": len(self._core.programs),
                **self.runner.stats()}  # fmt: skip

    def check_invariants(self) -> None:
        """Raises if any allocator or bookkeeping invariant of the core is broken."""
        self._core.check_invariants()

    def live_request_ids(self) -> list[str]:
        """Ids of every request the core holds (waiting, running or swapped)."""
        return [self._rid[s] for s in np.nonzero(self._slots.live)[0]]

    def abort_holding_kv(self) -> list:
        """After a failed step: aborts every request whose KV may be inconsistent (running or
        swapped; waiting ones hold no KV and survive). Returns their ``FinishedCall``s.

        NOTE: schedule() ran but update() did not, so the step's prefills/decodes and any
        swap/copy may not have happened.
        """
        done = []
        for sid in np.nonzero(self._slots.live)[0]:
            rid = self._rid[sid]
            if self._core.find(rid) == sid and self._core.request_info(int(sid))["status"] != (
                "waiting"
            ):
                done.append(self._finish(rid, "abort"))
        return done

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> StepReport:
        """Runs one scheduler step and returns its report."""
        t0 = time.perf_counter()
        self._core.advance_clock(self.now())
        plan = self._core.schedule()
        t1 = time.perf_counter()
        rows = np.asarray(plan.seq_ids)[np.asarray(plan.sample_seq_idx)]
        # NOTE: the one place logits are sampled: ModelRunner.execute with this batch.
        batch = self._slots.batch(rows) if rows.shape[0] else None
        structured = self.structured is not None and batch is not None
        # NOTE: structured rows' masks are filled on a worker thread while the model runs.
        mask = self.structured.fill_async(rows) if structured else None
        prompt_rows = self._prompt_lps.rows(plan) if self._prompt_lps else None
        out = self.runner.execute(plan, batch, mask, prompt_rows)
        # NOTE: recorded before update() can release a request that finished this step.
        prompt_done = self._prompt_lps.record(prompt_rows) if prompt_rows is not None else []
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        tokens = (out.token_ids.to(torch.int32).cpu().numpy() if out is not None
                  else np.zeros(0, dtype=np.int32))  # fmt: skip
        rep = self._core.update(tokens, t2 - t1)
        ended = self.structured.accept(rows, tokens) if structured else []
        t3 = time.perf_counter()
        report = self._report(rep, out)
        report.prompt_logprobs = prompt_done
        for sid in ended:  # their grammar admits nothing more: finished as `stop`
            rid = self._rid[sid]
            done = self._finish(rid, "stop") if self._core.find(rid) == sid else None
            if done is not None:
                report.finished.append(done)
        t4 = time.perf_counter()
        report.timings = {"schedule_s": t1 - t0, "execute_s": t2 - t1, "update_s": t3 - t2,
                          "report_s": t4 - t3, "forward_s": self.runner.last_forward_s}  # fmt: skip
        return report

    def _report(self, rep, out) -> StepReport:
        seqs = np.array(rep.token_seq_ids)
        toks = np.array(rep.tokens)
        self._slots.record(seqs, toks)
        for f in rep.finished:
            self._release(f.seq_id)
        report = StepReport(
            step=rep.step, start_time=rep.start_time, end_time=rep.end_time,
            request_ids=self._rid[seqs], token_ids=toks,
            first_scheduled=self._rid[np.asarray(rep.first_scheduled)],
            first_cached_tokens=np.array(rep.first_cached_tokens), finished=list(rep.finished),
            num_seqs=rep.num_seqs, num_prefills=rep.num_prefills, num_tokens=rep.num_tokens,
            kv_free_blocks=rep.gpu_blocks_free, kv_total_blocks=rep.gpu_blocks_total,
        )  # fmt: skip
        if out is not None and out.logprobs is not None:
            rows = torch.from_numpy(np.asarray(rep.token_rows, dtype=np.int64))
            report.logprobs = out.logprobs.cpu().index_select(0, rows).numpy()
            if out.topn_ids is not None:
                report.topn_ids = out.topn_ids.cpu().index_select(0, rows).numpy()
                report.topn_logprobs = out.topn_logprobs.cpu().index_select(0, rows).numpy()
        return report


def expand_n(request_id: str, params: SamplingParams) -> list[tuple[str, SamplingParams, int]]:
    """Splits an n > 1 request into n sequences (ids `<id>-<i>`); seeded ones get seed + i so the
    choices differ yet stay reproducible."""
    if params.n == 1:
        return [(request_id, params, 0)]
    out = []
    for i in range(params.n):
        seed = None if params.seed is None else params.seed + i
        out.append((f"{request_id}-{i}", dataclasses.replace(params, n=1, seed=seed), i))
    return out
