"""The program-aware router in front of several engines: the C++ ``LoadBalancer`` plus the
global program table.

Routing rules (decided in C++, ``csrc/core/load_balancer.cc``):

- ``locality`` (Autellix): a call of at most ``short_call_tokens`` prompt tokens goes to the
  least-loaded live engine; a longer call of a program goes to the engine already holding the
  program's context (the first long call picks the least-loaded engine and records it). Calls
  without a program id are one-call programs and are always balanced.
- ``least_loaded``: every call to the least-loaded live engine. ``round_robin``: live engines in turn.
- Load ``calls``: calls routed to the engine and not finished, ties broken by KV headroom (free
  blocks minus the prompt blocks of calls not started yet). ``llumnix``: that headroom divided
  by (calls + 1), higher is freer.

The global program table: PLAS/ATLAS priorities must reflect service a program received on any
engine. In one process (the simulated cluster) every scheduler shares one ``_core.ProgramTable``.
Across processes (Ray) each replica has its own table; the router keeps the global one, passes a
program's global (service, critical, wait) with each call, and the replica raises its local entry
to those values with ``_core.sync_program`` before queueing the call (see ``replica.py``); at
completion the replica reports the call's service and wait and the program's critical scalar,
which :meth:`Router.call_finished` folds into the global table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pyserve import _core

ROUTING_POLICIES = ("locality", "round_robin", "least_loaded")
LOAD_SIGNALS = ("calls", "llumnix")


@dataclass(frozen=True)
class RouterOptions:
    """How calls are spread over engines."""

    routing: str = "locality"  # locality | round_robin | least_loaded
    load_signal: str = "calls"  # calls | llumnix
    short_call_tokens: int = 2048
    block_size: int = 16
    program_ttl_s: float = 600.0

    def __post_init__(self) -> None:
        if self.routing not in ROUTING_POLICIES:
            raise ValueError(
                f"unknown routing policy {self.routing!r}; known: {', '.join(ROUTING_POLICIES)}"
            )
        if self.load_signal not in LOAD_SIGNALS:
            raise ValueError(
                f"unknown load signal {self.load_signal!r}; known: {', '.join(LOAD_SIGNALS)}"
            )
        if self.short_call_tokens < 0:
            raise ValueError(f"short_call_tokens must be >= 0, got {self.short_call_tokens}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if not self.program_ttl_s > 0:
            raise ValueError(f"program_ttl_s must be > 0, got {self.program_ttl_s}")

    def core_config(self) -> _core.RouterConfig:
        c = _core.RouterConfig()
        c.policy = self.routing
        c.load_signal = self.load_signal
        c.short_call_tokens = self.short_call_tokens
        c.block_size = self.block_size
        c.validate()
        return c


@dataclass(frozen=True)
class ProgramValues:
    """A program's global counters a replica needs to prioritise its next call."""

    service: float = 0.0
    critical: float = 0.0
    wait: float = 0.0


class Router:
    """Routes calls to ``num_engines`` engines and keeps the global program table.

    ``programs`` (optional) is a table shared with in-process schedulers; by default the router
    makes its own. NOTE: not thread-safe (one event loop or one simulator thread drives it).
    """

    def __init__(
        self,
        num_engines: int,
        options: RouterOptions | None = None,
        programs: _core.ProgramTable | None = None,
    ) -> None:
        self.options = options or RouterOptions()
        self.programs = programs if programs is not None else _core.ProgramTable(
            self.options.program_ttl_s
        )  # fmt: skip
        self.lb = _core.LoadBalancer(self.options.core_config(), num_engines, self.programs)
        # call id -> program key in the global table (only when the router owns the accounting)
        self._call_program: dict[str, str] = {}
        self._t0 = time.monotonic()

    def clock(self) -> float:
        """Seconds since the router started (the global table's clock for TTLs)."""
        return time.monotonic() - self._t0

    @property
    def num_engines(self) -> int:
        return self.lb.num_engines

    def alive(self, engine: int) -> bool:
        return self.lb.alive(engine)

    def live_engines(self) -> list[int]:
        return [e for e in range(self.num_engines) if self.lb.alive(e)]

    def route(
        self, call_id: str, program_id: str | None, prompt_tokens: int, *, account: bool = False
    ) -> int:
        """The engine of a new call. ``account=True`` also counts the call in the global program
        table (Ray: replicas have their own tables); in-process schedulers sharing the table do
        their own accounting. ValueError for a duplicate id, RuntimeError when no engine lives."""
        engine = self.lb.route(call_id, program_id or "", int(prompt_tokens))
        if account and program_id:
            _core.program_call_arrived(self.programs, program_id, self.clock())
            self._call_program[call_id] = program_id
        return engine

    def started(self, call_id: str) -> None:
        """The call began running (its prompt stops counting as queued KV demand)."""
        self.lb.started(call_id)

    def finished(self, call_id: str) -> None:
        """The call left its engine (finished, aborted or failed) without service to fold in."""
        self.call_finished(call_id, 0.0, 0.0, None)

    def call_finished(
        self, call_id: str, service: float, wait: float, critical: float | None
    ) -> None:
        """The call left its engine; fold the service it received into the global table."""
        if self.lb.engine_of(call_id) >= 0:
            self.lb.finished(call_id)
        pid = self._call_program.pop(call_id, None)
        if pid is None or pid not in self.programs:
            return
        if critical is not None:
            _core.sync_program(self.programs, pid, 0.0, max(0.0, critical), 0.0, self.clock())
        # NOTE: this also drops the call from the entry's active calls (pairs with the arrival
        # counted by route(account=True)).
        _core.program_call_finished(
            self.programs, pid, max(0.0, service), max(0.0, wait), self.clock()
        )

    def program_values(self, program_id: str | None) -> ProgramValues | None:
        """The program's global counters (None for an untagged call or an unknown program)."""
        if not program_id:
            return None
        info = self.programs.info(program_id)
        if info is None:
            return None
        return ProgramValues(info["service"], info["critical"], info["wait"])

    def report(self, engine: int, free_blocks: int, total_blocks: int) -> None:
        """The engine's KV state (free / total GPU blocks), used as a tie-breaker or signal."""
        self.lb.report(engine, int(free_blocks), int(total_blocks))

    def mark_dead(self, engine: int) -> list[str]:
        """Never route to ``engine`` again; returns the calls still in flight there."""
        return list(self.lb.mark_dead(engine))

    def start_program(self, program_id: str) -> None:
        """ValueError if the program is already live."""
        self.programs.start(program_id, self.clock())

    def end_program(self, program_id: str) -> None:
        """Ends the program in the global table and forgets its sticky engine. ValueError if
        unknown."""
        self.programs.end(program_id)
        self.lb.forget_program(program_id)

    def collect(self, now: float | None = None) -> int:
        """Drops idle programs (TTL) from the table and their stickiness; returns how many."""
        n = self.programs.collect(self.clock() if now is None else now)
        self.lb.collect()
        return n

    def engine_stats(self, engine: int) -> dict:
        return dict(self.lb.engine(engine))

    def check(self) -> None:
        """Raises RuntimeError if the router's bookkeeping is inconsistent."""
        self.lb.check()
