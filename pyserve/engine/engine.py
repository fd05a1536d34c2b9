"""The engine step loop: schedule() in C++ → execute the StepPlan → update() in C++."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import numpy as np
import torch

from pyserve import _core
from pyserve.config import EngineConfig, core_config
from pyserve.engine.components import (
    make_attention,
    make_kv_cache,
    resolve_device,
    resolve_max_model_len,
)
from pyserve.engine.model_runner import ModelRunner
from pyserve.engine.outputs import RequestOutput, TokenLogprob
from pyserve.engine.request_state import RequestState
from pyserve.model.loader import load_model, parse_dtype
from pyserve.model.sampler import SamplingBatch
from pyserve.model.tokenizer import load_tokenizer
from pyserve.sampling_params import SamplingParams


class Engine:
    """One model replica: the C++ scheduler plus a torch executor.

    Not thread-safe: one thread drives `step()` (the async engine wraps it for servers).
    """

    def __init__(self, config: EngineConfig, programs: _core.ProgramTable | None = None) -> None:
        self.config = config
        mc = config.model
        self.device = resolve_device(mc.device)
        torch.manual_seed(mc.seed)
        self.model = load_model(mc.model, mc.dtype, self.device)
        self.dtype = parse_dtype(mc.dtype, self.model.config)
        self.tokenizer = load_tokenizer(mc.model)
        cfg = self.model.config
        self.max_model_len = resolve_max_model_len(mc.max_model_len, cfg.max_model_len)
        self.eos_token_ids = list(cfg.eos_token_ids)
        kv = make_kv_cache(cfg, config.cache, self.dtype, self.device, self.max_model_len)
        self.runner = ModelRunner(self.model, kv, make_attention(cfg, kv, self.dtype, self.device,
                                                                 mc.attention_backend),
                                  self.device)  # fmt: skip
        core_cfg = core_config(config.scheduler, config.cache, num_gpu_blocks=kv.num_blocks,
                               num_cpu_blocks=kv.num_cpu_blocks,
                               max_model_len=self.max_model_len)  # fmt: skip
        self.core = _core.Scheduler(core_cfg, self.eos_token_ids, programs)
        self.states: dict[int, RequestState] = {}  # by core seq id
        self.ranker = None
        if config.scheduler.ltr_model:
            from pyserve.ltr import Ranker

            self.ranker = Ranker.load(config.scheduler.ltr_model)
        self._t0 = time.monotonic()
        self.last_step: dict[str, float] = {}

    # -- requests ------------------------------------------------------------------------------
    def now(self) -> float:
        """Seconds since the engine started (the clock of arrival times and metrics)."""
        return time.monotonic() - self._t0

    def encode(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        ids = [int(t) for t in prompt]
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        return None, ids

    def add_request(
        self,
        request_id: str,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        priority: float = 0.0,
        program_id: str | None = None,
        thread_id: str | None = None,
        parent_ids: Sequence[str] = (),
        ltr_score: float | None = None,
        index: int = 0,
    ) -> None:
        """Queues one sequence (n == 1; see `expand_n`). Raises ValueError on bad input, before
        anything is scheduled."""
        params = params or SamplingParams()
        if params.n != 1:
            raise ValueError("Engine.add_request takes n == 1; use expand_n() for n > 1")
        text, ids = self.encode(prompt)
        if not ids:
            raise ValueError("prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens leaves no room to generate within "
                             f"max_model_len={self.max_model_len}")  # fmt: skip
        if ltr_score is None:
            ltr_score = self.score_prompt(text, ids)
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = self.max_model_len - len(ids)
        now = self.now()
        self.core.advance_clock(now)
        sid = self.core.add_request(
            request_id,
            np.asarray(ids, dtype=np.int32),
            max_tokens=max_tokens,
            min_tokens=params.min_tokens,
            ignore_eos=params.ignore_eos,
            stop_token_ids=list(params.stop_token_ids or ()),
            priority=float(priority),
            arrival_time=now,
            program_id=program_id or "",
            thread_id=thread_id or "",
            parent_ids=list(parent_ids),
            ltr_score=float(ltr_score),
        )
        self.states[sid] = RequestState(request_id, text, ids, params, self.tokenizer, now, index)

    def score_prompt(self, text: str | None, ids: list[int]) -> float:
        """The ranker's score (lower = predicted shorter), scored once on arrival; 0 without one."""
        if self.ranker is None:
            return 0.0
        return float(
            self.ranker.score([text if text is not None else self.tokenizer.decode(ids)])[0]
        )

    def abort(self, request_id: str) -> None:
        """Aborts a request in any state; its KV blocks are freed. ValueError if unknown."""
        sid = self.core.find(request_id)
        if sid < 0:
            raise ValueError(f"unknown request id {request_id!r}")
        self.core.abort(request_id)
        self.states.pop(sid, None)

    def has_unfinished(self) -> bool:
        return self.core.has_unfinished()

    def start_program(self, program_id: str | None = None) -> str:
        """Registers a program (session) and returns its id."""
        pid = program_id or f"prog-{uuid.uuid4().hex[:16]}"
        self.core.start_program(pid)
        return pid

    def end_program(self, program_id: str) -> None:
        """Ends a program; ValueError if it is unknown."""
        self.core.end_program(program_id)

    def mark_coming_back(self, program_id: str) -> bool:
        """Marks a program whose last call ended with a tool call (its next call clears it);
        False when the program is unknown (never started, ended or expired)."""
        return self.core.programs.mark_coming_back(program_id)

    def stats(self) -> dict:
        return self.core.stats()

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Runs one scheduler step; returns outputs of the requests that progressed or ended."""
        t0 = time.perf_counter()
        self.core.advance_clock(self.now())
        plan = self.core.schedule()
        t1 = time.perf_counter()
        rows = np.asarray(plan.seq_ids)[np.asarray(plan.sample_seq_idx)]
        states = [self.states[int(s)] for s in rows]
        out = self.runner.execute(plan, self._sampling_batch(states) if states else None)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        tokens = (out.token_ids.to(torch.int32).cpu().numpy() if out is not None
                  else np.zeros(0, dtype=np.int32))  # fmt: skip
        finished = self.core.update(tokens, t2 - t1)
        t3 = time.perf_counter()
        outputs = self._postprocess(plan, rows, states, tokens, out, finished)
        t4 = time.perf_counter()
        self.last_step = {"schedule_s": t1 - t0, "execute_s": t2 - t1, "update_s": t3 - t2,
                          "postprocess_s": t4 - t3, "num_tokens": plan.num_tokens}  # fmt: skip
        return outputs

    def _sampling_batch(self, states: list[RequestState]) -> SamplingBatch:
        params = [s.params for s in states]
        need_prompt = any(p.repetition_penalty != 1.0 for p in params)
        return SamplingBatch.from_params(
            params,
            [s.output_ids for s in states],
            [s.prompt_ids for s in states] if need_prompt else None,
            self.eos_token_ids,
            self.device,
        )

    def _postprocess(self, plan, rows, states, tokens, out, finished) -> list[RequestOutput]:
        now = self.now()
        touched: dict[int, RequestState] = {}
        # NOTE: a request is first scheduled as a prefill, so decodes (the bulk) are skipped.
        for sid in np.asarray(plan.seq_ids)[plan.num_decodes :]:
            st = self.states.get(int(sid))
            if st is not None and st.metrics.first_scheduled_time is None:
                st.metrics.first_scheduled_time = now
                st.num_cached_tokens = self.core.request_info(int(sid))["num_cached_tokens"]
        lp = _logprobs(out, states)
        for i, (sid, st) in enumerate(zip(rows.tolist(), states)):
            if self.states.get(sid) is not st:
                continue  # aborted while the step ran
            touched[sid] = st
            if st.append(int(tokens[i]), now, lp[i] if lp else None) and self.core.find(
                st.request_id) >= 0:  # fmt: skip
                self.core.abort(st.request_id)  # a stop string ended it
                finished.append((sid, "stop"))
        for sid, reason in finished:
            st = self.states.pop(sid, None)
            if st is not None:
                st.finish(reason, now)
                touched[sid] = st
        return [st.snapshot() for st in touched.values()]


def _logprobs(out, states: list[RequestState]) -> list[TokenLogprob] | None:
    if out is None or out.logprobs is None or not any(s.logprobs is not None for s in states):
        return None
    lps = out.logprobs.tolist()
    ids = out.token_ids.tolist()
    top_ids = out.topn_ids.tolist() if out.topn_ids is not None else [[] for _ in states]
    top_lps = out.topn_logprobs.tolist() if out.topn_logprobs is not None else top_ids
    res = []
    for i, s in enumerate(states):
        n = s.params.logprobs or 0
        top = dict(zip(top_ids[i][:n], top_lps[i][:n]))
        res.append(TokenLogprob(ids[i], lps[i], top))
    return res


def expand_n(request_id: str, params: SamplingParams) -> list[tuple[str, SamplingParams, int]]:
    """Splits an n > 1 request into n sequences (ids `<id>-<i>`); seeded ones get seed + i so the
    choices differ yet stay reproducible."""
    import dataclasses

    if params.n == 1:
        return [(request_id, params, 0)]
    out = []
    for i in range(params.n):
        seed = None if params.seed is None else params.seed + i
        out.append((f"{request_id}-{i}", dataclasses.replace(params, n=1, seed=seed), i))
    return out
