"""``RayCluster``: the EngineClient protocol (docs/interfaces.md) over K Ray replicas behind the
program-aware router, so the OpenAI server serves a cluster unchanged.

Failure handling (what a client sees when a replica dies):

- A replica is declared dead when a call to it raises ``RayActorError`` (Ray reports the actor
  died or is unreachable) or when :meth:`RayCluster.check_health` finds it unresponsive; the
  router never routes to it again and forgets programs stuck to it.
- A call whose replica dies **before it streamed anything** is retried once on another live
  replica (the client cannot tell). A call that had already streamed output fails with
  ``EngineError("replica K died while serving request ...")``; so does a retry that fails again.
  When no replica is left, calls fail with ``EngineDeadError``.

Router state (load, stickiness, the global program table) lives in this process and is touched
only from the event loop that calls into the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from pyserve.cluster.replica import replica_actor_class
from pyserve.cluster.router import Router, RouterOptions
from pyserve.config import EngineConfig
from pyserve.engine.client import EngineDeadError, EngineError
from pyserve.engine.engine import check_prompt_length
from pyserve.engine.messages import CallSpec
from pyserve.engine.outputs import RequestOutput
from pyserve.sampling_params import SamplingParams

log = logging.getLogger("pyserve.cluster")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError(
            "the Ray cluster needs ray: pip install 'pyserve[dist]' (or pip install ray)"
        ) from None
    return ray


class RayCluster:
    """EngineClient over ``replicas`` Ray actors, each holding one Engine (GPU or CPU).

    ``ray_address`` connects to a running cluster (None: the current Ray session, started locally
    when there is none, with ``init_kwargs``). ``num_gpus_per_replica`` defaults to 1 when the
    model's device is CUDA (or auto with CUDA available), else 0.
    """

    def __init__(
        self,
        config: EngineConfig,
        replicas: int = 2,
        *,
        ray_address: str | None = None,
        router: RouterOptions | None = None,
        model_name: str | None = None,
        num_cpus_per_replica: float = 1,
        num_gpus_per_replica: float | None = None,
        init_kwargs: dict | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        ray = self._ray = _import_ray()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=ray_address, **_worker_env(init_kwargs or {}))
        gpus = num_gpus_per_replica
        if gpus is None:
            gpus = 1 if _wants_cuda(config.model.device) else 0
        actor = replica_actor_class(num_cpus_per_replica, gpus)
        self._actors = [actor.remote(config, i) for i in range(replicas)]
        infos = ray.get([a.info.remote() for a in self._actors])
        self.replica_info = infos
        from pyserve.model.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(config.model.model)
        self.model_name = model_name or config.model.model
        self.max_model_len = min(i["max_model_len"] for i in infos)
        opts = router or RouterOptions(block_size=config.cache.block_size)
        self.router = Router(replicas, opts)
        for e, info in enumerate(infos):  # NOTE: an engine that never reported has no headroom
            self.router.report(e, info["num_gpu_blocks"], info["num_gpu_blocks"])
        self._accepting = True

    # -- EngineClient --------------------------------------------------------------------------
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
        """Routes the call, streams its outputs from the replica (see the module for failures)."""
        num_tokens = self._validate(request_id, prompt, params)
        spec = CallSpec(request_id, prompt, params, priority, program_id, ltr_score)
        for attempt in range(2):
            engine = self._route(request_id, program_id, num_tokens)
            streamed = False
            try:
                # NOTE: aclosing: a client that stops iterating closes the replica stream now,
                # which aborts the call there (frees its KV) instead of at garbage collection.
                stream = self._stream(engine, spec)
                async with contextlib.aclosing(stream):
                    async for out in stream:
                        streamed = True
                        yield out
                return
            except self._ray.exceptions.RayActorError as err:
                self._mark_dead(engine, err)
                if streamed or attempt == 1 or self.router.lb.num_alive == 0:
                    raise EngineError(
                        f"replica {engine} died while serving request {request_id!r}: "
                        f"{type(err).__name__}"
                    ) from None
                log.warning("replica %d died before %s started; retrying", engine, request_id)
            finally:
                if self.router.lb.engine_of(request_id) >= 0:
                    self.router.finished(request_id)

    async def abort(self, request_id: str) -> None:
        """Aborts a live request on its replica (no error when it already finished)."""
        engine = self.router.lb.engine_of(request_id)
        if engine >= 0 and self.router.alive(engine):
            with contextlib.suppress(self._ray.exceptions.RayActorError):
                await self._actors[engine].abort.remote(request_id)

    async def start_program(self, program_id: str | None = None) -> str:
        """Starts a program in the global table; ValueError if it already exists."""
        pid = program_id or f"prog-{uuid.uuid4().hex[:16]}"
        self.router.start_program(pid)
        return pid

    async def end_program(self, program_id: str) -> None:
        """Ends a program everywhere; ValueError if unknown."""
        self.router.end_program(program_id)
        refs = [self._actors[e].end_program.remote(program_id) for e in self.router.live_engines()]
        await asyncio.gather(*refs, return_exceptions=True)

    async def mark_coming_back(self, program_id: str) -> bool:
        """Marks the program in the global table and on every live replica that holds it."""
        found = self.router.programs.mark_coming_back(program_id)
        live = self.router.live_engines()
        refs = [self._actors[e].mark_coming_back.remote(program_id) for e in live]
        marked = await asyncio.gather(*refs, return_exceptions=True)
        return found or any(m is True for m in marked)

    def has_program(self, program_id: str) -> bool:
        return program_id in self.router.programs

    async def stats(self) -> dict:
        """Core stats summed over live replicas, plus ``replicas``: per-replica router state
        and stats (``alive: False`` for dead ones)."""
        await self.check_health()
        live = self.router.live_engines()
        per = await asyncio.gather(
            *[self._actors[e].stats.remote() for e in live], return_exceptions=True
        )
        by_engine = dict(zip(live, per, strict=True))
        total: dict = {}
        replicas = []
        for e in range(self.router.num_engines):
            st = by_engine.get(e)
            entry = {"replica": e, **self.router.engine_stats(e)}
            if isinstance(st, dict):
                entry["stats"] = st
                for k, v in st.items():
                    if isinstance(v, int | float) and k != "replica_id":
                        total[k] = total.get(k, 0) + v
            replicas.append(entry)
        total["replicas"] = replicas
        total["num_replicas_alive"] = self.router.lb.num_alive
        return total

    async def shutdown(self, drain: bool = True) -> None:
        """Stops accepting calls; waits for live ones (drain) or aborts them; kills replicas."""
        self._accepting = False
        if drain:
            while self.router.lb.num_calls:
                await asyncio.sleep(0.05)
        for actor in self._actors:
            self._ray.kill(actor)
        if self._owns_ray:
            self._ray.shutdown()

    # -- cluster -------------------------------------------------------------------------------
    async def check_health(self, timeout_s: float = 10.0) -> list[int]:
        """Pings live replicas; marks the ones that died or do not answer in time dead. Returns
        the live engines."""
        for e in self.router.live_engines():
            try:
                await asyncio.wait_for(self._actors[e].health.remote(), timeout_s)
            except (self._ray.exceptions.RayError, asyncio.TimeoutError) as err:
                self._mark_dead(e, err)
        return self.router.live_engines()

    def actor(self, engine: int):
        """The Ray actor handle of replica ``engine`` (tests kill it with ``ray.kill``)."""
        return self._actors[engine]

    def _validate(self, request_id: str, prompt, params: SamplingParams) -> int:
        if not self._accepting:
            raise EngineDeadError("the cluster is shut down")
        if self.router.lb.num_alive == 0:
            raise EngineDeadError("no live replica")
        if not request_id:
            raise ValueError("request_id must not be empty")
        if self.router.lb.engine_of(request_id) >= 0:
            raise ValueError(f"request id {request_id!r} is already live")
        if params.n != 1:
            raise ValueError("generate takes n == 1; use expand_n() for n > 1")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        check_prompt_length(len(ids), self.max_model_len)
        return len(ids)

    def _route(self, request_id: str, program_id: str | None, num_tokens: int) -> int:
        try:
            return self.router.route(request_id, program_id, num_tokens, account=True)
        except RuntimeError as e:
            raise EngineDeadError(str(e)) from None

    async def _stream(self, engine: int, spec: CallSpec):
        request_id = spec.request_id
        values = self.router.program_values(spec.program_id)
        if values is not None:
            values = (values.service, values.critical, values.wait)
        gen = self._actors[engine].generate.options(num_returns="streaming").remote(spec, values)
        finished = False
        try:
            async for ref in gen:
                try:
                    out, report, kv = await ref
                except self._ray.exceptions.RayTaskError as err:
                    cause = err.cause if hasattr(err, "cause") else err
                    if isinstance(cause, ValueError):
                        raise ValueError(str(cause)) from None
                    raise EngineError(f"replica {engine} failed request {request_id!r}: "
                                      f"{cause}") from None  # fmt: skip
                self.router.report(engine, *kv)
                self.router.started(request_id)
                if out.finished:
                    finished = True
                    if report is not None:
                        self.router.call_finished(
                            request_id, report["service"], report["wait"], report["critical"]
                        )
                yield out
        finally:
            if not finished and self.router.alive(engine):
                # the caller went away (disconnect) or the stream broke: free the call's KV
                with contextlib.suppress(Exception):
                    self._actors[engine].abort.remote(request_id)

    def _mark_dead(self, engine: int, err: BaseException) -> None:
        if self.router.alive(engine):
            log.error("replica %d is dead (%s); routing around it", engine, type(err).__name__)
            self.router.mark_dead(engine)


def _wants_cuda(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def _worker_env(init_kwargs: dict) -> dict:
    """``ray.init`` arguments under which replicas import the same pyserve as this process.

    NOTE: Ray puts the driver's working directory first on every worker's ``sys.path``. Started
    in a source checkout, workers would import its ``pyserve/`` (no compiled core) instead of
    the installed package. Then the workers get an empty working directory of their own, unless
    the caller chose a ``runtime_env`` (an editable install needs none: its import hook wins).
    """
    import os
    import tempfile

    import pyserve

    src = os.path.join(os.getcwd(), "pyserve")
    ours = os.path.dirname(os.path.abspath(pyserve.__file__))
    if "runtime_env" in init_kwargs or not os.path.isfile(os.path.join(src, "__init__.py")):
        return init_kwargs
    if os.path.realpath(src) == os.path.realpath(ours):
        return init_kwargs
    return {**init_kwargs, "runtime_env": {"working_dir": tempfile.mkdtemp(prefix="pyserve-ray-")}}
