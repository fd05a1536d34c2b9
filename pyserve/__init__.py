"""pyserve: an LLM serving engine for agentic programs.

The C++ core (`pyserve._core`) makes every per-step decision; this package is the thin Python
layer around it: models, attention backends, the engine loop, the server and the simulator.
"""

from pyserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from pyserve.sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "CacheConfig", "EngineConfig", "ModelConfig", "Program", "SamplingParams",
           "SchedulerConfig"]  # fmt: skip


def __getattr__(name: str):
    # NOTE: lazy so that `import pyserve` (e.g. for the simulator) does not load torch models.
    if name in ("LLM", "Program", "Engine"):
        from pyserve import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'pyserve' has no attribute {name!r}")
