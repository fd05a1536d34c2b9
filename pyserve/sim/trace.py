"""Program traces: JSONL, one program per line (format documented in docs/traces.md).

A program is a DAG of calls. A call is issued when all its parents have finished, plus its
``tool_s`` (the interrupt after its last parent; for a root call, after the program's arrival).
With ``reuse_parent_context`` its prompt begins with its first parent's full token sequence
(prompt + output) and ``prompt_tokens`` counts only the new tokens after it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pyserve import _core

_PROGRAM_KEYS = {"program_id": str, "arrival_s": float, "calls": list}
_CALL_REQUIRED = {"call_id": str, "prompt_tokens": int, "output_tokens": int}
_CALL_OPTIONAL = {
    "parents": list,
    "reuse_parent_context": bool,
    "tool_s": float,
    "shared_prefix_id": str,
    "shared_prefix_tokens": int,
    "hash_ids": list,
    "hash_block_tokens": int,
}


@dataclass(frozen=True)
class Call:
    """One LLM call of a program.

    ``shared_prefix_id``/``shared_prefix_tokens`` (an extension of the issue's format): the first
    ``shared_prefix_tokens`` of the call's *new* prompt tokens are a prefix shared by every call,
    in any program, with the same id (a system prompt); the token ids depend only on the id.
    """

    call_id: str
    prompt_tokens: int
    output_tokens: int
    parents: tuple[str, ...] = ()
    reuse_parent_context: bool = False
    tool_s: float = 0.0
    shared_prefix_id: str | None = None
    shared_prefix_tokens: int = 0
    # The prompt as a list of block hash ids (kv-cache-tester / Mooncake traces): block k holds
    # hash_block_tokens token ids derived from hash_ids[k] alone, so equal ids share a prefix.
    hash_ids: tuple[int, ...] = ()
    hash_block_tokens: int = 0


@dataclass(frozen=True)
class Program:
    """A program: its id, arrival time (s) and calls (in file order)."""

    program_id: str
    arrival_s: float
    calls: tuple[Call, ...]
    # NOTE: call_id -> Call, built once; excluded from equality and repr.
    _index: dict[str, Call] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c.call_id: c for c in self.calls})

    def call(self, call_id: str) -> Call:
        """The call with this id (ValueError if absent)."""
        try:
            return self._index[call_id]
        except KeyError:
            raise ValueError(f"program {self.program_id!r} has no call {call_id!r}") from None

    def topo_order(self) -> list[Call]:
        """Calls ordered so that every parent precedes its children (stable in file order)."""
        return [self._index[c] for c in _topo_sort(self.calls)]

    @property
    def num_output_tokens(self) -> int:
        """Tokens the program generates (the denominator of latency per token)."""
        return sum(c.output_tokens for c in self.calls)


def call_to_dict(call: Call) -> dict:
    """JSON form of a call; the shared-prefix fields only when set."""
    d = {
        "call_id": call.call_id,
        "parents": list(call.parents),
        "prompt_tokens": call.prompt_tokens,
        "output_tokens": call.output_tokens,
        "reuse_parent_context": call.reuse_parent_context,
        "tool_s": call.tool_s,
    }
    if call.shared_prefix_id is not None:
        d["shared_prefix_id"] = call.shared_prefix_id
        d["shared_prefix_tokens"] = call.shared_prefix_tokens
    if call.hash_ids:
        d["hash_ids"] = list(call.hash_ids)
        d["hash_block_tokens"] = call.hash_block_tokens
    return d


def program_to_dict(program: Program) -> dict:
    """JSON form of a program (one trace line)."""
    return {
        "program_id": program.program_id,
        "arrival_s": program.arrival_s,
        "calls": [call_to_dict(c) for c in program.calls],
    }


def write_trace(programs: Iterable[Program], path: str | Path) -> None:
    """Write programs as JSONL, one per line."""
    with open(path, "w") as f:
        for p in programs:
            f.write(json.dumps(program_to_dict(p), separators=(",", ":")) + "\n")


def load_trace(path: str | Path) -> list[Program]:
    """Read and validate a trace file; ValueError names the first bad line and why."""
    with open(path) as f:
        return parse_trace(f)


def parse_trace(lines: Iterable[str]) -> list[Program]:
    """Validate JSONL lines (blank lines skipped); program ids must be unique across lines."""
    programs: list[Program] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            program = parse_program(line)
            if program.program_id in seen:
                raise ValueError(
                    f"duplicate program_id {program.program_id!r} (first on line "
                    f"{seen[program.program_id]})"
                )
        except ValueError as e:
            raise ValueError(f"trace line {lineno}: {e}") from None
        seen[program.program_id] = lineno
        programs.append(program)
    return programs


def parse_program(line: str) -> Program:
    """One program from one JSON line; ValueError with the reason if it is invalid."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"bad JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise ValueError("a program must be a JSON object")
    _check_fields(obj, _PROGRAM_KEYS, {}, "program")
    pid = obj["program_id"]
    if not pid:
        raise ValueError("program_id must not be empty")
    arrival = _number(obj["arrival_s"], "arrival_s", "program")
    if not obj["calls"]:
        raise ValueError(f"program {pid!r}: calls must not be empty")
    calls = tuple(_parse_call(c, i) for i, c in enumerate(obj["calls"]))
    _check_graph(calls)
    return Program(pid, arrival, calls)


def _parse_call(obj: object, index: int) -> Call:
    where = f"calls[{index}]"
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a JSON object")
    _check_fields(obj, _CALL_REQUIRED, _CALL_OPTIONAL, where)
    where = f"call {obj['call_id']!r}"
    if not obj["call_id"]:
        raise ValueError(f"{where}: call_id must not be empty")
    parents = obj.get("parents", [])
    if not all(isinstance(p, str) for p in parents):
        raise ValueError(f"{where}: parents must be a list of call_id strings")
    reuse = obj.get("reuse_parent_context", False)
    prompt = _count(obj["prompt_tokens"], "prompt_tokens", where, minimum=0 if reuse else 1)
    output = _count(obj["output_tokens"], "output_tokens", where, minimum=1)
    prefix_id = obj.get("shared_prefix_id")
    prefix_n = _count(obj.get("shared_prefix_tokens", 0), "shared_prefix_tokens", where, 0)
    if (prefix_id is None) != (prefix_n == 0) or prefix_n > prompt:
        raise ValueError(
            f"{where}: shared_prefix_tokens must be in [1, prompt_tokens] exactly when "
            "shared_prefix_id is set"
        )
    if reuse and not parents:
        raise ValueError(f"{where}: reuse_parent_context needs at least one parent")
    hash_ids = obj.get("hash_ids", [])
    hash_bt = _count(obj.get("hash_block_tokens", 0), "hash_block_tokens", where, 0)
    if hash_ids or hash_bt:
        if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in hash_ids):
            raise ValueError(f"{where}: hash_ids must be a list of integers >= 0")
        if not hash_ids or hash_bt < 1 or reuse or prefix_id is not None:
            raise ValueError(
                f"{where}: hash_ids needs hash_block_tokens >= 1 and excludes "
                "reuse_parent_context and shared_prefix_id"
            )
    return Call(
        call_id=obj["call_id"],
        prompt_tokens=prompt,
        output_tokens=output,
        parents=tuple(parents),
        reuse_parent_context=reuse,
        tool_s=_number(obj.get("tool_s", 0.0), "tool_s", where),
        shared_prefix_id=prefix_id,
        shared_prefix_tokens=prefix_n,
        hash_ids=tuple(hash_ids),
        hash_block_tokens=hash_bt,
    )


