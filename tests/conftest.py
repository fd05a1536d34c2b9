import numpy as np
import pytest

from pyserve import _core


def make_scheduler(eos=(0,), **overrides) -> _core.Scheduler:
    """A small scheduler for scenario tests; every field can be overridden."""
    cfg = _core.SchedulerConfig()
    defaults = dict(
        num_gpu_blocks=64,
        num_cpu_blocks=0,
        block_size=4,
        max_num_batched_tokens=64,
        max_num_seqs=16,
        max_model_len=128,
        enable_prefix_caching=True,
    )
    defaults.update(overrides)
    for k, v in defaults.items():
        setattr(cfg, k, v)
    return _core.Scheduler(cfg, list(eos))


def step(s: _core.Scheduler, token: int = 7, seconds: float = 0.01):
    """One schedule()+update() with a constant fake token; checks invariants. Returns (plan
    snapshot, finished)."""
    p = s.schedule()
    snap = {
        name: np.array(getattr(p, name))
        for name in (
            "seq_ids",
            "input_ids",
            "positions",
            "slot_mapping",
            "qo_indptr",
            "kv_indptr",
            "kv_indices",
            "kv_last_page_len",
            "seq_lens",
            "sample_seq_idx",
            "sample_token_idx",
            "swap_out",
            "swap_in",
            "copy",
            "preempted",
        )
    }
    snap["num_decodes"] = p.num_decodes
    snap["num_prefills"] = p.num_prefills
    rep = s.update(np.full(p.num_samples, token, dtype=np.int32), seconds)
    fin = [(f.seq_id, f.reason) for f in rep.finished]
    s.check_invariants()
    return snap, fin


def run_to_end(s: _core.Scheduler, token: int = 7, max_steps: int = 10_000):
    finished = {}
    for _ in range(max_steps):
        if not s.has_unfinished():
            break
        _, fin = step(s, token)
        for sid, reason in fin:
            finished[s.request_info(sid)["request_id"]] = (reason, s.request_info(sid))
    assert not s.has_unfinished()
    st = s.stats()
    assert st["gpu_blocks_used"] == 0 and st["cpu_blocks_free"] == st["cpu_blocks_total"]
    return finished


@pytest.fixture
def sched():
    return make_scheduler()


@pytest.fixture(scope="module")
def one_torch_thread():
    """NOTE: on a small shared CPU one intra-op thread is several times faster per step."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def server(engine):
    """The HTTP server on the module's ``engine`` fixture (a module may define its own)."""
    from pyserve.server.app import build_app
    from pyserve.server.runner import ServerThread

    with ServerThread(build_app(engine)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    """The official openai client on the module's ``server``."""
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60, max_retries=0)


def tiny_async_engine(**engine_options):
    """An AsyncEngine on builtin:tiny with a 16 MiB KV cache (server tests)."""
    from pyserve.config import EngineConfig
    from pyserve.engine.async_engine import AsyncEngine

    opts = {"kv_cache_bytes": 16 << 20, **engine_options}
    return AsyncEngine.from_config(EngineConfig.from_kwargs("builtin:tiny", **opts))


def server_metrics(url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """A server's /metrics as sample name -> value (histogram buckets dropped; the last labelled
    sample of a name wins — one model per test server)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=timeout_s).text
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if "le" not in s.labels}  # fmt: skip


def wait_server_idle(url: str, timeout_s: float, poll_s: float = 0.05) -> dict[str, float]:
    """Polls /metrics until nothing runs or waits and no KV block is in use; returns the metrics
    (fails the test after timeout_s)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        m = server_metrics(url)
        busy = m["pyserve:num_requests_running"] + m["pyserve:num_requests_waiting"]
        if busy == 0 and m["pyserve:kv_cache_blocks_used"] == 0:
            return m
        assert time.monotonic() < deadline, f"requests or KV blocks still held: {m}"
        time.sleep(poll_s)
