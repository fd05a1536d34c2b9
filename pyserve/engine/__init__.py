"""Engine: the step loop over the C++ core, the offline LLM API and program sessions."""

from pyserve.engine.engine import Engine, expand_n
from pyserve.engine.llm import LLM
from pyserve.engine.outputs import RequestMetrics, RequestOutput, TokenLogprob
from pyserve.engine.programs import Program

__all__ = ["LLM", "Engine", "Program", "RequestMetrics", "RequestOutput", "TokenLogprob",
           "expand_n"]  # fmt: skip
