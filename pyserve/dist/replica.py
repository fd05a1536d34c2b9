"""One engine replica: an :class:`~pyserve.engine.Engine` with an asyncio step loop, run as a Ray
actor (``replica_actor_class()``) or in-process (tests).

Each call streams back ``(RequestOutput, report, kv)`` tuples: the cumulative output with the
deltas since the previous item (items queued while the router was busy are merged), ``report``
(None until the call ends, then ``{"service", "wait", "critical"}`` for the global program
table) and ``kv = (free_blocks, total_blocks)`` for the router's load signal.

Global program priority: before queueing a call the replica raises its local program entry to
the router's global values with ``_core.sync_program`` (service, critical and wait become
max(local, global)), so its PLAS/ATLAS policy sees service the program got on any replica.

NOTE (threading): the engine is touched only from the actor's event loop (the step runs there
synchronously between awaits), so no lock is needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence

from pyserve import _core
from pyserve.config import EngineConfig
from pyserve.engine.engine import Engine
from pyserve.engine.outputs import RequestOutput
from pyserve.sampling_params import SamplingParams

_ABORTED = object()  # queue sentinel: the request was aborted


def merge_outputs(items: list[RequestOutput]) -> RequestOutput:
    """The last cumulative output carrying the deltas of all ``items`` (in order)."""
    if len(items) == 1:
        return items[0]
    text = "".join(o.delta_text for o in items)
    ids = [t for o in items for t in o.delta_token_ids]
    return dataclasses.replace(items[-1], delta_text=text, delta_token_ids=ids)


class Replica:
    """An engine plus its step loop; the methods are what the router calls on the actor."""

    def __init__(self, config: EngineConfig, replica_id: int = 0) -> None:
        self.replica_id = replica_id
        self.engine = Engine(config)
        self._queues: dict[str, asyncio.Queue] = {}
        self._sids: dict[str, int] = {}
        self._program_of: dict[str, str] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._error: BaseException | None = None

    def info(self) -> dict:
        """Static facts the router needs: model, limits, KV size, device."""
        st = self.engine.stats()
        return {
            "replica_id": self.replica_id,
            "model": self.engine.config.model.model,
            "max_model_len": self.engine.max_model_len,
            "block_size": self.engine.config.cache.block_size,
            "num_gpu_blocks": st["gpu_blocks_total"],
            "device": str(self.engine.device),
        }

    def health(self) -> bool:
        """True while the step loop is healthy; raises the loop's error otherwise."""
        if self._error is not None:
            raise RuntimeError(f"replica {self.replica_id} step loop failed: {self._error}")
        return True

    def stats(self) -> dict:
        return {**self.engine.stats(), "replica_id": self.replica_id, "live": len(self._queues)}

    async def generate(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        priority: float = 0.0,
        program_id: str | None = None,
        thread_id: str | None = None,
        parent_ids: Sequence[str] = (),
        ltr_score: float | None = None,
        program_values: tuple[float, float, float] | None = None,
    ) -> AsyncIterator[tuple]:
        """Queues the call and yields ``(output, report, kv)`` until it finishes (see module).
        ValueError for bad input (nothing queued)."""
        self.health()
        self._ensure_loop()
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already live on this replica")
        if program_id and program_values is not None:
            service, critical, wait = program_values
            _core.sync_program(
                self.engine.core.programs, program_id, service, critical, wait, self.engine.now()
            )
        self.engine.add_request(request_id, prompt, params, priority=priority,
                                program_id=program_id, thread_id=thread_id,
                                parent_ids=parent_ids, ltr_score=ltr_score)  # fmt: skip
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        self._sids[request_id] = self.engine.core.find(request_id)
        if program_id:
            self._program_of[request_id] = program_id
        self._wake.set()
        last: RequestOutput | None = None
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                if isinstance(items[-1], BaseException):
                    raise items[-1]
                if items[-1] is _ABORTED:
                    if last is not None:
                        yield self._aborted(last), None, self._kv()
                    return
                outs = [o for o, _ in items]
                last = merge_outputs(outs)
                yield last, items[-1][1], self._kv()
                if last.finished:
                    return
        finally:
            self._forget(request_id)

    async def abort(self, request_id: str) -> None:
        """Aborts a live request (no error when it already finished)."""
        if self.engine.core.find(request_id) >= 0:
            self.engine.abort(request_id)
        queue = self._queues.get(request_id)
        if queue is not None:
            queue.put_nowait(_ABORTED)

    def end_program(self, program_id: str) -> bool:
        """Ends the program in the local table if it is there; returns whether it was."""
        if program_id not in self.engine.core.programs:
            return False
        self.engine.end_program(program_id)
        return True

    def mark_coming_back(self, program_id: str) -> bool:
        """Marks the program in the local table if it is there; returns whether it was."""
        return self.engine.mark_coming_back(program_id)

    # -- internals ---------------------------------------------------------------------------
    def _kv(self) -> tuple[int, int]:
        st = self.engine.stats()
        return st["gpu_blocks_free"], st["gpu_blocks_total"]

    @staticmethod
    def _aborted(last: RequestOutput) -> RequestOutput:
        return dataclasses.replace(last, finished=True, finish_reason="abort", delta_text="",
                                   delta_token_ids=[])  # fmt: skip

    def _forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        self._sids.pop(request_id, None)
        self._program_of.pop(request_id, None)
        if self.engine.core.find(request_id) >= 0:  # the caller went away mid-stream
            self.engine.abort(request_id)

    def _ensure_loop(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                if not self.engine.has_unfinished():
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._deliver(self.engine.step())
                await asyncio.sleep(0)
        except Exception as e:  # fail every live stream; health() reports it from now on
            self._error = e
            for queue in self._queues.values():
                queue.put_nowait(RuntimeError(f"replica {self.replica_id} failed: {e}"))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            queue = self._queues.get(out.request_id)
            if queue is None:
                continue
            report = self._report(out.request_id) if out.finished else None
            queue.put_nowait((out, report))

    def _report(self, request_id: str) -> dict:
        # NOTE: a finished call's slot stays readable until the next update() releases it.
        info = self.engine.core.request_info(self._sids[request_id])
        pid = self._program_of.get(request_id)
        prog = self.engine.core.program_info(pid) if pid else None
        return {
            "service": float(info["service"]),
            "wait": float(info["total_wait"]),
            "critical": float(prog["critical"]) if prog else None,
        }


def replica_actor_class(num_cpus: float = 1, num_gpus: float = 0):
    """The Ray actor class of :class:`Replica` (an async actor). Needs ``ray``."""
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(Replica)
