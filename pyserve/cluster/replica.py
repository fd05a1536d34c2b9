"""One engine replica: an :class:`~pyserve.engine.async_engine.AsyncEngine` (the same step loop
and failure behaviour as the single-process server), run as a Ray actor
(``replica_actor_class()``) or in-process (tests).

Each call streams back ``(RequestOutput, report, kv)`` tuples: the engine's output (deltas
until it finishes), ``report`` (None until the call ends, then ``{"service", "wait",
"critical"}`` from the core's ``FinishedCall``, for the global program table) and
``kv = (free_blocks, total_blocks)`` from the last StepReport, the router's load signal.

Global program priority: before queueing a call the replica raises its local program entry to
the router's global values (``ProgramOp("sync")``: service, critical and wait become
max(local, global)), so its PLAS/ATLAS policy sees service the program got on any replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pyserve.config import EngineConfig
from pyserve.engine.async_engine import AsyncEngine
from pyserve.engine.engine import Engine
from pyserve.engine.messages import CallSpec


class Replica:
    """An engine plus its step loop; the methods are what the router calls on the actor."""

    def __init__(self, config: EngineConfig, replica_id: int = 0) -> None:
        self.replica_id = replica_id
        self.config = config
        self.engine = Engine(config)
        self._async: AsyncEngine | None = None  # started on the actor's event loop

    def _client(self) -> AsyncEngine:
        if self._async is None:
            self._async = AsyncEngine(self.engine)
        return self._async

    def info(self) -> dict:
        """Static facts the router needs: model, limits, KV size, device."""
        st = self.engine.stats()
        return {
            "replica_id": self.replica_id,
            "model": self.config.model.model,
            "max_model_len": self.engine.max_model_len,
            "block_size": self.config.cache.block_size,
            "num_gpu_blocks": st["gpu_blocks_total"],
            "device": str(self.engine.device),
        }

    def health(self) -> bool:
        """True while the step loop is healthy; raises the loop's error otherwise."""
        if self._async is not None and not self._async.is_running:
            raise RuntimeError(f"replica {self.replica_id} step loop failed: {self._async._dead}")
        return True

    async def stats(self) -> dict:
        st = await self._client().stats()
        return {**st, "replica_id": self.replica_id, "live": st["num_live_requests"]}

    async def generate(
        self, spec: CallSpec, program_values: tuple[float, float, float] | None = None
    ) -> AsyncIterator[tuple]:
        """Queues the call and yields ``(output, report, kv)`` until it finishes (see module).
        ValueError for bad input (nothing queued)."""
        self.health()
        client = self._client()
        if spec.program_id and program_values is not None:
            await client.sync_program(spec.program_id, tuple(program_values))
        async for out in client.generate_call(spec):
            report = None
            if out.finished and out.metrics is not None:
                m = out.metrics
                report = {"service": m.service, "wait": m.wait, "critical": m.program_critical}
            yield out, report, client.kv_headroom

    async def abort(self, request_id: str) -> None:
        """Aborts a live request (no error when it already finished)."""
        await self._client().abort(request_id)

    async def end_program(self, program_id: str) -> bool:
        """Ends the program in the local table if it is there; returns whether it was."""
        client = self._client()
        if not client.has_program(program_id):
            return False
        try:
            await client.end_program(program_id)
        except ValueError:  # ended (or expired) in between
            return False
        return True


    async def mark_coming_back(self, program_id: str) -> bool:
        """Marks the program in the local table if it is there; returns whether it was."""
        return await self._client().mark_coming_back(program_id)


def replica_actor_class(num_cpus: float = 1, num_gpus: float = 0):
    """The Ray actor class of :class:`Replica` (an async actor). Needs ``ray``."""
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(Replica)
