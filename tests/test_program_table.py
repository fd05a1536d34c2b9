"""The program table: ids freed at end (retired entries), a cap, cheap TTL collection, scale."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from conftest import make_scheduler, run_to_end, step

from pyserve import _core


def test_end_with_running_calls_frees_the_id():
    s = make_scheduler(policy="plas")
    s.start_program("p")
    s.add_request("old", np.arange(1, 9, dtype=np.int32), max_tokens=30, program_id="p")
    step(s)
    s.end_program("p")
    assert "p" not in s.programs and s.programs.num_retired == 1
    s.add_request("new", np.arange(1, 9, dtype=np.int32), max_tokens=2, program_id="p")
    fresh = s.program_info("p")
    assert fresh["service"] == 0.0 and fresh["active_calls"] == 1  # never the old state
    run_to_end(s)
    s.programs.check()
    assert s.programs.num_retired == 0  # the old entry went with its last call
    assert s.program_info("p")["active_calls"] == 0


def test_untagged_calls_never_touch_the_table():
    s = make_scheduler()
    s.start_program("\x01call:u1")  # any string the core gets is just an id
    s.add_request("u1", np.arange(1, 5, dtype=np.int32), max_tokens=2)
    run_to_end(s)
    assert s.program_info("\x01call:u1")["active_calls"] == 0
    assert len(s.programs) == 1


def test_cap_and_full_error():
    t = _core.ProgramTable(600.0, 3)
    for i in range(3):
        t.start(f"p{i}")
    with pytest.raises(_core.ProgramTableFull, match="full"):
        t.start("p3")
    assert issubclass(_core.ProgramTableFull, RuntimeError)
    t.end("p0")
    t.start("p3")
    t.max_programs = 0  # no cap
    for i in range(4, 10):
        t.start(f"p{i}")
    assert len(t) == 9
    with pytest.raises(ValueError, match="already started"):
        t.start("p5")


def test_ttl_collects_only_expired():
    t = _core.ProgramTable(10.0)
    for i in range(100):
        t.start(f"old{i}", now=0.0)
    for i in range(100):
        t.start(f"new{i}", now=5.0)
    _core.program_call_arrived(t, "busy", 0.0)  # an active call: never collected
    assert t.collect(9.9) == 0
    assert t.collect(10.0) == 100
    assert not any(f"old{i}" in t for i in range(100)) and all(f"new{i}" in t for i in range(100))
    assert t.collect(100.0) == 100 and "busy" in t
    _core.program_call_finished(t, "busy", 1.0, 0.0, 100.0)
    assert t.collect(109.0) == 0 and t.collect(110.0) == 1
    t.check()


def test_start_end_stay_cheap_at_scale():
    t = _core.ProgramTable(600.0, 0)
    n = 200_000
    t0 = time.perf_counter()
    for i in range(n):
        t.start(f"prog-{i}", float(i))
    per_op_full = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    assert t.collect(100.0 + 600.0) == 101  # O(k log n): only the expired are touched
    for i in range(101, 1101):
        t.end(f"prog-{i}")
    assert len(t) == n - 1101
    t.check()
    # A linear-time start would take ~n times longer at the end than at the start; this only
    # guards against that (generous for a loaded CI machine).
    assert per_op_full < 50e-6, per_op_full


def test_async_engine_programs_track_start_end_and_ttl(one_torch_thread):
    from pyserve.config import EngineConfig
    from pyserve.engine.async_engine import AsyncEngine
    from pyserve.engine.engine import Engine

    table = _core.ProgramTable(600.0, 0)  # NOTE: the engine's own table, shared by reference
    config = EngineConfig.from_kwargs("builtin:tiny", kv_cache_bytes=16 << 20)
    engine = AsyncEngine(Engine(config, programs=table))

    async def scenario():
        t0 = time.perf_counter()
        ids = await asyncio.gather(*(engine.start_program(f"a{i}") for i in range(5_000)))
        started_s = time.perf_counter() - t0
        assert len(ids) == 5_000 and engine.has_program("a7")
        await engine.end_program("a7")
        assert not engine.has_program("a7")
        assert (await engine.stats())["num_programs"] <= 4_999
        await engine._call(lambda: setattr(table, "ttl", 0.5))  # on the loop thread
        await asyncio.sleep(2.0)  # idle: the loop collects expired programs anyway
        assert not engine.has_program("a8") and (await engine.stats())["num_programs"] == 0
        await engine.shutdown()
        return started_s

    started_s = asyncio.run(scenario())
    assert started_s < 10.0  # was quadratic: 10^4 starts took 46 s through the server
