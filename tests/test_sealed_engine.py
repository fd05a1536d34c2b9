"""The sealed engine: prompt forms of LLM.generate, StepReport contents, stop strings finishing
through the core with reason `stop`, and no engine internals reached from outside."""

import re
from pathlib import Path

import numpy as np
import pytest

from pyserve import LLM, SamplingParams
from pyserve.engine.messages import Abort, AddCall, CallSpec, ProgramOp
from pyserve.engine.output_processor import OutputProcessor

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llm():
    return LLM("builtin:tiny", kv_cache_bytes=16 << 20)


def test_prompt_forms_agree(llm):
    ids = llm.tokenizer.encode("Hello world")
    forms = ["Hello world", {"prompt": "Hello world"}, {"prompt_token_ids": ids}]
    outs = llm.generate(forms, GREEDY, use_tqdm=False)
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == 1
    assert outs[2].prompt is None and outs[2].prompt_token_ids == ids
    assert outs[1].prompt == "Hello world" and outs[1].prompt_token_ids == ids
    one = llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)
    assert len(one) == 1 and one[0].outputs[0].token_ids == outs[0].outputs[0].token_ids
    o = outs[0]
    assert o.finished and o.request_id.startswith("gen-")
    c = o.outputs[0]
    assert c.index == 0 and c.finish_reason == "length" and len(c.token_ids) == 6
    assert c.text == llm.tokenizer.decode(c.token_ids) and c.logprobs is None


@pytest.mark.parametrize("bad", [
    123, [1, 2, 3], [[1, 2]], {"prompt": 3}, {"prompt_token_ids": "abc"}, {"foo": "x"},
    {"prompt": "a", "prompt_token_ids": [1]}, [b"bytes"], {"prompt_token_ids": [1.5]}, None,
])  # fmt: skip
def test_bad_prompt_forms_are_type_errors(llm, bad):
    with pytest.raises(TypeError, match="prompt_token_ids"):
        llm.generate(bad, GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished()


def test_step_report_contents(llm):
    eng = llm.engine
    p = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True, logprobs=2)
    eng.handle(AddCall(CallSpec("r-a", "one two three", p)))
    eng.handle(AddCall(CallSpec("r-b", [5, 6, 7, 8], p)))
    rep = eng.step()
    assert sorted(rep.first_scheduled) == ["r-a", "r-b"] and rep.num_prefills == 2
    assert sorted(rep.request_ids) == ["r-a", "r-b"] and rep.token_ids.dtype == np.int32
    assert rep.logprobs.shape == (2,) and rep.topn_ids.shape == (2, 2)
    assert 0 < rep.kv_free_blocks < rep.kv_total_blocks and rep.end_time > rep.start_time
    assert rep.finished == [] and rep.timings["execute_s"] > 0
    reports = [rep]
    while eng.has_unfinished():
        reports.append(eng.step())
    assert [r.num_new_tokens for r in reports] == [2, 2, 2]
    done = {f.request_id: f for f in reports[-1].finished}
    assert set(done) == {"r-a", "r-b"}
    f = done["r-b"]
    assert f.reason == "length" and f.num_output_tokens == 3 and f.num_prompt_tokens == 4
    assert f.service > 0 and f.wait >= 0 and f.program_service == pytest.approx(f.service)
    assert reports[-1].kv_free_blocks == reports[-1].kv_total_blocks
    eng.check_invariants()


def test_stop_string_finishes_in_the_core_with_reason_stop(llm):
    free = llm.generate("Hello", SamplingParams(max_tokens=30, temperature=0, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0]  # fmt: skip
    stop = next(
        free.text[i : i + 2] for i in range(4, len(free.text)) if free.text[i : i + 2].strip()
    )
    before = llm.engine.stats()
    out = llm.generate("Hello", SamplingParams(max_tokens=30, temperature=0, stop=[stop],
                                               ignore_eos=True), use_tqdm=False)[0]  # fmt: skip
    after = llm.engine.stats()
    assert out.outputs[0].finish_reason == "stop" and stop not in out.outputs[0].text
    assert after["num_finished_stop"] == before["num_finished_stop"] + 1
    assert after["num_finished_abort"] == before["num_finished_abort"]
    assert len(out.outputs[0].token_ids) < 30
    llm.engine.check_invariants()


def test_abort_and_program_messages(llm):
    eng = llm.engine
    pid = eng.handle(ProgramOp("start"))
    assert eng.has_program(pid)
    eng.handle(AddCall(CallSpec("x", "hi", GREEDY, program_id=pid)))
    done = eng.handle(Abort("x"))
    assert done.reason == "abort" and done.request_id == "x"
    assert eng.handle(Abort("x")) is None  # no longer live
    eng.handle(ProgramOp("end", pid))
    assert not eng.has_program(pid)
    with pytest.raises(ValueError, match="n == 1"):
        eng.handle(AddCall(CallSpec("y", "hi", SamplingParams(n=2))))
    with pytest.raises(TypeError):
        eng.handle("not a message")
    assert not eng.has_unfinished()


def test_untagged_calls_stay_out_of_the_program_table(llm):
    eng = llm.engine
    n = eng.stats()["num_programs"]
    eng.handle(AddCall(CallSpec("u", "hi", GREEDY)))
    assert eng.stats()["num_programs"] == n
    while eng.has_unfinished():
        eng.step()


def test_streaming_outputs_are_deltas(llm):
    eng = llm.engine
    proc = OutputProcessor(eng.tokenizer, stream=True)
    proc.add(eng.handle(AddCall(CallSpec("s", "Once upon", GREEDY))))
    outs = []
    while eng.has_unfinished():
        outs += proc.process(eng.step())[0]
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    assert [t for o in outs for t in o.outputs[0].delta_token_ids] == outs[-1].outputs[0].token_ids
    assert all(o.outputs[0].token_ids == o.outputs[0].delta_token_ids for o in outs[:-1])
    assert "".join(o.outputs[0].delta_text for o in outs) == outs[-1].outputs[0].text
    assert all(outs[-1].outputs[0].text.startswith(o.outputs[0].text) for o in outs)


def test_no_core_access_outside_the_engine():
    """Only pyserve/engine/engine.py holds the C++ scheduler of an Engine."""
    pattern = re.compile(r"\.engine\.(core|_core|states|_slots|_rid)\b|engine\.core\b")
    offenders = []
    for path in [*ROOT.glob("pyserve/**/*.py"), *ROOT.glob("benchmarks/*.py"),
                 *ROOT.glob("tests/*.py")]:  # fmt: skip
        if path.name in ("engine.py", "test_sealed_engine.py") and path.parent.name in (
                "engine", "tests"):  # fmt: skip
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []
