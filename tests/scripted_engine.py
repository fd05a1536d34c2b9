"""An EngineClient whose answers are scripted: it replays given texts through the real tiny
tokenizer, a few tokens per output, so the server's tool-call parsing and streaming can be
driven with the official clients without a model that knows how to call tools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pyserve.engine.outputs import CompletionOutput, RequestOutput
from pyserve.model.tokenizer import load_tokenizer


class ScriptedClient:
    """``answers`` are popped in order (the last one repeats); ``tokens_per_step`` tokens per
    output. Records prompts, program ids and ``mark_coming_back`` calls."""

    model_name = "builtin:tiny"
    max_model_len = 4096

    def __init__(self, answers: list[str], tokens_per_step: int = 3) -> None:
        self.tokenizer = load_tokenizer("builtin:tiny")
        self.answers = list(answers)
        self.tokens_per_step = tokens_per_step
        self.prompts: list[list[int]] = []
        self.program_ids: list[str | None] = []
        self.coming_back: list[str] = []
        self.programs: set[str] = set()

    async def generate(self, request_id, prompt, params, *, priority=0.0, program_id=None,
                       ltr_score=None) -> AsyncIterator[RequestOutput]:  # fmt: skip
        self.prompts.append(list(prompt))
        self.program_ids.append(program_id)
        text = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        ids = self.tokenizer.encode(text, add_special_tokens=False)[: params.max_tokens]
        step, shown = self.tokens_per_step, ""
        for end in range(step, len(ids) + step, step):
            await asyncio.sleep(0)
            full = self.tokenizer.decode(ids[:end])
            done = end >= len(ids)
            # NOTE: like the engine, unfinished outputs carry token deltas, the finished one all
            delta, delta_ids = full[len(shown) :], ids[end - step : end]
            reason = ("length" if len(ids) == params.max_tokens else "stop") if done else None
            comp = CompletionOutput(0, full, ids[:end] if done else delta_ids, None, reason, delta,
                                    delta_ids)  # fmt: skip
            yield RequestOutput(request_id, None, list(prompt), [comp], done)
            shown = full

    async def abort(self, request_id: str) -> None:
        return None

    async def start_program(self, program_id: str | None = None) -> str:
        if program_id in self.programs:
            raise ValueError(f"program {program_id!r} is already started")
        self.programs.add(program_id)
        return program_id

    async def end_program(self, program_id: str) -> None:
        self.programs.remove(program_id)

    def has_program(self, program_id: str) -> bool:
        return program_id in self.programs

    async def mark_coming_back(self, program_id: str) -> bool:
        self.coming_back.append(program_id)
        return program_id in self.programs

    async def stats(self) -> dict:
        return {"engine_alive": True}

    async def shutdown(self, drain: bool = True) -> None:
        return None
