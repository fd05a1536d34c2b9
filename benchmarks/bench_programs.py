"""Program table cost: microseconds per program start and end with 10^3 .. 10^6 live programs.

Table: the C++ ``ProgramTable`` through its bindings (what ``POST/DELETE /v1/programs`` reach
in the engine). For each size N it fills a table with N live programs, then times ``--ops``
starts of new ids followed by their ends, and one TTL collection that expires ``--ops`` of them.
Engine (``--engine``): the same through ``AsyncEngine.start_program / end_program`` (the loop
thread round trip included), for sizes up to ``--engine-max``.
Prints one JSON line per case; flat numbers across N mean O(1) / O(log n) operations.

    python benchmarks/bench_programs.py [--sizes 1000,10000,100000,1000000] [--ops 10000]
                                        [--engine] [--engine-max 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from pyserve import _core


def bench_table(n: int, ops: int) -> dict:
    t = _core.ProgramTable(600.0, 0)
    for i in range(n):
        t.start(f"live-{i}", 1000.0)  # these never expire in the collection below
    ids = [f"new-{i}" for i in range(ops)]
    t0 = time.perf_counter()
    for pid in ids:
        t.start(pid, 0.0)
    t1 = time.perf_counter()
    t.collect(600.0)  # expires exactly the `ops` new ones
    t2 = time.perf_counter()
    for pid in ids:
        t.start(pid, 0.0)
    t3 = time.perf_counter()
    for pid in ids:
        t.end(pid)
    t4 = time.perf_counter()
    assert len(t) == n
    return {"case": "table", "live_programs": n, "ops": ops,
            "start_us": round((t1 - t0) / ops * 1e6, 3),
            "end_us": round((t4 - t3) / ops * 1e6, 3),
            "collect_us_per_expired": round((t2 - t1) / ops * 1e6, 3)}  # fmt: skip


def bench_engine(n: int, ops: int) -> dict:
    from pyserve.config import EngineConfig
    from pyserve.engine.async_engine import AsyncEngine

    config = EngineConfig.from_kwargs("builtin:tiny", max_model_len=512, kv_cache_bytes=4 << 20,
                                      policy_options={"max_programs": 0})  # fmt: skip
    engine = AsyncEngine.from_config(config)

    async def run() -> tuple[float, float]:
        for lo in range(0, n, 10_000):
            await asyncio.gather(*(engine.start_program(f"live-{i}")
                                   for i in range(lo, min(n, lo + 10_000))))  # fmt: skip
        ids = [f"new-{i}" for i in range(ops)]
        t0 = time.perf_counter()
        for pid in ids:  # one at a time: the latency a client sees
            await engine.start_program(pid)
        t1 = time.perf_counter()
        for pid in ids:
            await engine.end_program(pid)
        t2 = time.perf_counter()
        assert engine.has_program("live-0") and not engine.has_program(ids[-1])
        await engine.shutdown()
        return t1 - t0, t2 - t1

    start_s, end_s = asyncio.run(run())
    return {"case": "async_engine", "live_programs": n, "ops": ops,
            "start_us": round(start_s / ops * 1e6, 1),
            "end_us": round(end_s / ops * 1e6, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--engine", action="store_true", help="also time the AsyncEngine path")
    ap.add_argument("--engine-max", type=int, default=100_000)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        print(json.dumps(bench_table(n, args.ops)), flush=True)
    if args.engine:
        for n in sizes:
            if n <= args.engine_max:
                print(json.dumps(bench_engine(n, min(args.ops, 2000))), flush=True)


if __name__ == "__main__":
    main()
