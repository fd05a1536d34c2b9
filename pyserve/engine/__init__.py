"""Engine: the step loop over the C++ core, the offline LLM API and program sessions."""

from pyserve.engine.engine import Engine, expand_n
from pyserve.engine.llm import LLM
from pyserve.engine.messages import Abort, AddCall, CallSpec, ProgramOp
from pyserve.engine.output_processor import OutputProcessor
from pyserve.engine.outputs import (
    CompletionOutput,
    Logprob,
    RequestMetrics,
    RequestOutput,
    TokenLogprob,
)
from pyserve.engine.programs import Program
from pyserve.engine.report import StepReport

__all__ = ["LLM", "Abort", "AddCall", "CallSpec", "CompletionOutput", "Engine",
           "OutputProcessor", "Program", "ProgramOp", "RequestMetrics", "RequestOutput",
           "StepReport", "TokenLogprob", "Logprob", "expand_n"]  # fmt: skip
