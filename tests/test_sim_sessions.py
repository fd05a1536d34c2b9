"""kv-cache-tester session import: structure, hash-block prompts, Poisson arrivals, bad files."""

from pathlib import Path

import numpy as np
import pytest

from pyserve.sim.sessions import import_sessions, load_session_file
from pyserve.sim.trace import ProgramTokens, parse_trace, program_to_dict, write_trace

DATA = Path(__file__).parent / "data" / "kv_cache_tester"


def test_import_excerpt_structure_and_round_trip(tmp_path):
    programs = import_sessions(DATA, num_sessions=4, rate=0.5, seed=1)
    assert len(programs) == 4 and len({p.program_id for p in programs}) == 4
    arrivals = [p.arrival_s for p in programs]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    sub = next(p for p in programs if p.program_id.startswith("trace_0010"))
    threads = [c for c in sub.calls if c.call_id.startswith("a")]
    assert len(threads) == 3
    assert threads[0].parents and threads[0].parents[0].startswith("c")  # forked off the session
    joined = [c for c in sub.calls if threads[-1].call_id in c.parents]
    assert len(joined) == 1 and len(joined[0].parents) == 2  # the session call after it joins
    for c in sub.calls:
        assert c.hash_block_tokens == 64 and len(c.hash_ids) * 64 <= c.prompt_tokens
    write_trace(programs, tmp_path / "t.jsonl")
    again = parse_trace((tmp_path / "t.jsonl").read_text().splitlines())
    assert [program_to_dict(p) for p in again] == [program_to_dict(p) for p in programs]


def test_equal_hash_ids_give_equal_token_blocks():
    p = import_sessions(DATA, num_sessions=1, rate=1.0, seed=0)[0]
    toks = ProgramTokens(p)
    a, b = p.calls[0], p.calls[1]
    shared = 0
    while shared < min(len(a.hash_ids), len(b.hash_ids)) and a.hash_ids[shared] == b.hash_ids[shared]:
        shared += 1
    assert shared > 0
    ia, ib = toks.prompt_ids(a.call_id), toks.prompt_ids(b.call_id)
    assert len(ia) == a.prompt_tokens and len(ib) == b.prompt_tokens
    n = shared * 64
    assert np.array_equal(ia[:n], ib[:n])
    if len(a.hash_ids) > shared and len(b.hash_ids) > shared:
        assert not np.array_equal(ia[n : n + 64], ib[n : n + 64])
    # another session of the same file gets its own hash namespace: no sharing across sessions
    q = import_sessions(DATA, num_sessions=3, rate=1.0, seed=0)
    same = [x for x in q if x.program_id.split("#")[0] == p.program_id.split("#")[0]]
    assert all(not set(x.calls[0].hash_ids) & set(q[0].calls[0].hash_ids) for x in same[1:])


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"requests": [\n{"t": 0, "in": 5, "out": 1}\n{"t": 1}]}', r"line 3: bad JSON"),
        ('{"requests": [\n{"t": 0, "in": 5, "out": 1},\n{"t": 1, "out": 2}]}',
         r"line 3: requests\[1\]: missing field 'in'"),
        ('{"requests": [\n{"t": 0, "in": 5, "out": -1}]}', r"line 2: .*'out' must be >= 0"),
        ('{"requests": [\n{"t": 0, "in": 5, "out": 1, "hash_ids": [1, "x"]}]}',
         r"line 2: .*hash_ids must be a list of integers"),
        ('{"requests": [\n{"t": 0, "type": "subagent", "duration_ms": 5}]}',
         r"line 2: .*subagent needs a 'requests' list"),
        ('{"block_size": 0, "requests": []}', r"line 1: block_size"),
        ('[1, 2]', r"line 1: a trace must be an object"),
    ],
)  # fmt: skip
def test_bad_files_name_the_line(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_session_file(_write(tmp_path, text))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="rate"):
        import_sessions(DATA, 2, rate=0.0)
    with pytest.raises(ValueError, match="no kv-cache-tester traces"):
        import_sessions(tmp_path, 2, rate=1.0)


def test_trace_rejects_bad_hash_fields():
    base = '{"program_id":"p","arrival_s":0,"calls":[{"call_id":"a","prompt_tokens":4,'
    with pytest.raises(ValueError, match="line 1: .*hash_ids needs hash_block_tokens"):
        parse_trace([base + '"output_tokens":1,"hash_ids":[1]}]}'])
    with pytest.raises(ValueError, match="line 1: .*hash_ids must be a list of integers"):
        parse_trace([base + '"output_tokens":1,"hash_ids":[-1],"hash_block_tokens":4}]}'])


def test_sessions_end_before_a_too_long_request():
    full = import_sessions(DATA, num_sessions=2, rate=1.0, seed=3)
    cut = import_sessions(DATA, num_sessions=2, rate=1.0, seed=3, max_prompt_tokens=1500)
    for a, b in zip(full, cut, strict=True):
        assert b.calls and all(c.prompt_tokens <= 1500 for c in b.calls)
        assert [c.call_id for c in b.calls] == [c.call_id for c in a.calls[: len(b.calls)]]
    with pytest.raises(ValueError, match="within 10 tokens"):
        import_sessions(DATA, num_sessions=1, rate=1.0, max_prompt_tokens=10)


def test_cli_host_tier_and_retention_options(tmp_path):
    import argparse

    from pyserve.server.cli import engine_kwargs, register
    from pyserve.sim.bench_cli import register_run, setup_from_args
    from pyserve.sim.executor import SimSetup

    sub = argparse.ArgumentParser().add_subparsers()
    register_run(sub)
    args = sub.choices["run"].parse_args(
        ["--trace", "t.jsonl", "--policy", "plas", "--cpu-cache-gib", "2",
         "--kv-retention", "program"]
    )  # fmt: skip
    setup = setup_from_args(args)
    assert setup.swap_space_gib == 2.0 and setup.kv_retention == "program"
    with pytest.raises(SystemExit):
        sub.choices["run"].parse_args(["--trace", "t", "--policy", "fcfs", "--kv-retention", "mru"])
    # vllm-opt keeps vLLM's defaults whatever the host-tier options say
    core, base, chunked = SimSetup(swap_space_gib=64.0, kv_retention="program").resolve("vllm-opt")
    assert (core, base.swap_space_gib, base.kv_retention, chunked) == ("fcfs", 0.0, "lru", True)
    sub2 = argparse.ArgumentParser().add_subparsers()
    register(sub2)
    kw = engine_kwargs(sub2.choices["serve"].parse_args(
        ["--cpu-cache-gib", "0.5", "--kv-retention", "ttl"]))  # fmt: skip
    assert kw["swap_space_bytes"] == 2**29 and kw["kv_retention"] == "ttl"
