"""Program (session) handle: the calls made through it share a program id."""

from __future__ import annotations

from typing import Any


class Program:
    """Context manager that starts a program on entry and ends it on exit.

    Every `generate` call through it carries the program id, so program-aware policies (plas,
    atlas) see the calls as one program.
    """

    def __init__(self, llm: Any, program_id: str | None = None) -> None:
        self.llm = llm
        self._requested = program_id
        self.id: str | None = None

    def __enter__(self) -> Program:
        self.id = self.llm.start_program(self._requested)
        return self

    def __exit__(self, *exc) -> None:
        if self.id is not None:
            self.llm.end_program(self.id)
            self.id = None

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = False, **kwargs):
        """`LLM.generate` tagged with this program's id."""
        if self.id is None:
            raise ValueError("program is not started: use it as `with llm.program() as p:`")
        return self.llm.generate(prompts, sampling_params, use_tqdm, program_id=self.id, **kwargs)
