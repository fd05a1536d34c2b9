"""uvicorn under pyserve's limits: :func:`make_server` for the CLI, :class:`ServerThread` for
tests, notebooks and embedded use.

Shutdown: the first SIGTERM/SIGINT stops accepting and drains open requests for at most
``shutdown_timeout_s``; then the ones left are cancelled (their engine requests aborted, KV
freed) and the app's lifespan shuts the engine down within what is left of that budget. A second
signal exits at once: uvicorn stops waiting and the engine drain is cut short (drain=False).

The listening socket of a ServerThread is bound before uvicorn starts (port 0 picks a free
one), so there is no race between choosing a port and serving on it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import uvicorn

from pyserve.server.connections import ConnectionLimits, protocol_factory

log = logging.getLogger("pyserve.server")


class PyserveServer(uvicorn.Server):
    """``uvicorn.Server`` whose second exit signal forces the exit (uvicorn's: only SIGINT)."""

    def __init__(self, config: uvicorn.Config, app) -> None:
        super().__init__(config)
        self.app_state = getattr(getattr(app, "state", None), "pyserve", None)

    def handle_exit(self, sig, frame) -> None:
        if self.should_exit:
            log.warning("second exit signal: exiting now")
            self.force_exit = True
            if self.app_state is not None:
                self.app_state.force_shutdown()
            return
        if self.app_state is not None:
            self.app_state.begin_shutdown()
        super().handle_exit(sig, frame)


def make_server(app, limits: ConnectionLimits | None = None, *, host: str = "127.0.0.1",
                port: int = 0, log_level: str = "warning") -> PyserveServer:  # fmt: skip
    """A uvicorn server for ``app`` (from ``build_app``) with ``limits`` applied."""
    limits = limits or ConnectionLimits()
    state = getattr(app.state, "pyserve", None)

    def on_timeout() -> None:
        if state is not None:
            state.metrics.observe_timeout("header")

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on",
        http=protocol_factory(limits, on_timeout), timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_connections,
        timeout_graceful_shutdown=limits.shutdown_timeout_s, backlog=2048,
    )  # fmt: skip
    return PyserveServer(config, app)


class ServerThread:
    """``with ServerThread(app) as s: httpx.get(s.url + "/health")``; stops uvicorn on exit."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout_s: float = 60.0,
                 limits: ConnectionLimits | None = None) -> None:  # fmt: skip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = make_server(app, limits, host=host, port=self.port, log_level=log_level)
        self.start_timeout_s = start_timeout_s
        self._thread = threading.Thread(target=self._serve, name="pyserve-uvicorn", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc

    def start(self) -> ServerThread:
        """Starts serving; returns once uvicorn is ready (RuntimeError if it failed)."""
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"uvicorn failed to start: {self._error}")
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start in time")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Asks uvicorn to exit (lifespan shutdown runs) and waits for the thread."""
        self.server.should_exit = True
        self._thread.join(timeout_s)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
