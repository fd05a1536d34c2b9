"""Bounded shutdown: a stalled stream cannot hold the server past --shutdown-timeout (its KV is
freed), and a second SIGTERM exits at once. 127.0.0.1 only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import tiny_async_engine

from pyserve.server.app import build_app
from pyserve.server.connections import ConnectionLimits
from pyserve.server.runner import ServerThread

MODEL = "builtin:tiny"
LONG = {"model": MODEL, "prompt": "tell me a story", "max_tokens": 3000, "ignore_eos": True,
        "stream": True}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stalled_stream(host: str, port: int) -> socket.socket:
    """A streaming request whose client reads the response headers and then stops reading."""
    import json

    body = json.dumps(LONG).encode()
    s = socket.create_connection((host, port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    s.settimeout(30)
    assert s.recv(64).startswith(b"HTTP/1.1 200")
    return s


def test_drain_is_bounded_and_frees_kv():
    engine = tiny_async_engine(max_model_len=4096)
    app = build_app(engine, shutdown_timeout_s=1.0)
    srv = ServerThread(app, limits=ConnectionLimits(shutdown_timeout_s=1.0)).start()
    s = stalled_stream(srv.host, srv.port)
    time.sleep(0.3)
    t0 = time.monotonic()
    srv.stop(timeout_s=30)
    took = time.monotonic() - t0
    s.close()
    assert took < 6.0, took
    assert not engine.is_running
    st = engine.engine.stats()
    assert st["gpu_blocks_used"] == 0 and not engine.engine.has_unfinished()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_then_second_sigterm_exits_at_once():
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pyserve.server.cli", "serve", MODEL, "--port", str(port),
           "--shutdown-timeout", "60", "--max-model-len", "4096", "--cpu-threads", "1",
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        s = stalled_stream("127.0.0.1", port)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert proc.poll() is None  # draining: the stream still runs (budget 60 s)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - t0 < 10
        s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
