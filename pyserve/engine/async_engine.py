"""AsyncEngine: the engine step loop on a background thread, requests streamed to asyncio.

NOTE (threading): three roles. The *loop thread* alone touches the Engine: it runs commands
(messages) between steps and steps. The *output thread* alone owns the OutputProcessor and the
streams: it turns StepReports into outputs (detokenizing, stop strings) and hands them to each
request's ``asyncio.Queue`` with ``loop.call_soon_threadsafe``, one call per report and loop;
when a stop string matches it sends ``Abort(reason="stop")`` back to the loop thread. Callers on
event loops hand commands to the loop thread through ``_inbox`` (guarded by ``_cv``). The Ray
``Replica`` runs this same class, so both have the same loop and failure behaviour.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pyserve.config import EngineConfig
from pyserve.engine.client import EngineDeadError, EngineError
from pyserve.engine.engine import Engine
from pyserve.engine.messages import Abort, AddCall, CallSpec, ProgramOp
from pyserve.engine.output_processor import OutputProcessor
from pyserve.engine.outputs import RequestOutput
from pyserve.sampling_params import SamplingParams

log = logging.getLogger("pyserve.async_engine")

# Upper bounds (s) of the scheduler-step histogram reported by stats().
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class _Stream:
    """Where one request's outputs go: a queue owned by the caller's event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


