"""pyserve: an LLM serving engine for agentic programs.

The C++ core (`pyserve._core`) makes every per-step decision; this package is the thin Python
layer around it: models, attention backends, the engine loop, the server and the simulator.
"""

__version__ = "0.1.0"