def _check_fields(obj: dict, required: dict, optional: dict, where: str) -> None:
    for key in obj:
        if key not in required and key not in optional:
            raise ValueError(f"{where}: unknown field {key!r}")
    for key in required:
        if key not in obj:
            raise ValueError(f"{where}: missing field {key!r}")
    for key, want in {**required, **optional}.items():
        if key in obj and not _is_type(obj[key], want):
            raise ValueError(
                f"{where}: field {key!r} must be {want.__name__}, got {type(obj[key]).__name__}"
            )


def _is_type(value: object, want: type) -> bool:
    # NOTE: bool is a subclass of int in Python; JSON true/false must not pass as numbers.
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


def _number(value: float, name: str, where: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name} must be finite and >= 0, got {value}")
    return value


def _count(value: int, name: str, where: str, minimum: int) -> int:
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return value


def _check_graph(calls: tuple[Call, ...]) -> None:
    ids: set[str] = set()
    for c in calls:
        if c.call_id in ids:
            raise ValueError(f"duplicate call_id {c.call_id!r}")
        ids.add(c.call_id)
    for c in calls:
        if len(set(c.parents)) != len(c.parents):
            raise ValueError(f"call {c.call_id!r}: parents repeat a call_id")
        for p in c.parents:
            if p not in ids:
                raise ValueError(f"call {c.call_id!r}: unknown parent {p!r}")
    _topo_sort(calls)


