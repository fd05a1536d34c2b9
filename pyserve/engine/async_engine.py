"""AsyncEngine: the engine step loop on a background thread, requests streamed to asyncio.

NOTE (threading): the Engine (and the C++ core behind it) is touched only by the loop thread.
Callers on event loops hand it commands through ``_inbox`` (guarded by ``_cv``); outputs go back
to each request's ``asyncio.Queue`` with ``loop.call_soon_threadsafe``, one call per step and loop.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyserve.config import EngineConfig
from pyserve.engine.client import EngineDeadError, EngineError
from pyserve.engine.engine import Engine
from pyserve.engine.outputs import RequestOutput
from pyserve.sampling_params import SamplingParams

log = logging.getLogger("pyserve.async_engine")

# Upper bounds (s) of the scheduler-step histogram reported by stats().
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PROGRAM_SYNC_S = 1.0  # how often idle programs are collected (TTL) while the loop is idle


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
    for queue, item in items:
        queue.put_nowait(item)


class AsyncEngine:
    """Single-process :class:`~pyserve.engine.client.EngineClient` over one :class:`Engine`."""

    def __init__(self, engine: Engine, model_name: str | None = None) -> None:
        self.engine = engine
        self.model_name = model_name or engine.config.model.model
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self._cv = threading.Condition()
        self._inbox: list[_Command] = []
        self._streams: dict[str, _Stream] = {}  # NOTE: loop thread only
        # NOTE: mirror of the core's live program ids, mutated by the loop thread only (set add,
        # discard and `in` are atomic under the GIL); TTL expiries arrive via take_expired().
        self._programs: set[str] = set()
        engine.core.programs.set_keep_expired(True)
        self._accepting = True
        self._stop = False
        self._drain = True
        self._dead: BaseException | None = None
        self._step_counts = [0] * (len(STEP_BUCKETS) + 1)
        self._step_sum = 0.0
        self._step_failures = 0
        self._stats: dict = self._collect_stats()
        self._thread = threading.Thread(target=self._run, name="pyserve-engine", daemon=True)
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
        thread_id: str | None = None,
        parent_ids: Sequence[str] = (),
        ltr_score: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """See :meth:`EngineClient.generate`."""
        loop = asyncio.get_running_loop()
        stream = _Stream(loop)

        def add() -> None:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            try:
                self.engine.add_request(request_id, prompt, params, priority=priority,
                                        program_id=program_id, thread_id=thread_id,
                                        parent_ids=parent_ids, ltr_score=ltr_score)  # fmt: skip
            except (TypeError, OverflowError) as exc:  # argument conversion in the bindings
                raise ValueError(f"invalid request {request_id!r}: {exc}") from None
            self._streams[request_id] = stream

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
                self._submit(_Command(lambda: self._abort_now(request_id)))

    async def abort(self, request_id: str) -> None:
        """Aborts a live request; its stream ends with finish_reason ``abort``."""
        await self._call(lambda: self._abort_now(request_id))

    async def start_program(self, program_id: str | None = None) -> str:
        """Starts a program; ValueError if the id is already started."""

        def start() -> str:
            pid = self.engine.start_program(program_id)
            self._programs.add(pid)  # visible before the caller resumes
            return pid

        return await self._call(start)

    async def end_program(self, program_id: str) -> None:
        """Ends a program; ValueError if it is unknown."""

        def end() -> None:
            self.engine.end_program(program_id)
            self._programs.discard(program_id)

        await self._call(end)

    async def mark_coming_back(self, program_id: str) -> bool:
        """Marks the program as coming back (its last call ended with a tool call)."""
        return await self._call(lambda: self.engine.mark_coming_back(program_id))

    def has_program(self, program_id: str) -> bool:
        """Whether the program is started (mirror refreshed by the loop thread)."""
        return program_id in self._programs

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
        last_sync = 0.0
        programs = self.engine.core.programs
        try:
            while True:
                with self._cv:
                    if not self._inbox and not self._stop and not self.engine.has_unfinished():
                        # NOTE: idle: sleep until a command arrives or the next TTL collection.
                        self._cv.wait(_PROGRAM_SYNC_S)
                    cmds, self._inbox = self._inbox, []
                    stop, drain = self._stop, self._drain
                for cmd in cmds:
                    self._execute(cmd)
                if stop and not drain:
                    self._abort_all("the engine is shutting down")
                if self.engine.has_unfinished():
                    self._step()
                now = time.monotonic()
                if now - last_sync > _PROGRAM_SYNC_S:  # steps collect too; this covers idle time
                    programs.collect(self.engine.now())
                    last_sync = now
                for pid in programs.take_expired():
                    self._programs.discard(pid)
                self._stats = self._collect_stats()
                if stop and not self.engine.has_unfinished():
                    with self._cv:
                        if not self._inbox:
                            break
        except BaseException as exc:  # noqa: BLE001 - the loop must report any death
            log.exception("engine loop died")
            self._dead = exc
            self._fail_streams(list(self._streams), f"engine loop died: {exc}")
        finally:
            self._close_inbox()
            self._stats = {**self._stats, "engine_alive": False}

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
            outputs = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - fail the affected requests, keep serving
            log.exception("engine step failed")
            self._step_failures += 1
            self._fail_streams(self._affected_by_failed_step(), f"engine step failed: {exc}")
            return
        self._observe_step(time.perf_counter() - t0)
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

    def _affected_by_failed_step(self) -> list[str]:
        """Requests whose KV may be inconsistent after a failed step: running or swapped ones.

        NOTE: schedule() ran but update() did not, so scheduled prefills/decodes and any
        swap/copy of this step may not have happened; waiting requests hold no KV and survive.
        """
        core = self.engine.core
        hit = []
        for rid in self._streams:
            sid = core.find(rid)
            if sid < 0 or core.request_info(sid)["status"] != "waiting":
                hit.append(rid)
        return hit

    def _fail_streams(self, request_ids: list[str], message: str) -> None:
        batches: dict[asyncio.AbstractEventLoop, list] = {}
        for rid in request_ids:
            stream = self._streams.pop(rid, None)
            if self.engine.core.find(rid) >= 0:
                self.engine.abort(rid)  # frees its KV blocks
            if stream is not None:
                batches.setdefault(stream.loop, []).append((stream.queue, EngineError(message)))
        for loop, items in batches.items():
            _call_soon(loop, _deliver, items)

    def _abort_now(self, request_id: str) -> None:
        engine = self.engine
        sid = engine.core.find(request_id)
        stream = self._streams.pop(request_id, None)
        if sid < 0:
            return
        state = engine.states.get(sid)
        engine.abort(request_id)
        if stream is not None and state is not None:
            state.finish("abort", engine.now())
            _call_soon(stream.loop, _deliver, [(stream.queue, state.snapshot())])

    def _abort_all(self, reason: str) -> None:
        for rid in list(self._streams):
            self._abort_now(rid)
        log.info("aborted all live requests: %s", reason)

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
        st["num_programs"] = len(self._programs)
        st["engine_alive"] = self._dead is None
        return st


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
