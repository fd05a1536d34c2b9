"""Runs the app under uvicorn in a background thread (tests, notebooks, embedded use).

The listening socket is bound before uvicorn starts (port 0 picks a free one), so there is no
race between choosing a port and serving on it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn


class ServerThread:
    """``with ServerThread(app) as s: httpx.get(s.url + "/health")``; stops uvicorn on exit."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout_s: float = 60.0) -> None:  # fmt: skip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=30,
                                backlog=2048)  # fmt: skip
        self.server = uvicorn.Server(config)
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
