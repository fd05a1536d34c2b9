"""Tool-call parsers on the three formats: complete answers, and streams cut at every size.

Streamed argument fragments must join into exactly the final arguments (valid JSON), whatever
the number of characters each step adds.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from pyserve.server.tool_choice import tool_choice_schema
from pyserve.server.tool_parsers import PARSERS, detect_parser, make_parser
from pyserve.server.tool_parsers.forced import NamedChoiceParser, RequiredChoiceParser
from pyserve.server.tool_parsers.stream import ToolCallStream, final_calls
from pyserve.server.tools import NamedToolChoice, ToolDef

WEATHER = {"city": "Pa\"ris }", "days": [1, 2, {"x": "]"}], "units": None}
ANSWERS = {
    "hermes": "Let me check.\n<tool_call>\n" + json.dumps({"name": "get_weather",
              "arguments": WEATHER}) + "\n</tool_call>\n<tool_call>\n"
              '{"name": "now", "arguments": {}}\n</tool_call>',  # fmt: skip
    "llama3_json": "<|python_tag|>" + json.dumps({"name": "get_weather", "parameters": WEATHER})
                   + '; {"name": "now", "parameters": {}}',  # fmt: skip
    "mistral": "[TOOL_CALLS]" + json.dumps([{"name": "get_weather", "arguments": WEATHER},
                                             {"name": "now", "arguments": {}}]),  # fmt: skip
}
MISTRAL_V11 = "[TOOL_CALLS]get_weather[ARGS]" + json.dumps(WEATHER) + "[TOOL_CALLS]now[ARGS]{}"


def stream(parser, text: str, step: int, parallel: bool = True):
    """(content, {index: name}, {index: joined arguments}, final calls) of a cut-up stream."""
    s = ToolCallStream(parser, parallel)
    content, names, args = "", {}, {}
    for end in range(step, len(text) + step, step):
        c, deltas = s.feed(text[:end], end >= len(text))
        content += c
        for d in deltas:
            if "id" in d:
                assert d["index"] not in names and d["function"]["name"]  # id and name first
                names[d["index"]] = d["function"]["name"]
            args[d["index"]] = args.get(d["index"], "") + d["function"]["arguments"]
    return content, names, args, s.calls


@pytest.mark.parametrize("text,name", [*((t, n) for n, t in ANSWERS.items()),
                                       (MISTRAL_V11, "mistral")])  # fmt: skip
def test_complete_answer(text, name):
    content, calls = final_calls(make_parser(name), text)
    assert [c.name for c in calls] == ["get_weather", "now"]
    assert [json.loads(c.arguments) for c in calls] == [WEATHER, {}]
    assert content == ("Let me check." if name == "hermes" else None)
    assert len({c.id for c in calls}) == 2
    if name == "mistral":
        assert all(len(c.id) == 9 and c.id.isalnum() for c in calls)


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13, 1000])
@pytest.mark.parametrize("text,name", [*((t, n) for n, t in ANSWERS.items()),
                                       (MISTRAL_V11, "mistral")])  # fmt: skip
def test_stream_fragments_join_into_the_arguments(text, name, step):
    content, names, args, calls = stream(make_parser(name), text, step)
    assert names == {0: "get_weather", 1: "now"}
    assert [json.loads(args[i]) for i in (0, 1)] == [WEATHER, {}]
    assert [c.arguments for c in calls] == [args[0], args[1]]
    assert content.strip() == ("Let me check." if name == "hermes" else "")


def test_plain_text_is_content_and_markers_are_held_back():
    for name in PARSERS:
        p = make_parser(name)
        assert final_calls(p, "no tools here") == ("no tools here", [])
        content, names, _, _ = stream(p, "Just text, a < and [ too.", 1)
        assert content == "Just text, a < and [ too." and not names
    s = ToolCallStream(make_parser("hermes"))
    assert s.feed("Hi <tool_c", False) == ("Hi ", [])  # may become a marker: held back
    assert s.feed("Hi <tool_cat>", True) == ("<tool_cat>", [])


def test_malformed_calls_stay_content():
    bad = '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>'
    assert final_calls(make_parser("hermes"), bad) == (bad, [])
    assert final_calls(make_parser("llama3_json"), '{"not": "a call"}') == ('{"not": "a call"}', [])
    cut = '<tool_call>\n{"name": "f", "arguments": {"a": 1'
    assert final_calls(make_parser("hermes"), cut) == (cut, [])


def test_parallel_false_keeps_the_first_call():
    _, calls = final_calls(make_parser("hermes"), ANSWERS["hermes"], parallel=False)
    assert [c.name for c in calls] == ["get_weather"]
    _, names, _, _ = stream(make_parser("hermes"), ANSWERS["hermes"], 4, parallel=False)
    assert names == {0: "get_weather"}


def test_detect_from_chat_template():
    class Tok:
        def __init__(self, template):
            self.chat_template = template

    assert detect_parser(Tok("{{ '<tool_call>' }}")).name == "hermes"
    assert detect_parser(Tok("[TOOL_CALLS] {{ x }}")).name == "mistral"
    assert detect_parser(Tok("<|python_tag|>")).name == "llama3_json"
    assert detect_parser(Tok("{{ messages }}")) is None
    with pytest.raises(ValueError, match="known"):
        make_parser("nope")


TOOLS = [ToolDef.model_validate({"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}),  # fmt: skip
         ToolDef.model_validate({"type": "function", "function": {"name": "now"}})]


def test_forced_formats_follow_their_schema():
    named = NamedToolChoice.model_validate({"type": "function", "function": {"name": "get_weather"}})
    text = '{"city": "Oslo"}'
    jsonschema.validate(json.loads(text), tool_choice_schema(TOOLS, named))
    _, calls = final_calls(NamedChoiceParser("get_weather"), text)
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", text)]
    text = '[{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "now", "parameters": {}}]'
    jsonschema.validate(json.loads(text), tool_choice_schema(TOOLS, "required"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "nope", "parameters": {}}], tool_choice_schema(TOOLS, "required"))
    _, calls = final_calls(RequiredChoiceParser(), text)
    assert [c.name for c in calls] == ["get_weather", "now"]
    _, names, args, _ = stream(RequiredChoiceParser(), text, 3)
    assert names == {0: "get_weather", 1: "now"} and json.loads(args[0]) == {"city": "Oslo"}


def test_special_token_markers_stay_visible():
    from types import SimpleNamespace

    from pyserve.server.chat_output import SpecialText
    from pyserve.server.tools import ToolPlan

    hf = SimpleNamespace(all_special_tokens=["<|eot_id|>", "<|python_tag|>"],
                         added_tokens_decoder={})  # fmt: skip
    special = SpecialText(SimpleNamespace(hf=hf), ToolPlan(make_parser("llama3_json")))
    assert special.overrides == {"skip_special_tokens": False}
    text = special.clean('<|python_tag|>{"name": "now", "parameters": {}}<|eot_id|>')
    assert final_calls(make_parser("llama3_json"), text)[1][0].name == "now"
    plain = SpecialText(SimpleNamespace(hf=hf), ToolPlan(make_parser("hermes")))
    assert plain.overrides == {} and plain.clean("a<|eot_id|>") == "a<|eot_id|>"
