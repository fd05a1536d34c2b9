"""pyserve's program-aware policies (PLAS/ATLAS/MLFQ) inside vLLM as a drop-in scheduler class.

    python -m vllm.entrypoints.openai.api_server --model M \\
        --scheduler-cls pyserve.integrations.vllm.ProgramScheduler \\
        --additional-config '{"pyserve": {"policy": "atlas"}}'

Importing this package checks the vLLM internals it relies on and raises ImportError naming the
installed vLLM version when one is missing (see docs/vllm.md).
"""

from pyserve.integrations.vllm.compat import SUPPORTED, check_vllm

check_vllm()

from pyserve.integrations.vllm.scheduler import ProgramScheduler  # noqa: E402

__all__ = ["SUPPORTED", "ProgramScheduler", "check_vllm"]
