"""Turns one validated HTTP request into engine sequences and streams their outputs back.

A :class:`Job` owns the n x prompts generators of one request. Their outputs are merged into
one stream of ``(choice_index, RequestOutput)``; closing the job (or cancelling the task that
reads it, on client disconnect) cancels every generator, which aborts its engine request.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request

from pyserve._core import ProgramTableFull
from pyserve.engine.client import EngineClient, EngineDeadError, EngineError
from pyserve.engine.engine import check_prompt_length, expand_n
from pyserve.engine.outputs import RequestOutput
from pyserve.sampling_params import SamplingParams
from pyserve.server.errors import OpenAIError, bad_request
from pyserve.server.metrics import ServerMetrics
from pyserve.server.program_ids import check_program_id
from pyserve.server.protocol import SamplingFields

# Cap on logprob entries one request may ask for: sum over choices of max_tokens x
# (top_logprobs + 1). Answers this large are still built off the event loop.
MAX_LOGPROB_ENTRIES = 1 << 20


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


@dataclass(frozen=True)
class ProgramTags:
    """Program (session) tags of a call; all empty for a plain OpenAI call."""

    program_id: str | None = None


def program_tags(body: SamplingFields, request: Request) -> ProgramTags:
    """Tags from the body, else from the headers.

    The program id is ``program_id``, its alias ``session_id`` (vLLM's and SGLang's name), or
    the ``X-Program-Id`` / ``X-Session-ID`` header. 400 when the body names two different
    programs, for an id that breaks the id rule (``pyserve.server.program_ids``), and for
    ``thread_id`` / ``parent_ids`` / ``X-Thread-Id``: no scheduling policy reads them.
    """
    h = request.headers
    if body.program_id and body.session_id and body.program_id != body.session_id:
        raise bad_request("session_id is an alias of program_id; they name different programs",
                          param="session_id")  # fmt: skip
    for name, given in (("thread_id", body.thread_id or h.get("x-thread-id")),
                        ("parent_ids", body.parent_ids)):  # fmt: skip
        if given:
            raise bad_request(f"{name} is not supported (no scheduling policy uses it)",
                              param=name)  # fmt: skip
    pid = body.program_id or body.session_id  # NOTE: body ids are checked by the protocol
    for header in ("X-Program-Id", "X-Session-ID"):
        if pid is None and h.get(header):
            pid = check_program_id(h[header], header)
    return ProgramTags(pid)


async def ensure_program(client: EngineClient, program_id: str | None) -> bool:
    """Starts an unseen program implicitly (TTL collection ends it); True if this call did."""
    if program_id is None or client.has_program(program_id):
        return False
    try:
        await client.start_program(program_id)
    except ValueError:
        return False  # started meanwhile by a concurrent call, or live in the core already
    except ProgramTableFull as exc:
        raise OpenAIError(429, f"{exc}: end programs (DELETE /v1/programs/ID) or retry later",
                          param="program_id", code="too_many_programs") from None  # fmt: skip
    return True


def sampling_params(body: SamplingFields, max_tokens: int | None, logprobs: int | None,
                    prompt_len: int, max_model_len: int, overrides: dict | None = None
                    ) -> SamplingParams:  # fmt: skip
    """SamplingParams for one prompt; 400 when the request cannot fit the context.

    ``overrides`` replaces fields the endpoint decides (e.g. ``skip_special_tokens`` for a
    tool-call format whose markers are special tokens).
    """
    try:
        check_prompt_length(prompt_len, max_model_len)
    except ValueError as exc:
        code = "context_length_exceeded" if prompt_len else None
        raise bad_request(str(exc), param="prompt", code=code) from None
    room = max_model_len - prompt_len
    if max_tokens is not None and max_tokens > room:
        raise bad_request(f"this model's maximum context length is {max_model_len} tokens; you "
                          f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the "
                          f"prompt, {max_tokens} to generate)",
                          param="max_tokens", code="context_length_exceeded")  # fmt: skip
    fields = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "repetition_penalty": body.repetition_penalty,
        "stop_token_ids": body.stop_token_ids,
    }
    fixed = {
        "n": body.n,
        "max_tokens": max_tokens,  # NOTE: None: the engine's default (up to the context limit)
        "min_tokens": body.min_tokens,
        "seed": body.seed,
        "stop": body.stop,
        "ignore_eos": body.ignore_eos,
        "logprobs": logprobs,
        "include_stop_str_in_output": body.include_stop_str_in_output,
        "skip_special_tokens": body.skip_special_tokens,
    }
    fixed.update({k: v for k, v in fields.items() if v is not None})
    fixed.update(overrides or {})
    try:
        return SamplingParams(**fixed)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def check_logprob_budget(params: Sequence[SamplingParams], prompts: Sequence[list[int]],
                         max_model_len: int) -> None:  # fmt: skip
    """400 when ``n x (top_logprobs + 1) x (max_tokens + echoed prompt tokens)`` over all
    prompts passes the cap (prompt tokens count when prompt logprobs are asked for; a prompt
    without max_tokens counts the context left after it)."""
    total = sum(p.n * (p.logprobs + 1)
                * (max_model_len - len(ids) if p.max_tokens is None else p.max_tokens)
                for p, ids in zip(params, prompts, strict=True) if p.logprobs is not None)  # fmt: skip
    total += sum(p.n * (p.prompt_logprobs + 1) * len(ids) for p, ids in zip(params, prompts)
                 if p.prompt_logprobs is not None)  # fmt: skip
    if total > MAX_LOGPROB_ENTRIES:
        raise bad_request(f"n x (top_logprobs + 1) x max_tokens is {total} logprob entries; the "
                          f"limit is {MAX_LOGPROB_ENTRIES}: lower n, top_logprobs or max_tokens",
                          param="max_tokens", code="logprobs_too_large")  # fmt: skip


async def until_disconnect(request: Request, awaitable):
    """Awaits ``awaitable`` unless the client disconnects first (then cancels it: ClientGone)."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Job:
    """The engine sequences of one API request: ``len(prompts) * n`` choices."""

    def __init__(self, client: EngineClient, metrics: ServerMetrics, prefix: str,
                 prompts: Sequence[list[int]], params: Sequence[SamplingParams],
                 tags: ProgramTags, priority: float,
                 on_outcome: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.client = client
        self.metrics = metrics
        # NOTE: told "aborted" when the engine aborts a choice (e.g. at shutdown) and "rejected"
        # when a stream that answered 200 ends in an error event.
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.prompts = prompts
        self.tags = tags
        self.n = params[0].n
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._first: tuple[int, RequestOutput] | None = None
        for p_idx, (ids, sp) in enumerate(zip(prompts, params)):
            base = self.id if len(prompts) == 1 else f"{self.id}-p{p_idx}"
            for rid, sub, i in expand_n(base, sp):
                gen = client.generate(rid, ids, sub, priority=priority, program_id=tags.program_id)
                self._tasks.append(asyncio.create_task(self._pump(p_idx * self.n + i, gen)))
        self._remaining = len(self._tasks)

    async def _pump(self, index: int, gen: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in gen:
                self._queue.put_nowait((index, out, None))
            self._queue.put_nowait((index, None, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the reader
            self._queue.put_nowait((index, None, exc))
        finally:
            await gen.aclose()

    async def _next(self) -> tuple[int, RequestOutput] | None:
        while self._remaining:
            index, out, exc = await self._queue.get()
            if exc is not None:
                raise _as_openai_error(exc)
            if out is None:
                self._remaining -= 1
                continue
            if out.finished:
                # NOTE: the prompt counts once per prompt, not once per choice.
                self.metrics.observe_finished(out, count_prompt=index % self.n == 0)
                if out.finish_reason == "abort":
                    self.on_outcome("aborted")
            return index, out
        return None

    async def prime(self) -> None:
        """Waits for the first output, so input errors surface before a stream answers 200."""
        self._first = await self._next()

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Every output of every choice as it arrives (the primed one first)."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while (item := await self._next()) is not None:
            yield item

    async def collect(self) -> list[RequestOutput]:
        """The final output of each choice, in choice order."""
        last: dict[int, RequestOutput] = {}
        async for index, out in self.outputs():
            last[index] = out
        return [last[i] for i in sorted(last)]

    def mark_coming_back(self) -> None:
        """Tells the core the program will call again (this call ended with a tool call)."""
        if self.tags.program_id is None:
            return
        task = asyncio.ensure_future(self.client.mark_coming_back(self.tags.program_id))
        # NOTE: fire and forget: held here until done (asyncio keeps only weak references);
        # a dead engine's error is retrieved so it is not logged as unhandled.
        _BACKGROUND.add(task)
        task.add_done_callback(_forget)

    def close(self) -> None:
        """Cancels every generator still running (aborting its request). Safe to call twice."""
        for task in self._tasks:
            if not task.done():
                task.cancel()


_BACKGROUND: set[asyncio.Future] = set()


def _forget(task: asyncio.Future) -> None:
    _BACKGROUND.discard(task)
    if not task.cancelled():
        task.exception()


def _as_openai_error(exc: BaseException) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, ValueError):
        return bad_request(str(exc), param=getattr(exc, "param", None))
    if isinstance(exc, EngineDeadError):
        return OpenAIError(503, f"the engine is not available: {exc}", code="engine_unavailable")
    if isinstance(exc, EngineError):
        return OpenAIError(500, str(exc), code="engine_error")
    return OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
