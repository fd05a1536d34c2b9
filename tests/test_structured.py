"""Structured outputs offline: constraints validate, outputs of the random-weight builtin:tiny
match their JSON schema / regex / choice on many seeds, tool-call grammars yield parseable calls."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

from pyserve import LLM, SamplingParams, StructuredOutputsParams  # noqa: E402
from pyserve.engine.messages import Abort, AddCall, CallSpec  # noqa: E402
from pyserve.model.sampler import Sampler, SamplingBatch  # noqa: E402
from pyserve.structured import StructuredOutputError, tool_call_grammar  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "kind": {"enum": ["cat", "dog", "fish"]},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        "score": {"anyOf": [{"type": "integer", "minimum": -9, "maximum": 9}, {"type": "null"}]},
    },
    "required": ["name", "age", "kind", "ok", "tags", "score"],
    "additionalProperties": False,
}
SEEDS = range(48)


@pytest.fixture(scope="module")
def llm():
    return LLM("builtin:tiny", kv_cache_bytes=16 << 20)


def _run(llm, so, seeds=SEEDS, max_tokens=96, **kw):
    params = [SamplingParams(max_tokens=max_tokens, seed=s, structured_outputs=so, **kw)
              for s in seeds]  # fmt: skip
    return llm.generate(["Hello there"] * len(params), params, use_tqdm=False)


def _check_stopped(outs, at_least: float = 0.9):
    stopped = [o for o in outs if o.finish_reason == "stop"]
    assert all(o.finish_reason in ("stop", "length") for o in outs)
    assert len(stopped) >= at_least * len(outs), [o.finish_reason for o in outs]
    return stopped


def test_json_schema_outputs_validate_on_many_seeds(llm):
    so = StructuredOutputsParams(json=PERSON)
    outs = _run(llm, so)
    for o in _check_stopped(outs):
        jsonschema.validate(json.loads(o.text), PERSON)
    # NOTE: a `length` output is an honest prefix: it never contains a closing grammar violation.
    assert len({o.text for o in outs}) > len(outs) // 2  # seeds give different outputs


def test_strict_closes_objects_and_json_object(llm):
    open_schema = {"type": "object", "properties": {"k": {"enum": [1, 2]}}, "required": ["k"]}
    so = StructuredOutputsParams(json=open_schema, disable_additional_properties=True)
    for o in _check_stopped(_run(llm, so, range(16))):
        assert json.loads(o.text).keys() == {"k"}
    outs = _run(llm, StructuredOutputsParams(json_object=True), range(16), max_tokens=64)
    for o in outs:
        if o.finish_reason == "stop":
            assert isinstance(json.loads(o.text), dict)
        else:
            assert o.text.startswith("{") and len(o.token_ids) == 64


def test_choice_regex_grammar(llm):
    choices = ["yes", "no", 'maybe "so"']
    outs = _run(llm, StructuredOutputsParams(choice=choices), range(16))
    assert {o.text for o in _check_stopped(outs, 1.0)} <= set(choices)
    outs = _run(llm, StructuredOutputsParams(regex=r"[a-c]{3}-\d{2}"), range(16))
    assert all(re.fullmatch(r"[a-c]{3}-\d{2}", o.text) for o in _check_stopped(outs, 1.0))
    ebnf = 'root ::= "(" num (" + " num)? ")"\nnum ::= [1-9]'
    outs = _run(llm, StructuredOutputsParams(grammar=ebnf), range(16))
    assert all(re.fullmatch(r"\([1-9]( \+ [1-9])?\)", o.text) for o in _check_stopped(outs, 1.0))


def test_greedy_ignore_eos_n_and_mixed_batch(llm):
    """A constrained request ends at its grammar's end even with ignore_eos; n > 1 choices and an
    unconstrained neighbour in the same batch are unaffected."""
    so = StructuredOutputsParams(choice=["alpha", "beta"])
    params = [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, structured_outputs=so),
              SamplingParams(max_tokens=20, temperature=0, ignore_eos=True),
              SamplingParams(n=3, max_tokens=20, seed=1, structured_outputs=so)]  # fmt: skip
    outs = llm.generate(["Hi", "Hi", "Hi"], params, use_tqdm=False)
    first, plain_row, multi = (o.outputs for o in outs)
    assert first[0].text in ("alpha", "beta") and first[0].finish_reason == "stop"
    assert plain_row[0].finish_reason == "length" and len(plain_row[0].token_ids) == 20
    assert len(multi) == 3 and all(c.text in ("alpha", "beta") for c in multi)
    plain = llm.generate(["Hi"], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True),
                         use_tqdm=False)  # fmt: skip
    assert plain[0].outputs[0].token_ids == plain_row[0].token_ids
    assert len(llm.engine.structured) == 0  # matchers are dropped when requests finish


def test_compiled_grammar_cache_is_keyed_by_canonical_schema(llm):
    cache = llm.engine._structured().grammars
    a = {"type": "object", "properties": {"x": {"type": "boolean"}}, "required": ["x"]}
    b = json.loads(json.dumps(a, sort_keys=True))
    b = {k: b[k] for k in reversed(list(b))}  # same schema, other key order
    misses = cache.misses
    _run(llm, StructuredOutputsParams(json=a), range(2), max_tokens=16)
    _run(llm, StructuredOutputsParams(json=json.dumps(b)), range(2), max_tokens=16)
    assert cache.misses == misses + 1


def test_abort_drops_the_matcher(llm):
    eng = llm.engine
    params = SamplingParams(max_tokens=50,
                            structured_outputs=StructuredOutputsParams(json_object=True))
    eng.handle(AddCall(CallSpec("ab-1", "Hi", params)))
    eng.step()
    assert len(eng.structured) == 1
    eng.handle(Abort("ab-1"))
    assert len(eng.structured) == 0 and not eng.has_unfinished()


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({}, "structured_outputs"),
        ({"json": {"type": "object"}, "regex": "a"}, "structured_outputs"),
        ({"json": "{not json"}, "structured_outputs.json"),
        ({"json": {"type": "strin"}}, "structured_outputs.json.type"),
        ({"json": {"type": "object", "properties": {"a": {"not": {}}}}},
         "structured_outputs.json.properties.a.not"),
        ({"json": {"type": "number", "multipleOf": 3}}, "structured_outputs.json.multipleOf"),
        ({"json": {"allOf": [{"type": "integer"}, {"maximum": 3}]}}, "structured_outputs.json.allOf"),
        ({"json": {"type": "string", "format": "zip"}}, "structured_outputs.json.format"),
        ({"json": {"type": "string", "pattern": "a+", "maxLength": 3}},
         "structured_outputs.json.pattern"),
        ({"json": {"$ref": "#/$defs/nope"}}, "structured_outputs.json"),
        ({"regex": "(unclosed"}, "structured_outputs.regex"),
        ({"grammar": "root ::= undefined_rule"}, "structured_outputs.grammar"),
        ({"choice": []}, "structured_outputs.choice"),
        ({"choice": ["a", ""]}, "structured_outputs.choice[1]"),
        ({"json_object": False}, "structured_outputs"),
        ({"structural_tag": {"type": "nope"}}, "structured_outputs.structural_tag"),
    ],
)  # fmt: skip
def test_bad_constraints_name_the_field(kwargs, param):
    with pytest.raises(StructuredOutputError) as info:
        StructuredOutputsParams(**kwargs)
    assert info.value.param == param


def test_sampling_params_checks():
    so = StructuredOutputsParams(choice=["a"])
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=2, structured_outputs=so)
    with pytest.raises(TypeError, match="StructuredOutputsParams"):
        SamplingParams(structured_outputs={"json": {}})
    a = StructuredOutputsParams(json={"type": "array", "maxItems": 2})
    b = StructuredOutputsParams(json='{"maxItems": 2, "type": "array"}')
    assert a == b and hash(SamplingParams(structured_outputs=a)) == hash(
        SamplingParams(structured_outputs=b))  # fmt: skip


def test_sampler_applies_the_bitmask():
    """Only tokens whose bit is set can be drawn; logprobs are those of the masked logits."""
    torch.manual_seed(0)
    logits = torch.randn(3, 70)
    mask = torch.zeros(3, 3, dtype=torch.int32)
    mask[0, 0] = 1 << 5  # row 0: token 5 only
    mask[1, 2] = 0b11  # row 1: tokens 64, 65
    mask[2] = -1  # row 2: unconstrained
    params = [SamplingParams(seed=i, logprobs=1) for i in range(3)]
    batch = SamplingBatch.from_params(params, [[], [], []])
    for _ in range(20):
        batch.token_bitmask = mask
        out = Sampler()(logits, batch)
        assert out.token_ids[0] == 5 and out.token_ids[1] in (64, 65)
        assert out.logprobs[0] == 0.0
    assert torch.isfinite(out.logprobs).all()


def _tools():
    return [
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                             "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "add", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                             "b": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["a", "b"]}}},
        {"type": "function", "function": {"name": "noop"}},
    ]  # fmt: skip


def _parse_calls(text: str, fmt: str) -> list[dict]:
    if fmt == "hermes":
        blocks = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.S)
        assert "\n".join(f"<tool_call>\n{b}\n</tool_call>" for b in blocks) == text
        return [json.loads(b) for b in blocks]
    if fmt == "mistral":
        assert text.startswith("[TOOL_CALLS]")
        return json.loads(text[len("[TOOL_CALLS]") :])
    return [json.loads(part) for part in text.split("; ")]


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json", "mistral"])
def test_tool_call_grammar_yields_valid_calls(llm, fmt):
    tools = _tools()
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {"type": "object"}
               for t in tools}  # fmt: skip
    key = "parameters" if fmt == "llama3_json" else "arguments"
    named = {"type": "function", "function": {"name": "add"}}
    # NOTE: with parallel calls a random model often keeps appending calls until max_tokens,
    # so only the stopped outputs are held to parse; single-call choices must mostly stop.
    for choice, parallel, at_least in (("required", False, 0.75), (named, True, 0.75),
                                       ("required", True, 0.25)):  # fmt: skip
        so = tool_call_grammar(tools, choice, fmt, parallel_tool_calls=parallel)
        outs = _run(llm, so, range(16), max_tokens=128)
        for o in _check_stopped(outs, at_least):
            calls = _parse_calls(o.text, fmt)
            assert calls and (parallel and choice == "required" or len(calls) == 1)
            for call in calls:
                assert set(call) == {"name", key}
                assert choice == "required" or call["name"] == "add"
                jsonschema.validate(call[key], schemas[call["name"]])
                if call["name"] == "noop":
                    assert call[key] == {}


def test_tool_call_grammar_inputs():
    tools = _tools()
    assert tool_call_grammar(tools, "auto", "hermes") is None
    assert tool_call_grammar(tools, "none", "hermes") is None
    cases = [
        ([], "required", "tools"),
        (tools, {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        (tools, {"type": "function", "function": {}}, "tool_choice.function.name"),
        (tools, "sometimes", "tool_choice"),
        ([{"type": "function", "function": {"name": "x", "parameters": {"type": "objekt"}}}],
         "required", "tools[0].function.parameters.type"),
        ([{"type": "retrieval"}], "required", "tools[0]"),
        (tools + [tools[0]], "required", "tools[3].function.name"),
    ]  # fmt: skip
    for t, choice, param in cases:
        with pytest.raises(StructuredOutputError) as info:
            tool_call_grammar(t, choice, "hermes")
        assert info.value.param == param
    with pytest.raises(ValueError, match="format"):
        tool_call_grammar(tools, "required", "xml")