@dataclass
class _Command:
    """Work for the loop thread; ``future`` (on ``loop``) receives the result or the error."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None


def _resolve(fut: asyncio.Future, value: Any, exc: BaseException | None) -> None:
    if fut.done():  # the caller gave up (cancelled)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)


class AsyncEngine:
    """Single-process :class:`~pyserve.engine.client.EngineClient` over one :class:`Engine`."""

    def __init__(self, engine: Engine, model_name: str | None = None) -> None:
        self.engine = engine
        self.model_name = model_name or engine.config.model.model
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self._cv = threading.Condition()
        self._inbox: list[_Command] = []
        self._out: queue.SimpleQueue = queue.SimpleQueue()  # loop thread -> output thread
        self._streams: dict[str, _Stream] = {}  # NOTE: output thread only
        self._accepting = True
        self._stop = False
        self._drain = True
        self._dead: BaseException | None = None
        self._step_counts = [0] * (len(STEP_BUCKETS) + 1)
        self._step_sum = 0.0
        self._step_failures = 0
        self.kv_headroom: tuple[int, int] = (0, 0)  # (free, total) blocks after the last step
        self._stats: dict = self._collect_stats()
        self.kv_headroom = (self._stats["gpu_blocks_free"], self._stats["gpu_blocks_total"])
        self._output = threading.Thread(target=self._run_output, name="pyserve-output",
                                        daemon=True)  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="pyserve-engine", daemon=True)
        self._output.start()
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig, model_name: str | None = None) -> AsyncEngine:
        """Builds the Engine (loads the model) and starts the loop thread."""
        return cls(Engine(config), model_name)

    # -- the client API (event-loop side) ------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """True while the loop thread is alive and accepting requests."""
        return self._accepting and self._dead is None and self._thread.is_alive()

    async def generate(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        *,
        priority: float = 0.0,
        program_id: str | None = None,
        ltr_score: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """See :meth:`EngineClient.generate`."""
        spec = CallSpec(request_id, prompt, params, priority, program_id, ltr_score)
        async for out in self.generate_call(spec):
            yield out

    async def generate_call(self, spec: CallSpec) -> AsyncIterator[RequestOutput]:
        """:meth:`generate` for a ready :class:`CallSpec`."""
        stream = _Stream(asyncio.get_running_loop())

        def add() -> None:
            admitted = self.engine.handle(AddCall(spec))
            self._out.put(("add", admitted, stream))

        finished = False
        try:
            await self._call(add)
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._submit(_Command(lambda: self._abort_now(spec.request_id)))

    async def abort(self, request_id: str) -> None:
        """Aborts a live request; its stream ends with finish_reason ``abort``."""
        await self._call(lambda: self._abort_now(request_id))

    async def start_program(self, program_id: str | None = None) -> str:
        """Starts a program; ValueError if the id is already started."""
        return await self._call(lambda: self.engine.handle(ProgramOp("start", program_id)))

    async def end_program(self, program_id: str) -> None:
        """Ends a program; ValueError if it is unknown."""
        await self._call(lambda: self.engine.handle(ProgramOp("end", program_id)))

    async def sync_program(self, program_id: str, values: tuple[float, float, float]) -> None:
        """Raises the local program entry to a router's global (service, critical, wait)."""
        await self._call(lambda: self.engine.handle(ProgramOp("sync", program_id, values)))

    async def mark_coming_back(self, program_id: str) -> bool:
        """Marks the program as coming back (its last call ended with a tool call)."""
        return await self._call(lambda: self.engine.mark_coming_back(program_id))

    def has_program(self, program_id: str) -> bool:
        """Whether the program is started (asks the core's table; safe from any thread)."""
        return self.engine.has_program(program_id)

    async def stats(self) -> dict:
        """Core stats after the last step or command, plus the step histogram and liveness."""
        return dict(self._stats)

    async def shutdown(self, drain: bool = True) -> None:
        """Stops accepting; drains (or aborts) live requests; joins the loop thread."""
        with self._cv:
            self._accepting = False
            self._stop = True
            self._drain = drain
            self._cv.notify()
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._output.join)

    # -- hand-off ------------------------------------------------------------------------------
    def _submit(self, cmd: _Command) -> None:
        with self._cv:
            if not self._thread.is_alive() or (self._stop and cmd.future is not None):
                if cmd.future is not None:
                    cmd.future.set_exception(EngineDeadError("the engine is shut down"))
                return
            self._inbox.append(cmd)
            self._cv.notify()

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Runs ``fn`` on the loop thread between steps and returns its result (or raises)."""
        if self._dead is not None:
            raise EngineDeadError(f"the engine loop died: {self._dead}")
        if not self._accepting:
            raise EngineDeadError("the engine is shutting down")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._submit(_Command(fn, loop, fut))
        return await fut

    # -- the loop thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._inbox and not self._stop and not self.engine.has_unfinished():
                        self._cv.wait()  # NOTE: idle: sleep until a command arrives
                    cmds, self._inbox = self._inbox, []
                    stop, drain = self._stop, self._drain
                for cmd in cmds:
                    self._execute(cmd)
                if stop and not drain:
                    self._abort_all()
                if self.engine.has_unfinished():
                    self._step()
                self._stats = self._collect_stats()
                if stop and not self.engine.has_unfinished():
                    with self._cv:
                        if not self._inbox:
                            break
        except BaseException as exc:  # noqa: BLE001 - the loop must report any death
            log.exception("engine loop died")
            self._dead = exc
            self._out.put(("fail_all", f"engine loop died: {exc}"))
        finally:
            self._close_inbox()
            self._stats = {**self._stats, "engine_alive": False}
            self._out.put(("close",))

    def _execute(self, cmd: _Command) -> None:
        try:
            value, exc = cmd.fn(), None
        except Exception as e:  # noqa: BLE001 - handed back to the caller
            value, exc = None, e
        if cmd.future is not None and cmd.loop is not None:
            _call_soon(cmd.loop, _resolve, cmd.future, value, exc)
        elif exc is not None and not isinstance(exc, ValueError):
            log.warning("engine command failed: %s", exc)

    def _step(self) -> None:
        t0 = time.perf_counter()
        try:
            report = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - fail the affected requests, keep serving
            log.exception("engine step failed")
            self._step_failures += 1
            hit = [f.request_id for f in self.engine.abort_holding_kv()]
            self._out.put(("fail", hit, f"engine step failed: {exc}"))
            return
        self._observe_step(time.perf_counter() - t0)
        self.kv_headroom = (report.kv_free_blocks, report.kv_total_blocks)
        self._out.put(("report", report))

    def _abort_now(self, request_id: str, reason: str = "abort") -> None:
        done = self.engine.handle(Abort(request_id, reason))
        if done is not None:
            self._out.put(("finished", done, self.engine.now()))

    def _abort_all(self) -> None:
        for rid in self.engine.live_request_ids():
            self._abort_now(rid)
        log.info("aborted all live requests: the engine is shutting down")

    def _close_inbox(self) -> None:
        with self._cv:
            cmds, self._inbox = self._inbox, []
        for cmd in cmds:
            if cmd.future is not None and cmd.loop is not None:
                err = EngineDeadError("the engine is shut down")
                _call_soon(cmd.loop, _resolve, cmd.future, None, err)

    def _observe_step(self, seconds: float) -> None:
        self._step_counts[bisect.bisect_left(STEP_BUCKETS, seconds)] += 1
        self._step_sum += seconds

    def _collect_stats(self) -> dict:
        st = dict(self.engine.stats())
        st["num_live_requests"] = len(self._streams)
        st["step_seconds_buckets"] = list(zip(STEP_BUCKETS, _cumsum(self._step_counts)))
        st["step_seconds_count"] = sum(self._step_counts)
        st["step_seconds_sum"] = self._step_sum
        st["step_failures"] = self._step_failures
        st["engine_alive"] = self._dead is None
        return st

    # -- the output thread ---------------------------------------------------------------------
    def _run_output(self) -> None:
        proc = OutputProcessor(self.tokenizer, stream=True)
        while True:
            item = self._out.get()
            kind = item[0]
            try:
                if kind == "close":
                    return
                self._handle_output(proc, item)
            except Exception as exc:  # noqa: BLE001 - output bugs fail the streams, not the engine
                log.exception("output processing failed")
                self._fail(proc, list(self._streams), f"output processing failed: {exc}")

    def _handle_output(self, proc: OutputProcessor, item: tuple) -> None:
        kind = item[0]
        if kind == "add":
            _, admitted, stream = item
            proc.add(admitted)
            self._streams[admitted.spec.request_id] = stream
        elif kind == "report":
            outputs, stopped = proc.process(item[1])
            for rid in stopped:  # the core finishes it with reason `stop`
                self._submit(_Command(lambda r=rid: self._abort_now(r, "stop")))
            self._send(outputs)
        elif kind == "finished":
            out = proc.finish(item[1], item[2])
            self._send([out] if out is not None else [])
        elif kind == "fail":
            self._fail(proc, item[1], item[2])
        elif kind == "fail_all":
            self._fail(proc, list(self._streams), item[1])

    def _send(self, outputs: list[RequestOutput]) -> None:
        batches: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            batches.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, items in batches.items():
            _call_soon(loop, _deliver, items)

    def _fail(self, proc: OutputProcessor, request_ids: list[str], message: str) -> None:
        batches: dict[asyncio.AbstractEventLoop, list] = {}
        for rid in request_ids:
            proc.drop(rid)
            stream = self._streams.pop(rid, None)
            if stream is not None:
                batches.setdefault(stream.loop, []).append((stream.queue, EngineError(message)))
        for loop, items in batches.items():
            _call_soon(loop, _deliver, items)


def _cumsum(counts: list[int]) -> list[int]:
    out, total = [], 0
    for c in counts[:-1]:
        total += c
        out.append(total)
    return out


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the caller's loop is closed: nobody is listening any more
        pass
