"""Turns a growing output text into OpenAI ``tool_calls`` deltas, and a final text into calls.

:class:`ToolCallStream` re-parses the whole text at each step (outputs are short) and sends
what is new: content, then per call its id and name once, then argument fragments. Because the
fragments are slices of the model's own JSON, they join into exactly the final arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyserve.server.tool_parsers.base import Parse, PartialCall, ToolParser


@dataclass
class ToolCall:
    """A finished tool call, as the API returns it."""

    id: str
    name: str
    arguments: str

    def openai(self) -> dict:
        """The ``message.tool_calls`` entry."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}  # fmt: skip


def final_calls(parser: ToolParser, text: str, parallel: bool = True
                ) -> tuple[str | None, list[ToolCall]]:  # fmt: skip
    """Content and calls of a complete answer; malformed tool-call text stays content."""
    result = parser.parse(text, final=True)
    calls = [c for c in result.calls if c.done and c.name]
    if not result.valid or not calls or len(calls) != len(result.calls):
        return text, []
    if not parallel:
        calls = calls[:1]
    content = result.content.strip() or None
    return content, [ToolCall(parser.new_id(), c.name, c.arguments) for c in calls]


class _Sent:
    def __init__(self, call_id: str) -> None:
        self.id = call_id
        self.arguments = 0  # characters of the arguments already sent


class ToolCallStream:
    """Per-choice streaming state: ``feed(text, final)`` -> (content delta, tool-call deltas)."""

    def __init__(self, parser: ToolParser, parallel: bool = True) -> None:
        self.parser = parser
        self.parallel = parallel
        self.content_sent = 0
        self.sent: list[_Sent] = []
        self.calls: list[ToolCall] = []  # the finished calls, once final

    @property
    def called(self) -> bool:
        """Whether any tool call was announced on the stream."""
        return bool(self.sent)

    def feed(self, text: str, final: bool) -> tuple[str, list[dict]]:
        """What to send for the cumulative ``text`` (``final`` once the output is complete)."""
        result = self.parser.parse(text, final)
        if not result.valid and not self.sent:
            return self._content(text), []  # not a tool call after all: it is all content
        content = self._content(result.content) if not self.sent else ""
        deltas: list[dict] = []
        limit = len(result.calls) if self.parallel else min(1, len(result.calls))
        for i in range(limit):
            call = result.calls[i]
            if call.name is None:
                break
            deltas.extend(self._call_deltas(i, call, final))
        if final:
            self._finish(result, limit)
        return content, deltas

    def _content(self, content: str) -> str:
        new = content[self.content_sent :]
        self.content_sent = max(self.content_sent, len(content))
        return new

    def _call_deltas(self, i: int, call: PartialCall, final: bool) -> list[dict]:
        out: list[dict] = []
        if i == len(self.sent):
            self.sent.append(_Sent(self.parser.new_id()))
            out.append({"index": i, "id": self.sent[i].id, "type": "function",
                        "function": {"name": call.name, "arguments": ""}})  # fmt: skip
        sent = self.sent[i]
        if call.streamable or call.done:
            new = call.arguments[sent.arguments :]
            if new:
                sent.arguments = len(call.arguments)
                if out:
                    out[0]["function"]["arguments"] = new
                else:
                    out.append({"index": i, "function": {"arguments": new}})
        return out

    def _finish(self, result: Parse, limit: int) -> None:
        for i, sent in enumerate(self.sent[:limit]):
            call = result.calls[i]
            self.calls.append(ToolCall(sent.id, call.name or "", call.arguments))
