"""Throughput of the HTTP server with and without structured output on builtin:tiny.

A server subprocess (``python -m pyserve.server.cli serve``, as ``bench_serving.py`` starts it)
gets ``--requests`` chat completions from ``--concurrency`` concurrent clients, in rounds of
two passes each, side by side:

- ``structured``: ``response_format`` ``json_schema`` with the 20-field schema of
  ``bench_structured.py`` (strict), up to 512 tokens; the grammar decides where each ends;
- ``plain``: the same prompts and seeds, no ``response_format``, ``ignore_eos`` and
  ``max_tokens`` equal to the output length of the same request in the structured pass before
  it, so both passes generate the same number of tokens.

One JSON line per pass: output tokens, wall seconds, output tokens/s, requests/s, and (for the
structured pass) how many outputs ended with ``stop`` and parse as JSON objects.

    python benchmarks/bench_structured_server.py [--requests 64] [--concurrency 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
from bench_serving import start_server
from bench_structured import schema_20

MODEL = "builtin:tiny"
MESSAGES = [{"role": "user", "content": "Describe the weather as JSON."}]


def request_body(i: int, max_tokens: int | None) -> dict:
    """Request ``i``: structured when ``max_tokens`` is None, else plain of that length."""
    body = {"model": MODEL, "messages": MESSAGES, "seed": i}
    if max_tokens is None:
        fmt = {"name": "weather", "schema": schema_20(), "strict": True}
        return {**body, "max_tokens": 512, "response_format": {"type": "json_schema",
                                                              "json_schema": fmt}}  # fmt: skip
    return {**body, "max_tokens": max_tokens, "ignore_eos": True}


async def run_pass(url: str, bodies: list[dict], concurrency: int) -> tuple[list[dict], float]:
    """Sends ``bodies`` from ``concurrency`` clients; returns (answers in order, wall seconds)."""
    answers: list[dict | None] = [None] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                r = await client.post("/v1/chat/completions", json=bodies[i])
                r.raise_for_status()
                answers[i] = r.json()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return answers, wall


def summary(structured: bool, answers: list[dict], wall: float, concurrency: int) -> dict:
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    row = {"case": "server_throughput", "structured": structured, "requests": len(answers),
           "concurrency": concurrency, "output_tokens": tokens, "wall_s": round(wall, 2),
           "tokens_per_s": round(tokens / wall, 1),
           "requests_per_s": round(len(answers) / wall, 2)}  # fmt: skip
    if structured:
        row["finished_stop"] = sum(a["choices"][0]["finish_reason"] == "stop" for a in answers)
        row["json_objects"] = sum(_is_object(a["choices"][0]["message"]["content"])
                                  for a in answers)  # fmt: skip
    return row


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="structured + plain passes")
    ap.add_argument("--cpu-threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    args = ap.parse_args()
    server = argparse.Namespace(model=MODEL, max_model_len=2048, cpu_threads=args.cpu_threads,
                                start_timeout=args.start_timeout, server_args=[])  # fmt: skip
    proc, url = start_server(server, "fcfs")
    try:
        # warm-up: compiles (and caches) the schema's grammar, touches both paths
        asyncio.run(run_pass(url, [request_body(0, None), request_body(0, 8)], 2))
        for _ in range(args.rounds):
            bodies = [request_body(i, None) for i in range(args.requests)]
            answers, wall = asyncio.run(run_pass(url, bodies, args.concurrency))
            print(json.dumps(summary(True, answers, wall, args.concurrency)), flush=True)
            lengths = [a["usage"]["completion_tokens"] for a in answers]
            bodies = [request_body(i, n) for i, n in enumerate(lengths)]
            answers, wall = asyncio.run(run_pass(url, bodies, args.concurrency))
            print(json.dumps(summary(False, answers, wall, args.concurrency)), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
