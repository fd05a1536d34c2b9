"""The vLLM internals the plugin relies on, checked once at import.

A scheduler class plugs into vLLM's private scheduler API, which changes between releases. Rather
than fail deep inside a step, importing the plugin verifies every method, signature, enum member
and config field it uses and raises ImportError naming the vLLM version and the missing piece.
"""

from __future__ import annotations

import dataclasses
import inspect

# Tested range (inclusive lower, exclusive upper), the same as the `vllm` extra in pyproject.toml.
SUPPORTED = ((0, 32), (0, 33))

# method -> parameters (after self) it must accept, in order.
_SCHEDULER_METHODS = {
    "schedule": ("throttle_prefills",),
    "update_from_output": ("scheduler_output", "model_runner_output"),
    "add_request": ("request",),
    "finish_requests": ("request_ids", "finished_status"),
    "_preempt_request": ("request", "timestamp"),
    "_free_request": ("request", "delay_free_blocks"),
    "_request_blocks_can_be_freed": ("request",),
}
_QUEUE_METHODS = ("add_request", "remove_requests", "peek_request", "__len__")
_CONFIG_FIELDS = ("policy", "scheduler_cls", "async_scheduling", "max_num_seqs")
_REQUEST_ATTRS = ("__lt__",)


def _version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def _fail(what: str) -> ImportError:
    lo, hi = (".".join(map(str, v)) for v in SUPPORTED)
    return ImportError(
        f"pyserve.integrations.vllm does not support the installed vLLM {_version()}: {what}. "
        f"Tested with vLLM >={lo},<{hi} (pip install 'pyserve[vllm]')."
    )


def _params(fn) -> tuple[str, ...]:
    return tuple(p for p in inspect.signature(fn).parameters if p != "self")


def check_vllm() -> None:
    """Raise ImportError (naming the vLLM version) if an internal the plugin uses is missing."""
    try:
        from vllm.config import SchedulerConfig
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.interface import PauseState
        from vllm.v1.core.sched.request_queue import PriorityRequestQueue, SchedulingPolicy
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.request import Request, RequestStatus
    except ImportError as e:
        raise _fail(f"cannot import {e.name or e}") from e
    for name, want in _SCHEDULER_METHODS.items():
        fn = getattr(Scheduler, name, None)
        if fn is None:
            raise _fail(f"vllm.v1.core.sched.scheduler.Scheduler has no {name}()")
        got = _params(fn)
        if got[: len(want)] != want:
            raise _fail(f"Scheduler.{name}{got} no longer takes {want}")
    if not issubclass(AsyncScheduler, Scheduler):
        raise _fail("AsyncScheduler is no longer a Scheduler subclass")
    for name in _QUEUE_METHODS:
        if not callable(getattr(PriorityRequestQueue, name, None)):
            raise _fail(f"PriorityRequestQueue has no {name}()")
    if getattr(SchedulingPolicy, "PRIORITY", None) is None:
        raise _fail("SchedulingPolicy has no PRIORITY member")
    if not hasattr(PauseState, "UNPAUSED"):
        raise _fail("PauseState has no UNPAUSED member")
    if "RUNNING" not in RequestStatus.__members__:
        raise _fail("RequestStatus has no RUNNING member")
    fields = {f.name for f in dataclasses.fields(SchedulerConfig)}
    for name in _CONFIG_FIELDS:
        if name not in fields:
            raise _fail(f"SchedulerConfig has no field {name!r}")
    for name in _REQUEST_ATTRS:
        if name not in vars(Request):
            raise _fail(f"vllm.v1.request.Request defines no {name}")


# Attributes a Scheduler instance must have after __init__ (checked by ProgramScheduler).
INSTANCE_ATTRS = (
    "requests", "running", "waiting", "kv_holding_waiting", "policy", "kv_cache_manager",
    "max_num_running_reqs", "max_num_scheduled_tokens", "block_size", "_pause_state",
)  # fmt: skip


def check_instance(sched) -> None:
    """Raise RuntimeError (naming the vLLM version) if a Scheduler lacks an attribute used."""
    for name in INSTANCE_ATTRS:
        if not hasattr(sched, name):
            raise RuntimeError(str(_fail(f"Scheduler instances have no attribute {name!r}")))
    if not hasattr(sched.kv_cache_manager, "block_pool") or not hasattr(
        sched.kv_cache_manager.block_pool, "get_num_free_blocks"
    ):
        raise RuntimeError(str(_fail("KVCacheManager.block_pool.get_num_free_blocks is missing")))