def _topo_sort(calls: tuple[Call, ...]) -> list[str]:
    """Kahn's algorithm over file order; ValueError naming the calls on a cycle."""
    pending = {c.call_id: len(c.parents) for c in calls}
    children: dict[str, list[str]] = {c.call_id: [] for c in calls}
    for c in calls:
        for p in c.parents:
            children[p].append(c.call_id)
    ready = deque(c.call_id for c in calls if not c.parents)
    order: list[str] = []
    while ready:
        cid = ready.popleft()
        order.append(cid)
        for child in children[cid]:
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    if len(order) != len(calls):
        stuck = sorted(cid for cid, n in pending.items() if n > 0)
        raise ValueError(f"parents form a cycle among calls {stuck}")
    return order


def stable_seed(*parts: str) -> int:
    """A 64-bit seed from strings, the same in every process (unlike the salted ``hash()``)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "little")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))


def _finalize(z: np.ndarray, low: int, high: int) -> np.ndarray:
    """SplitMix64's mixing of uint64 ``z`` (in place), mapped to int32 ids in [low, high)."""
    z ^= z >> _SHIFTS[0]
    z *= _MIX[0]
    z ^= z >> _SHIFTS[1]
    z *= _MIX[1]
    z ^= z >> _SHIFTS[2]
    z %= np.uint64(high - low)
    out = z.astype(np.int32)
    out += low
    return out


def hash_block_ids(hash_ids, block_tokens: int, low: int, high: int) -> np.ndarray:
    """Token ids in [low, high) of the blocks named by ``hash_ids``, concatenated (int32).

    Block k depends only on ``hash_ids[k]`` (SplitMix64 of ``hash * block_tokens + i``): equal
    hash ids give equal blocks in every call and program, so the prefix cache sees exactly the
    trace's sharing. Computed in the C++ core (``_core.hash_block_token_ids``).
    """
    ids = np.asarray(hash_ids, dtype=np.uint64)
    return _core.hash_block_token_ids(ids, block_tokens, low, high)


def draw_at(seeds: np.ndarray, positions: np.ndarray, low: int, high: int) -> np.ndarray:
    """Element i is id ``positions[i]`` of the draw seeded by ``seeds[i]``: equal to
    ``_draw(n, seeds[i], low, high)[positions[i]]`` for any n > positions[i] (one numpy pass)."""
    z = positions.astype(np.uint64) + np.uint64(1)
    z *= _GOLDEN
    z += seeds.astype(np.uint64)  # NOTE: wraps modulo 2^64, as in _draw
    return _finalize(z, low, high)


def _draw(n: int, seed: int, low: int, high: int) -> np.ndarray:
    """``n`` ids in [low, high): SplitMix64's outputs from state ``seed`` (counter-based).

    NOTE: id i depends only on (seed, i), so the first k ids of a draw of n >= k equal a draw of
    k: shared prefixes of different lengths agree on their common part. One C++ call
    (``_core.draw_token_ids``) per draw: the simulator draws twice per call.
    """
    return _core.draw_token_ids(seed, n, low, high)


