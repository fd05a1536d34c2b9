"""Integrations of pyserve's program-aware scheduling into other serving stacks.

Nothing here is imported by ``import pyserve``: each integration loads only when named (for vLLM,
``--scheduler-cls pyserve.integrations.vllm.ProgramScheduler``).
"""
