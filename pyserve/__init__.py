"""pyserve: an LLM serving engine for agentic programs.

The C++ core (`pyserve._core`) makes every per-step decision; this package is the thin Python
layer around it: models, attention backends, the engine loop, the server and the simulator.
"""


def _require_core() -> None:
    """Fails early, and says why, when the compiled core cannot be imported.

    NOTE: the usual cause is a source checkout on ``sys.path`` (Python started in the repository
    root) ahead of the installed package: the source folder has no ``_core`` extension.
    """
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec("pyserve._core") is not None:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    installed = [
        d
        for d in (os.path.join(os.path.abspath(e or os.curdir), "pyserve") for e in sys.path)
        if os.path.realpath(d) != os.path.realpath(here)
        and os.path.isdir(d)
        and any(f.startswith("_core") for f in os.listdir(d))
    ]
    if installed:
        what = (f"the source folder {here} shadows the installed pyserve at {installed[0]} "
                "(Python was probably started in the repository root)")  # fmt: skip
        todo = "run from another directory, or install the checkout in place: pip install -e ."
    else:
        what = f"the C++ extension pyserve._core is not built for the source folder {here}"
        todo = "build and install it: pip install -e .  (or pip install . and run elsewhere)"
    raise ImportError(f"pyserve cannot load its compiled core: {what}. To fix: {todo}")


_require_core()

from pyserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig  # noqa: E402
from pyserve.sampling_params import SamplingParams  # noqa: E402
from pyserve.structured.params import StructuredOutputsParams  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LLM", "CacheConfig", "EngineConfig", "ModelConfig", "Program", "SamplingParams",
           "SchedulerConfig", "StructuredOutputsParams"]  # fmt: skip


def __getattr__(name: str):
    # NOTE: lazy so that `import pyserve` (e.g. for the simulator) does not load torch models.
    if name in ("LLM", "Program", "Engine"):
        from pyserve import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'pyserve' has no attribute {name!r}")
