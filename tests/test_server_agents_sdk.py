"""An OpenAI Agents SDK agent with a function tool runs against the server and its tool runs.

The scripted engine answers the first turn with a Hermes tool call and the second with text, so
the SDK's whole loop (tools sent, tool_calls parsed, tool executed, result sent back as a tool
message, final answer) is exercised. With ``tool_choice="required"`` the real random-weight
tiny model can only call the tool if a grammar forces it: that test runs once the sampler has
structured output (SamplingParams.structured_outputs) and is skipped without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Annotated

import pytest
from conftest import tiny_async_engine
from pydantic import Field
from scripted_engine import ScriptedClient

agents = pytest.importorskip("agents")
openai = pytest.importorskip("openai")

from pyserve.sampling_params import SamplingParams  # noqa: E402
from pyserve.server.app import build_app  # noqa: E402
from pyserve.server.runner import ServerThread  # noqa: E402

MODEL = "builtin:tiny"
HAS_STRUCTURED = "structured_outputs" in {f.name for f in dataclasses.fields(SamplingParams)}


def make_agent(url: str, calls: list[str], tool_choice: str | None, responses: bool = False,
               **settings):  # fmt: skip
    agents.set_tracing_disabled(True)

    # NOTE: the length bound lets a random-weight model under a grammar close the string.
    @agents.function_tool
    def get_weather(city: Annotated[str, Field(max_length=12)]) -> str:
        """The weather of a city."""
        calls.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    if responses:
        model = agents.OpenAIResponsesModel(model=MODEL, openai_client=client)
    else:
        model = agents.OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    settings = agents.ModelSettings(tool_choice=tool_choice, max_tokens=256, **settings)
    return agents.Agent(name="weather", instructions="Use the tool.", tools=[get_weather],
                        model=model, model_settings=settings)  # fmt: skip


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_agent_runs_its_tool(responses):
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    engine = ScriptedClient([f"<tool_call>\n{call}\n</tool_call>", "It is sunny in Paris."])
    calls: list[str] = []
    with ServerThread(build_app(engine)) as srv:
        agent = make_agent(srv.url, calls, None, responses)
        result = asyncio.run(agents.Runner.run(agent, "Weather in Paris?", max_turns=3))
    assert calls == ["Paris"]
    assert result.final_output == "It is sunny in Paris."
    second = engine.tokenizer.decode(engine.prompts[1], skip_special_tokens=False)
    assert "sunny in Paris" in second and "<tool_response>" in second


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_streamed_run_with_model_settings(responses):
    """The model settings the SDK turns into request fields (sampling, tags, store, truncation,
    usage in the stream) are all accepted by the strict request models, and a streamed run
    executes its tool."""
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})
    engine = ScriptedClient([f"<tool_call>\n{call}\n</tool_call>", "Sunny in Oslo."])
    calls: list[str] = []
    settings = dict(temperature=0.7, top_p=0.9, parallel_tool_calls=True, include_usage=True,
                    metadata={"run": "7"}, store=responses, prompt_cache_retention="in_memory",
                    truncation="disabled" if responses else None)  # fmt: skip

    async def run():
        result = agents.Runner.run_streamed(agent, "Weather in Oslo?", max_turns=3)
        kinds = [event.type async for event in result.stream_events()]
        return result, kinds

    with ServerThread(build_app(engine)) as srv:
        agent = make_agent(srv.url, calls, "auto", responses, **settings)
        result, kinds = asyncio.run(run())
    assert calls == ["Oslo"] and result.final_output == "Sunny in Oslo."
    assert "raw_response_event" in kinds


@pytest.mark.skipif(not HAS_STRUCTURED, reason="needs structured output (grammar) in the sampler")
@pytest.mark.usefixtures("one_torch_thread")
def test_agent_with_required_tool_choice_on_tiny():
    calls: list[str] = []
    with ServerThread(build_app(tiny_async_engine(max_model_len=2048))) as srv:
        agent = make_agent(srv.url, calls, "required")
        asyncio.run(agents.Runner.run(agent, "Weather in Paris?", max_turns=2))
    assert len(calls) >= 1 and all(isinstance(c, str) for c in calls)
