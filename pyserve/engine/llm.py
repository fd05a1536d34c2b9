"""Offline API: `LLM(model, **engine_options).generate(prompts, params)`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from pyserve.config import EngineConfig
from pyserve.engine.engine import Engine, expand_n
from pyserve.engine.outputs import RequestOutput
from pyserve.engine.programs import Program
from pyserve.sampling_params import SamplingParams

Prompt = str | Sequence[int]


class LLM:
    """Runs a model offline over a batch of prompts with continuous batching.

    `engine_options` are the flat fields of the config tree (see pyserve.config), e.g.
    `LLM("builtin:tiny", block_size=16, max_num_batched_tokens=512, policy="plas")`.
    """

    def __init__(self, model: str = "builtin:tiny", **engine_options: Any) -> None:
        self.engine = Engine(EngineConfig.from_kwargs(model, **engine_options))
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        *,
        priority: float | Sequence[float] = 0.0,
        program_id: str | None = None,
        thread_id: str | None = None,
        parent_ids: Sequence[str] = (),
        ltr_score: float | Sequence[float] | None = None,
    ) -> list[RequestOutput] | list[list[RequestOutput]]:
        """Generates for every prompt; returns outputs in prompt order (a list of n choices per
        prompt when n > 1). Raises ValueError for bad input before anything is scheduled."""
        plist = _as_prompt_list(prompts)
        params = _broadcast(sampling_params or SamplingParams(), len(plist), "sampling_params")
        prios = _broadcast(priority, len(plist), "priority")
        scores = _broadcast(ltr_score, len(plist), "ltr_score")
        added: list[list[str]] = []
        try:
            for prompt, p, prio, score in zip(plist, params, prios, scores):
                ids = []
                for rid, sub, idx in expand_n(f"gen-{next(self._ids)}", p):
                    self.engine.add_request(rid, prompt, sub, priority=prio, ltr_score=score,
                                            program_id=program_id, thread_id=thread_id,
                                            parent_ids=parent_ids, index=idx)  # fmt: skip
                    ids.append(rid)
                added.append(ids)
        except ValueError:
            for rid in itertools.chain.from_iterable(added):
                self.engine.abort(rid)
            raise
        return self._run(added, use_tqdm, any(p.n > 1 for p in params))

    def _run(self, added: list[list[str]], use_tqdm: bool, grouped: bool):
        want = {rid for ids in added for rid in ids}
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(want), desc="generate", disable=not use_tqdm, unit="req")
        while len(done) < len(want):
            if not self.engine.has_unfinished():
                raise RuntimeError("engine idle with requests outstanding")
            for out in self.engine.step():
                if out.finished and out.request_id in want:
                    done[out.request_id] = out
                    bar.update(1)
        bar.close()
        if grouped:
            return [[done[r] for r in ids] for ids in added]
        return [done[ids[0]] for ids in added]

    def program(self, program_id: str | None = None) -> Program:
        """A program (session) context: `with llm.program() as p: p.generate(...)`."""
        return Program(self, program_id)


def _as_prompt_list(prompts) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]
    plist = list(prompts)
    if not plist:
        raise ValueError("no prompts given")
    return plist


def _broadcast(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} prompts")
        return list(value)
    return [value] * n
