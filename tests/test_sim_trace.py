"""Program traces: validation, deterministic tokens, workload generators."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pyserve.sim import cli
from pyserve.sim.sharegpt import calls_from_text, conversation_calls
from pyserve.sim.trace import (
    Call,
    Program,
    ProgramTokens,
    load_trace,
    parse_trace,
    prompt_len,
    write_trace,
)
from pyserve.sim.workloads import azure_trace_path, generate, trace_stats

GOOD = {
    "program_id": "p0",
    "arrival_s": 0.5,
    "calls": [
        {"call_id": "a", "parents": [], "prompt_tokens": 10, "output_tokens": 4},
        {
            "call_id": "b",
            "parents": ["a"],
            "prompt_tokens": 3,
            "output_tokens": 2,
            "reuse_parent_context": True,
            "tool_s": 0.25,
        },
    ],
}


def _with_call(**changes):
    prog = json.loads(json.dumps(GOOD))
    prog["calls"][1].update(changes)
    return json.dumps(prog)


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"program_id": "p1", "arrival_s": 1,', "bad JSON"),
        ('{"program_id": "p1", "calls": []}', "missing field 'arrival_s'"),
        ('{"program_id": "p1", "arrival_s": "1", "calls": []}', "'arrival_s' must be float"),
        ('{"program_id": "p1", "arrival_s": -1, "calls": [{}]}', "arrival_s must be finite"),
        ('{"program_id": "p1", "arrival_s": 1, "calls": []}', "calls must not be empty"),
        (_with_call(prompt_tokens="3"), "'prompt_tokens' must be int"),
        (_with_call(output_tokens=True), "'output_tokens' must be int"),
        (_with_call(output_tokens=-2), "output_tokens must be >= 1"),
        (_with_call(tool_s=-0.5), "tool_s must be finite and >= 0"),
        (_with_call(parents=["zz"]), "unknown parent 'zz'"),
        (_with_call(parents=["b"]), "cycle"),
        (_with_call(call_id="a", reuse_parent_context=False, parents=[]), "duplicate call_id 'a'"),
        (_with_call(parents=[]), "reuse_parent_context needs at least one parent"),
        (_with_call(promt_tokens=3), "unknown field 'promt_tokens'"),
        (_with_call(shared_prefix_id="sys"), "shared_prefix_tokens must be in"),
        (json.dumps(GOOD), "duplicate program_id 'p0'"),
    ],
)
def test_validation_names_line_and_reason(line, reason):
    with pytest.raises(ValueError, match=f"line 3: .*{reason}"):
        parse_trace([json.dumps(GOOD), "", line])


def test_cycle_through_two_calls():
    prog = json.loads(json.dumps(GOOD))
    prog["calls"][0]["parents"] = ["b"]
    with pytest.raises(ValueError, match=r"line 1: .*cycle among calls \['a', 'b'\]"):
        parse_trace([json.dumps(prog)])


def test_write_load_round_trip(tmp_path):
    programs = generate("mixed", 9, 2.0, seed=5, sharegpt_source="synthetic")
    path = tmp_path / "t.jsonl"
    write_trace(programs, path)
    assert load_trace(path) == programs


def test_topo_order_puts_parents_first():
    prog = parse_trace([json.dumps({**GOOD, "calls": GOOD["calls"][::-1]})])[0]
    assert [c.call_id for c in prog.topo_order()] == ["a", "b"]
    for p in generate("lats", 2, 1.0, seed=1):
        seen = set()
        for c in p.topo_order():
            assert set(c.parents) <= seen
            seen.add(c.call_id)


def test_tokens_are_deterministic_across_processes():
    prog = parse_trace([json.dumps(GOOD)])[0]
    ids = ProgramTokens(prog).prompt_ids("b")
    code = (
        "import json,sys; from pyserve.sim.trace import parse_trace, ProgramTokens;"
        "p = parse_trace([sys.argv[1]])[0]; print(ProgramTokens(p).prompt_ids('b').tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(GOOD)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == ids.tolist()
    other = parse_trace([json.dumps({**GOOD, "program_id": "p9"})])[0]
    assert not np.array_equal(ProgramTokens(other).prompt_ids("b"), ids)


def test_reuse_parent_context_prefix_property():
    for p in generate("lats", 2, 1.0, seed=2) + generate("sharegpt", 3, 1.0, 2, "synthetic"):
        tokens = ProgramTokens(p, vocab_size=1000)
        for c in p.calls:
            ids = tokens.prompt_ids(c.call_id)
            assert ids.dtype == np.int32 and len(ids) == prompt_len(p, c.call_id)
            assert ids.min() >= 16 and ids.max() < 1000
            if c.reuse_parent_context:
                parent = tokens.full_ids(c.parents[0])
                assert np.array_equal(ids[: len(parent)], parent)
                assert len(ids) == len(parent) + c.prompt_tokens
                out = tokens.output_ids(c.parents[0])
                assert np.array_equal(parent[-len(out) :], out)


def test_shared_system_prompt_gives_identical_prefixes():
    roots = [(p, p.calls[0]) for p in generate("bfcl", 40, 1.0, seed=3)]
    by_id = {}
    for p, root in roots:
        ids = ProgramTokens(p).prompt_ids(root.call_id)
        by_id.setdefault(root.shared_prefix_id, []).append((ids, root.shared_prefix_tokens))
    assert len(by_id) > 1
    firsts = []
    for group in by_id.values():
        ids0, n = group[0]
        assert all(np.array_equal(ids[:n], ids0[:n]) for ids, _ in group)
        assert not all(np.array_equal(ids[n:], ids0[n:]) for ids, _ in group[1:])
        firsts.append(ids0[:1000])
    assert not np.array_equal(firsts[0], firsts[1])
    # a shorter shared prefix with the same id is a prefix of the longer one
    short = Program("x", 0.0, (Call("c", 20, 1, shared_prefix_id="sys", shared_prefix_tokens=10),))
    long = Program("y", 0.0, (Call("c", 60, 1, shared_prefix_id="sys", shared_prefix_tokens=50),))
    short_ids, long_ids = ProgramTokens(short).prompt_ids("c"), ProgramTokens(long).prompt_ids("c")
    assert np.array_equal(short_ids[:10], long_ids[:10])
    assert not np.array_equal(short_ids[10:20], long_ids[10:20])


def _close(value, target, rel):
    return abs(value - target) <= rel * target


def test_generator_statistics_match_the_paper():
    s = trace_stats(generate("sharegpt", 600, 1.0, seed=11, sharegpt_source="synthetic"))
    assert _close(s["calls_per_program_mean"], 6.66, 0.1) and s["calls_per_program_max"] <= 80
    assert _close(s["prefill_tokens_mean"], 256, 0.1) and _close(s["decode_tokens_mean"], 277, 0.1)
    assert _close(s["arrival_rate"], 1.0, 0.15)
    b = trace_stats(generate("bfcl", 600, 4.0, seed=12))
    assert _close(b["calls_per_program_mean"], 10.75, 0.1) and b["calls_per_program_max"] <= 70
    assert _close(b["prefill_tokens_mean"], 735, 0.1) and _close(b["decode_tokens_mean"], 34, 0.1)
    assert b["tool_s_mean"] > 0.3
    lats = generate("lats", 80, 1.0, seed=13)
    s = trace_stats(lats)
    assert _close(s["calls_per_program_mean"], 159.7, 0.1)
    assert _close(s["prefill_tokens_mean"], 467, 0.1) and _close(s["decode_tokens_mean"], 73, 0.1)
    joins = [c for p in lats for c in p.calls if len(c.parents) == 5]
    assert joins and all(c.call_id.startswith("j") for c in joins)


def test_mixed_is_equal_thirds_and_generators_are_deterministic():
    mixed = generate("mixed", 30, 2.0, seed=7, sharegpt_source="synthetic")
    kinds = [p.program_id.split("-")[0] for p in mixed]
    assert {k: kinds.count(k) for k in set(kinds)} == {"sharegpt": 10, "bfcl": 10, "lats": 10}
    assert mixed == generate("mixed", 30, 2.0, seed=7, sharegpt_source="synthetic")
    assert mixed != generate("mixed", 30, 2.0, seed=8, sharegpt_source="synthetic")
    arrivals = [p.arrival_s for p in mixed]
    assert arrivals == sorted(arrivals)
    with pytest.raises(ValueError, match="unknown workload 'chat'"):
        generate("chat", 3, 1.0, 0)
    with pytest.raises(ValueError, match="needs an arrival rate"):
        generate("bfcl", 3, None, 0)


def test_azure_replays_trace_sizes_and_times():
    try:
        path = azure_trace_path()
    except ValueError:
        pytest.skip("shared/data/azure_llm_2023_conv.csv is not next to the repo")
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    programs = generate("azure", 50, None, seed=1)
    start = int(programs[0].program_id.split("-")[1])
    for i, p in enumerate(programs):
        assert len(p.calls) == 1
        assert p.calls[0].prompt_tokens == int(rows[start + i][1])
        assert p.calls[0].output_tokens == int(rows[start + i][2])
    assert programs[0].arrival_s == 0.0
    rescaled = generate("azure", 50, 5.0, seed=1)
    assert trace_stats(rescaled)["arrival_rate"] == pytest.approx(5.0, rel=1e-3)
    assert generate("azure", 50, None, seed=1) == programs


def test_sharegpt_parser_keeps_complete_conversations_of_truncated_json():
    convs = [
        {
            "id": "a",
            "conversations": [
                {"from": "human", "value": "x" * 40},
                {"from": "gpt", "value": "y" * 9},
            ],
        },
        {
            "id": "b",
            "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}],
        },
        {
            "id": "c",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}],
        },
    ]
    text = json.dumps(convs, indent=2)
    cut = text[: text.index('"id": "c"') + 20]  # cut inside the last conversation
    assert calls_from_text(cut) == [([10], [3])]  # "b" has no call; "c" is incomplete
    assert len(calls_from_text(text)) == 2
    conv = {
        "conversations": [
            {"from": "system", "value": "abcd"},
            {"from": "human", "value": "abcdefgh"},
            {"from": "gpt", "value": "abcd"},
            {"from": "gpt", "value": "abcd"},
            {"from": "human", "value": "trailing"},
        ]
    }
    assert conversation_calls(conv) == ([3], [2])


def test_gen_cli_writes_a_valid_trace(tmp_path, capsys):
    out = tmp_path / "lats.jsonl"
    argv = ["gen", "--workload", "lats", "--programs", "3", "--rate", "0.5", "--seed", "4"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert load_trace(out) == generate("lats", 3, 0.5, 4)
    assert "calls_per_program_mean" in capsys.readouterr().out
    assert cli.main(["gen", "--workload", "bfcl", "--programs", "0", "--out", str(out)]) == 2