class ProgramTokens:
    """Deterministic token ids of one program's calls, memoised per call.

    Ids are drawn in ``[reserved_low, vocab_size)`` (special tokens often sit at the low end).
    A call's prompt = [first parent's full sequence if reuse_parent_context] + [shared prefix
    tokens, seeded by the prefix id alone] + [its own new tokens, seeded by (program, call)].
    Its output tokens are seeded by (program, call) too: the simulator emits exactly these.
    """

    def __init__(self, program: Program, vocab_size: int = 32000, reserved_low: int = 16) -> None:
        if not 0 <= reserved_low < vocab_size:
            raise ValueError(
                f"need 0 <= reserved_low < vocab_size, got {reserved_low}, {vocab_size}"
            )
        self.program = program
        self.vocab_size = vocab_size
        self.reserved_low = reserved_low
        self._full: dict[str, np.ndarray] = {}

    def _ids(self, n: int, *key: str) -> np.ndarray:
        return _draw(n, stable_seed(*key), self.reserved_low, self.vocab_size)

    def new_prompt_ids(self, call_id: str) -> np.ndarray:
        """The call's own prompt tokens (shared prefix first), without reused context."""
        c = self.program.call(call_id)
        if c.hash_ids:
            ids = hash_block_ids(c.hash_ids, c.hash_block_tokens, self.reserved_low, self.vocab_size)
            rest = c.prompt_tokens - ids.shape[0]  # the unhashed tail (a partial last block)
            if rest <= 0:
                return ids[: c.prompt_tokens]
            return np.concatenate([ids, self._ids(rest, self.program.program_id, call_id)])
        own = self._ids(c.prompt_tokens - c.shared_prefix_tokens, self.program.program_id, call_id)
        if c.shared_prefix_id is None:
            return own
        shared = self._ids(c.shared_prefix_tokens, "shared-prefix", c.shared_prefix_id)
        return np.concatenate([shared, own])

    def output_ids(self, call_id: str) -> np.ndarray:
        """The call's ``output_tokens`` generated ids."""
        c = self.program.call(call_id)
        return self._ids(c.output_tokens, self.program.program_id, call_id, "output")

    def prompt_ids(self, call_id: str) -> np.ndarray:
        """The call's full prompt: reused parent context, then its new tokens."""
        c = self.program.call(call_id)
        if not c.reuse_parent_context:
            return self.new_prompt_ids(call_id)
        return np.concatenate([self.full_ids(c.parents[0]), self.new_prompt_ids(call_id)])

    def full_ids(self, call_id: str) -> np.ndarray:
        """Prompt + output of a call (what a child reusing its context starts with)."""
        # NOTE: walk up the first-parent chain iteratively: chains can exceed the recursion limit.
        chain = [call_id]
        while chain[-1] not in self._full:
            c = self.program.call(chain[-1])
            if not c.reuse_parent_context:
                break
            chain.append(c.parents[0])
        for cid in reversed(chain):
            if cid in self._full:
                continue
            c = self.program.call(cid)
            head = [self._full[c.parents[0]]] if c.reuse_parent_context else []
            parts = [*head, self.new_prompt_ids(cid), self.output_ids(cid)]
            self._full[cid] = np.concatenate(parts)
        return self._full[call_id]


def call_prompt_ids(program: Program, call_id: str, vocab_size: int = 32000) -> np.ndarray:
    """A call's full prompt token ids (int32); see :class:`ProgramTokens`."""
    return ProgramTokens(program, vocab_size).prompt_ids(call_id)


def prompt_len(program: Program, call_id: str) -> int:
    """Length of a call's full prompt (reused context included) without drawing tokens."""
    total = 0
    c = program.call(call_id)
    total += c.prompt_tokens
    while c.reuse_parent_context:
        c = program.call(c.parents[0])
        total += c.prompt_tokens + c.output_tokens
    return total
