"""A LangGraph ReAct agent (``langgraph.prebuilt.create_react_agent`` over langchain-openai's
``ChatOpenAI``) with a ``@tool`` runs against the server and its tool is executed.

The scripted engine drives the whole ReAct loop (tool call, tool run, tool message back in the
prompt, final answer). On the real random-weight tiny model the tool call is forced with
``bind_tools(..., tool_choice="required" / the tool's name)``, which the server enforces with a
grammar; the tool is ``return_direct`` so the graph ends after running it (a forced choice
would otherwise call the tool on every turn until the recursion limit).
"""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from conftest import tiny_async_engine, wait_server_idle
from pydantic import BaseModel, Field
from scripted_engine import ScriptedClient

pytest.importorskip("langgraph")
langchain_openai = pytest.importorskip("langchain_openai")

from langchain_core.messages import ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.prebuilt import create_react_agent  # noqa: E402

from pyserve.server.app import build_app  # noqa: E402
from pyserve.server.runner import ServerThread  # noqa: E402

MODEL = "builtin:tiny"
# NOTE: langgraph 1.x points to langchain.agents.create_agent (another package); the prebuilt
# ReAct agent is what the issue names and what LangGraph users run.
pytestmark = pytest.mark.filterwarnings("ignore:create_react_agent has been moved")


def make_tool(calls: list[str], return_direct: bool):
    # NOTE: the length bound lets a random-weight model under a grammar close the string.
    @tool(return_direct=return_direct)
    def get_weather(city: Annotated[str, Field(max_length=12)]) -> str:
        """The weather of a city."""
        calls.append(city)
        return f"sunny in {city}"

    return get_weather


def chat_model(url: str) -> langchain_openai.ChatOpenAI:
    return langchain_openai.ChatOpenAI(model=MODEL, base_url=url + "/v1", api_key="x",
                                       max_retries=0, timeout=60, max_tokens=128)  # fmt: skip


def test_react_agent_loop_runs_its_tool():
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    engine = ScriptedClient([f"<tool_call>\n{call}\n</tool_call>", "It is sunny in Paris."])
    calls: list[str] = []
    with ServerThread(build_app(engine)) as srv:
        agent = create_react_agent(chat_model(srv.url), [make_tool(calls, False)])
        result = agent.invoke({"messages": [("user", "Weather in Paris?")]})
    assert calls == ["Paris"]
    msgs = result["messages"]
    assert [type(m).__name__ for m in msgs] == ["HumanMessage", "AIMessage", "ToolMessage",
                                                "AIMessage"]  # fmt: skip
    assert msgs[1].tool_calls[0]["name"] == "get_weather" and msgs[-1].content.startswith("It is")
    second = engine.tokenizer.decode(engine.prompts[1], skip_special_tokens=False)
    assert "sunny in Paris" in second and "<tool_response>" in second


@pytest.mark.usefixtures("one_torch_thread")
def test_react_agent_with_forced_tool_choice_on_tiny():
    with ServerThread(build_app(tiny_async_engine(max_model_len=2048))) as srv:
        for choice in ("required", "get_weather"):
            calls: list[str] = []
            weather = make_tool(calls, True)
            model = chat_model(srv.url).bind_tools([weather], tool_choice=choice)
            agent = create_react_agent(model, [weather])
            result = agent.invoke({"messages": [("user", "Weather in Paris?")]},
                                  {"recursion_limit": 4})  # fmt: skip
            assert len(calls) == 1 and isinstance(calls[0], str), choice
            last = result["messages"][-1]
            assert isinstance(last, ToolMessage) and last.content == f"sunny in {calls[0]}"
        wait_server_idle(srv.url, 30)


class Pet(BaseModel):
    """A pet."""

    name: str = Field(max_length=10)
    legs: int = Field(ge=0, le=8)


@pytest.mark.usefixtures("one_torch_thread")
def test_structured_output_and_streamed_usage_on_tiny():
    """``with_structured_output`` (json_schema: ``response_format`` with strict; function_calling:
    a named ``tool_choice`` with ``parallel_tool_calls: false``) and a streamed call with
    ``stream_usage`` (``stream_options.include_usage``) pass the strict request models; the
    grammar makes the random-weight model's answer parse."""
    pytest.importorskip("xgrammar")
    with ServerThread(build_app(tiny_async_engine(max_model_len=1024))) as srv:
        llm = chat_model(srv.url)
        for method in ("json_schema", "function_calling"):
            pet = llm.with_structured_output(Pet, method=method).invoke("Describe a pet.")
            assert isinstance(pet, Pet), method
        streamed = langchain_openai.ChatOpenAI(model=MODEL, base_url=srv.url + "/v1", api_key="x",
                                               max_retries=0, max_tokens=4, stream_usage=True,
                                               temperature=0.5, seed=1)  # fmt: skip
        chunks = list(streamed.stream("Hello"))
        usage = [c.usage_metadata for c in chunks if c.usage_metadata]
        assert usage and usage[-1]["output_tokens"] >= 1
        wait_server_idle(srv.url, 30)
