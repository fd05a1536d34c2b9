"""Offline API (vLLM-compatible): `LLM(model, **engine_options).generate(prompts, params)`."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from pyserve.config import EngineConfig
from pyserve.engine.components import usable_cores
from pyserve.engine.engine import Engine, expand_n
from pyserve.engine.messages import Abort, AddCall, CallSpec, ProgramOp
from pyserve.engine.output_processor import OutputProcessor
from pyserve.engine.outputs import RequestOutput
from pyserve.engine.programs import Program
from pyserve.sampling_params import SamplingParams

PROMPT_FORMS = ('a str, {"prompt": str}, {"prompt_token_ids": list[int]}, or a list of '
                "these")  # fmt: skip


class LLM:
    """Runs a model offline over a batch of prompts with continuous batching.

    `engine_options` are the flat fields of the config tree (see pyserve.config), e.g.
    `LLM("builtin:tiny", block_size=16, max_num_batched_tokens=512, policy="plas")`.
    On CPU, ``cpu_threads`` defaults to every usable core (nothing else runs beside the step
    loop offline; the engine's own default keeps one core for a server's frontend).
    """

    def __init__(self, model: str = "builtin:tiny", **engine_options: Any) -> None:
        # NOTE: offline, no frontend runs beside the step loop, so a CPU engine takes every
        # usable core unless told otherwise (a server keeps one for its event loop).
        if engine_options.get("cpu_threads") is None:
            engine_options["cpu_threads"] = usable_cores()
        self.engine = Engine(EngineConfig.from_kwargs(model, **engine_options))
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        *,
        priority: float | Sequence[float] = 0.0,
        program_id: str | None = None,
        ltr_score: float | Sequence[float] | None = None,
    ) -> list[RequestOutput]:
        """Generates for every prompt; returns one RequestOutput per prompt, in prompt order,
        with ``n`` CompletionOutputs each. Prompts: a str, ``{"prompt": str}``,
        ``{"prompt_token_ids": [...]}`` or a list of these (TypeError otherwise). Raises
        ValueError for bad input before anything is scheduled."""
        plist = parse_prompts(prompts)
        params = _broadcast(sampling_params or SamplingParams(), len(plist), "sampling_params")
        prios = _broadcast(priority, len(plist), "priority")
        scores = _broadcast(ltr_score, len(plist), "ltr_score")
        proc = OutputProcessor(self.engine.tokenizer, stream=False)
        added: list[list[str]] = []
        try:
            for prompt, p, prio, score in zip(plist, params, prios, scores):
                ids = []
                for rid, sub, idx in expand_n(f"gen-{next(self._ids)}", p):
                    spec = CallSpec(rid, prompt, sub, prio, program_id, score, idx)
                    proc.add(self.engine.handle(AddCall(spec)))
                    ids.append(rid)
                added.append(ids)
        except ValueError:
            for rid in itertools.chain.from_iterable(added):
                self.engine.handle(Abort(rid))
            raise
        return self._run(proc, added, use_tqdm)

    def _run(self, proc: OutputProcessor, added: list[list[str]], use_tqdm: bool):
        want = sum(len(ids) for ids in added)
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=want, desc="generate", disable=not use_tqdm, unit="req")
        while len(done) < want:
            if not self.engine.has_unfinished():
                raise RuntimeError("engine idle with requests outstanding")
            outputs, stopped = proc.process(self.engine.step())
            for rid in stopped:  # the core finishes them with reason `stop`
                f = self.engine.handle(Abort(rid, reason="stop"))
                if f is not None and (out := proc.finish(f, self.engine.now())) is not None:
                    outputs.append(out)
            for out in outputs:
                done[out.request_id] = out
            bar.update(len(outputs))
        bar.close()
        return [_group(base, [done[r] for r in ids]) for base, ids in zip(_bases(added), added)]

    def program(self, program_id: str | None = None) -> Program:
        """A program (session) context: `with llm.program() as p: p.generate(...)`."""
        return Program(self, program_id)

    def start_program(self, program_id: str | None = None) -> str:
        """Starts a program (session); returns its id. ValueError if it is already started."""
        return self.engine.handle(ProgramOp("start", program_id))

    def end_program(self, program_id: str) -> None:
        """Ends a program; ValueError if it is unknown."""
        self.engine.handle(ProgramOp("end", program_id))


def parse_prompts(prompts: Any) -> list[str | list[int]]:
    """Normalises the accepted prompt forms to a list of text or token-id lists.
    TypeError naming the accepted forms for anything else; ValueError for an empty list."""
    if isinstance(prompts, (str, Mapping)):
        return [_one_prompt(prompts)]
    if not isinstance(prompts, Sequence) or isinstance(prompts, (bytes, bytearray)):
        raise TypeError(f"prompts must be {PROMPT_FORMS}; got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("no prompts given")
    return [_one_prompt(p) for p in prompts]


def _one_prompt(p: Any) -> str | list[int]:
    if isinstance(p, str):
        return p
    if isinstance(p, Mapping):
        keys = set(p)
        if keys == {"prompt"} and isinstance(p["prompt"], str):
            return p["prompt"]
        ids = p.get("prompt_token_ids")
        if keys == {"prompt_token_ids"} and isinstance(ids, Sequence) and not isinstance(
                ids, (str, bytes)) and all(isinstance(t, int) and not isinstance(t, bool)
                                           for t in ids):  # fmt: skip
            return list(ids)
    raise TypeError(f"each prompt must be {PROMPT_FORMS}; got {p!r:.80}")


def _bases(added: list[list[str]]) -> list[str]:
    return [ids[0] if len(ids) == 1 else ids[0].rsplit("-", 1)[0] for ids in added]


def _group(request_id: str, outs: list[RequestOutput]) -> RequestOutput:
    first = outs[0]
    return RequestOutput(request_id, first.prompt, first.prompt_token_ids,
                         [c for o in outs for c in o.outputs], True, first.num_cached_tokens,
                         first.metrics, first.prompt_logprobs)  # fmt: skip


def _broadcast(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} prompts")
        return list(value)
    return [value] * n
