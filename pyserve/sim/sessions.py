"""Import of real coding-agent sessions: the kv-cache-tester traces (github:callanjfox/
kv-cache-tester, Apache-2.0; docs/traces.md).

A trace file is one recorded session: ``{"id", "block_size", "requests": [...]}``; a request has
``t`` (start, s), ``in``/``out`` tokens, ``think_time`` (s since the previous response ended),
``api_time`` and ``hash_ids`` (one id per full ``block_size``-token block of its prompt, local to
the file); a ``{"type": "subagent", "t", "duration_ms", "requests": [...]}`` entry nests a
subagent's own requests (their ``t`` relative to its start; the entry's ``t`` is when it
returned).

Each imported session becomes one program. Its requests are a chain of calls (each the parent of
the next, released ``think_time`` after it); a subagent becomes a thread: its first call's parent
is the session call before it, and the next session call joins it (a second parent). Sessions arrive as a Poisson process; trace files are used round-robin and
each session's hash ids get their own namespace (ids are local to a file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pyserve.sim.trace import Call, Program

_NUMBER = (int, float)


def load_session_file(path: str | Path) -> dict:
    """Parse one trace file; ValueError ``"<path>: line N: ..."`` for a bad file."""
    path = Path(path)
    text = path.read_text()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: bad JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("requests"), list):
        raise ValueError(f"{path}: line 1: a trace must be an object with a 'requests' list")
    bs = obj.get("block_size", 64)
    if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
        raise ValueError(f"{path}: line 1: block_size must be an integer >= 1, got {bs!r}")
    lines = _request_lines(text)
    for i, req in enumerate(obj["requests"]):
        line = lines[i] if i < len(lines) else 1
        try:
            _check_request(req, nested=False)
        except ValueError as e:
            raise ValueError(f"{path}: line {line}: requests[{i}]: {e}") from None
    return obj


def _request_lines(text: str) -> list[int]:
    """Line number of each top-level entry of the ``requests`` array (decoded one by one)."""
    dec = json.JSONDecoder()
    at = text.find("[", text.find('"requests"'))
    out: list[int] = []
    if at < 0:
        return out
    i = at + 1
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            break
        out.append(text.count("\n", 0, i) + 1)
        _, i = dec.raw_decode(text, i)
    return out


def _check_request(req: object, nested: bool) -> None:
    if not isinstance(req, dict):
        raise ValueError("a request must be a JSON object")
    if req.get("type") == "subagent":
        if nested:
            raise ValueError("a subagent inside a subagent is not supported")
        for key in ("t", "duration_ms"):
            if not isinstance(req.get(key), _NUMBER) or req[key] < 0:
                raise ValueError(f"subagent field {key!r} must be a number >= 0")
        if not isinstance(req.get("requests"), list):
            raise ValueError("subagent needs a 'requests' list")
        for j, sub in enumerate(req["requests"]):
            try:
                _check_request(sub, nested=True)
            except ValueError as e:
                raise ValueError(f"requests[{j}]: {e}") from None
        return
    for key in ("t", "in", "out"):
        if key not in req:
            raise ValueError(f"missing field {key!r}")
    for key in ("t", "in", "out", "think_time", "api_time"):
        if key in req and (not isinstance(req[key], _NUMBER) or isinstance(req[key], bool)):
            raise ValueError(f"field {key!r} must be a number, got {req[key]!r}")
        if key in req and req[key] < 0:
            raise ValueError(f"field {key!r} must be >= 0, got {req[key]}")
    if req["in"] < 1:
        raise ValueError(f"field 'in' must be >= 1, got {req['in']}")
    ids = req.get("hash_ids", [])
    if not isinstance(ids, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in ids
    ):
        raise ValueError("hash_ids must be a list of integers >= 0")


def session_program(obj: dict, program_id: str, arrival_s: float, namespace: int,
                    max_calls: int | None = None,
                    max_prompt_tokens: int | None = None) -> Program:  # fmt: skip
    """One program from a parsed trace file (see the module docstring).

    The session ends before its first request longer than ``max_prompt_tokens`` (the model's
    context; a subagent with one is cut there).
    NOTE: a subagent entry's ``t`` is when its result came back (it started ``duration_ms``
    earlier); the session request after it waited for it, so that request joins the subagent and
    is released ``t_request - t_marker`` after it instead of its ``think_time``.
    """
    bs = int(obj.get("block_size", 64))
    calls: list[Call] = []
    prev: dict | None = None  # the last session request, with its call id
    joins: list[tuple[float, str]] = []  # (subagent return time, its last call id)
    for k, req in enumerate(obj["requests"]):
        if max_calls is not None and len(calls) >= max_calls:
            break
        if req.get("type") == "subagent":
            start = float(req["t"]) - float(req["duration_ms"]) / 1000.0
            prev_end = float(prev["t"]) + float(prev.get("api_time", 0)) if prev else 0.0
            last = prev["call_id"] if prev else None
            for j, sub in enumerate(req["requests"]):
                if max_prompt_tokens is not None and sub["in"] > max_prompt_tokens:
                    break
                cid = f"a{k}.{j}"
                tool = max(0.0, start - prev_end) if j == 0 else float(sub.get("think_time", 0))
                calls.append(_call(cid, sub, [last] if last else [], tool, bs, namespace))
                last = cid
            if last != (prev["call_id"] if prev else None):
                joins.append((float(req["t"]), last))
            continue
        if max_prompt_tokens is not None and req["in"] > max_prompt_tokens:
            break
        cid = f"c{k}"
        parents = [prev["call_id"]] if prev else []
        tool = float(req.get("think_time", 0.0)) if prev else 0.0
        if joins:
            parents += [last for _, last in joins]
            tool = max(0.0, float(req["t"]) - max(t for t, _ in joins))
            joins = []
        calls.append(_call(cid, req, parents, tool, bs, namespace))
        prev = {**req, "call_id": cid}
    return Program(program_id, arrival_s, tuple(calls))


def _call(cid: str, req: dict, parents: list[str], tool_s: float, bs: int, ns: int) -> Call:
    ids = tuple(ns + int(h) for h in req.get("hash_ids", []))
    return Call(
        call_id=cid,
        prompt_tokens=int(req["in"]),
        output_tokens=max(1, int(req["out"])),
        parents=tuple(parents),
        tool_s=tool_s,
        hash_ids=ids,
        hash_block_tokens=bs if ids else 0,
    )


def import_sessions(source: str | Path, num_sessions: int, rate: float, seed: int = 0,
                    max_calls: int | None = None,
                    max_prompt_tokens: int | None = None) -> list[Program]:  # fmt: skip
    """``num_sessions`` programs from the ``*.json`` traces under ``source`` (or its ``traces/``),
    arriving as a Poisson process of ``rate`` sessions/s. ValueError for a bad file or argument.
    ``max_calls``: keep a session's first calls; ``max_prompt_tokens``: end a session before its
    first longer request (see :func:`session_program`).
    """
    if num_sessions < 1:
        raise ValueError(f"num_sessions must be >= 1, got {num_sessions}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 sessions/s, got {rate}")
    root = Path(source)
    files = sorted(root.glob("*.json")) or sorted((root / "traces").glob("*.json"))
    if not files:
        raise ValueError(f"no kv-cache-tester traces (*.json) under {root}")
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, num_sessions))
    order = rng.permutation(len(files))
    parsed: dict[int, dict] = {}
    programs: list[Program] = []
    k = 0  # next file in the seeded order; a file whose first request is too long is skipped
    for s in range(num_sessions):
        for _ in range(len(files)):
            f = int(order[k % len(files)])
            k += 1
            if f not in parsed:
                parsed[f] = load_session_file(files[f])
            pid = f"{files[f].stem}#{s}"
            p = session_program(parsed[f], pid, float(arrivals[s]), (s + 1) << 32, max_calls,
                                max_prompt_tokens)  # fmt: skip
            if p.calls:
                programs.append(p)
                break
        else:
            raise ValueError(f"no trace under {root} has a request within {max_prompt_tokens} tokens")
    return programs
