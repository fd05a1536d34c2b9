"""Connection limits of the HTTP server: timeouts, a connection cap and a bounded shutdown.

uvicorn times out idle keep-alive connections and drains for ``timeout_graceful_shutdown`` but
has no timeout for request headers, so a client that connects and stays silent (or sends its
headers a byte at a time) holds a connection forever. :class:`TimedH11Protocol` closes such a
connection ``header_timeout_s`` after it opened or after its next request began arriving. The
body timeout lives in the app (``BodyLimitMiddleware``: 408).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection timeouts (s), the connection cap and the shutdown budget (s)."""

    header_timeout_s: float = 10.0
    keep_alive_s: float = 30.0  # idle keep-alive: longer than uvicorn's 5 s for agent loops
    max_connections: int = 1024  # more concurrent connections or requests get 503
    shutdown_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if not self.shutdown_timeout_s >= 0:
            raise ValueError(f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a request-header timeout (slowloris and silent clients)."""

    def __init__(self, *args, header_timeout_s: float, on_timeout: Callable[[], None],
                 **kwargs) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.on_timeout = on_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        # NOTE: h11 keeps their_state IDLE until a request's headers are complete.
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def _expired(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.on_timeout()
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_headers():
            self._arm()  # the next request's headers started arriving
        super().data_received(data)
        if not self._waiting_for_headers():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_factory(limits: ConnectionLimits, on_timeout: Callable[[], None]):
    """The ``http=`` argument of ``uvicorn.Config``."""
    return functools.partial(TimedH11Protocol, header_timeout_s=limits.header_timeout_s,
                             on_timeout=on_timeout)  # fmt: skip
