"""Replays a program trace against the HTTP server on the wall clock, once per policy.

For each policy a server is started in a subprocess (``python -m pyserve.server.cli serve``) on a
free loopback port. Programs arrive at their ``arrival_s``; each starts a session
(``POST /v1/programs``), issues a call once all its parents finished plus its ``tool_s``, tagged
with ``program_id`` (the DAG is honoured client-side), and ends the session when its last call
finished. Calls stream (``stream_options.include_usage``) with ``ignore_eos`` and exactly the
trace's output length, so every policy does the same work.

Prints one JSON line per policy: TTFT, inter-token latency (gaps between streamed chunks),
program latency (arrival to last token) and per-output-token program latency, plus the server's
preemption and prefix-cache counters.

    python benchmarks/bench_serving.py                         # tiny default: ~1 min on a CPU
    python benchmarks/bench_serving.py --trace t.jsonl --policies fcfs,plas,atlas \
        --model /models/llama --token-scale 1 --max-model-len 8192
    python benchmarks/bench_serving.py --url http://127.0.0.1:8000  # an already running server
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from pyserve.sim.trace import Program, ProgramTokens, load_trace
from pyserve.sim.workloads import generate


def scale_program(p: Program, scale: float, max_output: int) -> Program:
    """Token counts times ``scale`` (at least 1; outputs capped), so CPU runs stay short."""

    def call(c):
        prompt = max(0 if c.reuse_parent_context else 1, round(c.prompt_tokens * scale))
        shared = min(prompt, round(c.shared_prefix_tokens * scale)) if c.shared_prefix_id else 0
        if c.shared_prefix_id and shared == 0:
            shared = min(1, prompt)
        return dataclasses.replace(c, prompt_tokens=max(prompt, shared), shared_prefix_tokens=shared,
                                   output_tokens=min(max_output, max(1, round(c.output_tokens * scale))))  # fmt: skip

    return Program(p.program_id, p.arrival_s, tuple(call(c) for c in p.calls))


class Replay:
    """Issues one trace against one server and records client-side timings."""

    def __init__(self, url: str, model: str, programs: list[Program], vocab: int, ctx: int) -> None:
        self.url, self.model, self.programs = url, model, programs
        self.vocab, self.ctx = vocab, ctx
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.program_latency: list[float] = []
        self.per_token: list[float] = []
        self.errors: list[str] = []
        self.truncated = 0
        self.tokens = 0

    async def run(self) -> float:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=self.url, timeout=600, limits=limits) as client:
            t0 = time.monotonic()
            await asyncio.gather(*(self._program(client, p, t0) for p in self.programs))
            return time.monotonic() - t0

    async def _program(self, client: httpx.AsyncClient, p: Program, t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + p.arrival_s - time.monotonic()))
        start = time.monotonic()
        r = await client.post("/v1/programs", json={"program_id": p.program_id})
        if r.status_code != 200:
            self.errors.append(f"start {p.program_id}: {r.status_code} {r.text[:200]}")
            return
        tokens = ProgramTokens(p, vocab_size=self.vocab)
        done: dict[str, asyncio.Event] = {c.call_id: asyncio.Event() for c in p.calls}
        await asyncio.gather(*(self._call(client, p, c, tokens, done) for c in p.calls))
        self.program_latency.append(time.monotonic() - start)
        self.per_token.append(self.program_latency[-1] / p.num_output_tokens)
        await client.delete(f"/v1/programs/{p.program_id}")

    async def _call(self, client, p: Program, c, tokens: ProgramTokens, done) -> None:
        for parent in c.parents:
            await done[parent].wait()
        await asyncio.sleep(c.tool_s)
        ids = tokens.prompt_ids(c.call_id).tolist()
        room = self.ctx - c.output_tokens - 1
        if len(ids) > room:  # keep the newest context (the prompt tail) within max_model_len
            ids, self.truncated = ids[-room:], self.truncated + 1
        body = {
            "model": self.model,
            "prompt": ids,
            "max_tokens": c.output_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "program_id": p.program_id,
        }
        try:
            await self._stream(client, body)
        except (httpx.HTTPError, ValueError) as exc:
            self.errors.append(f"{p.program_id}/{c.call_id}: {exc}")
        finally:
            done[c.call_id].set()

    async def _stream(self, client: httpx.AsyncClient, body: dict) -> None:
        sent = time.monotonic()
        stamps: list[float] = []
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise ValueError(chunk["error"]["message"])
                if chunk["choices"]:
                    stamps.append(time.monotonic())
                elif chunk.get("usage"):
                    self.tokens += chunk["usage"]["completion_tokens"]
        if stamps:
            self.ttft.append(stamps[0] - sent)
            self.itl.extend(np.diff(stamps).tolist())


def _pct(xs: list[float]) -> dict:
    if not xs:
        return {}
    a = np.asarray(xs)
    return {"mean": round(float(a.mean()), 4), "p50": round(float(np.percentile(a, 50)), 4),
            "p90": round(float(np.percentile(a, 90)), 4),
            "p99": round(float(np.percentile(a, 99)), 4)}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, policy: str) -> tuple[subprocess.Popen, str]:
    """A server subprocess for ``policy``; returns it once /health answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "pyserve.server.cli", "serve", args.model, "--port", str(port),
           "--policy", policy, "--max-model-len", str(args.max_model_len),
           "--log-level", "warning", *args.server_args]  # fmt: skip
    if args.cpu_threads:
        cmd += ["--cpu-threads", str(args.cpu_threads)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for policy {policy!r} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"server for policy {policy!r} did not start in {args.start_timeout} s")


def server_counters(url: str) -> dict:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
         if "le" not in s.labels}  # fmt: skip
    keys = ("num_preemptions_total", "prefix_cache_queries_total", "prefix_cache_hits_total",
            "kv_cache_blocks_used")  # fmt: skip
    return {k: m.get(f"pyserve:{k}", 0.0) for k in keys}


def bench_policy(args, policy: str, programs: list[Program], vocab: int) -> dict:
    proc, url = (None, args.url) if args.url else start_server(args, policy)
    try:
        replay = Replay(url, args.served_model or args.model, programs, vocab, args.max_model_len)
        wall = asyncio.run(replay.run())
        counters = server_counters(url)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    return {
        "bench": "serving", "policy": policy, "model": args.model, "programs": len(programs),
        "calls": sum(len(p.calls) for p in programs), "wall_s": round(wall, 2),
        "output_tokens": replay.tokens, "tokens_per_s": round(replay.tokens / wall, 1),
        "ttft_s": _pct(replay.ttft), "itl_s": _pct(replay.itl),
        "program_latency_s": _pct(replay.program_latency),
        "program_latency_per_token_s": _pct(replay.per_token),
        "truncated_prompts": replay.truncated, "errors": len(replay.errors),
        "first_errors": replay.errors[:3], "server": counters,
    }  # fmt: skip


def load_programs(args) -> list[Program]:
    if args.trace:
        programs = load_trace(Path(args.trace))[: args.programs]
    else:
        programs = generate(args.workload, args.programs, args.rate, seed=args.seed,
                            sharegpt_source="synthetic")  # fmt: skip
    return [scale_program(p, args.token_scale, args.max_output_tokens) for p in programs]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", help="JSONL program trace (default: generate --workload)")
    ap.add_argument("--workload", default="sharegpt", help="sharegpt | bfcl | lats | mixed")
    ap.add_argument("--programs", type=int, default=8, help="programs to replay")
    ap.add_argument("--rate", type=float, default=2.0, help="program arrivals per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--token-scale", type=float, default=0.1, help="multiply token counts")
    ap.add_argument("--max-output-tokens", type=int, default=32, help="cap per call")
    ap.add_argument("--policies", default="fcfs,plas", help="comma-separated")
    ap.add_argument("--model", default="builtin:tiny")
    ap.add_argument("--served-model", default=None, help="model name to send (with --url)")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--cpu-threads", type=int, default=1, help="0: torch default")
    ap.add_argument("--url", default=None, help="use a running server (one pass, no policy)")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                    help="extra `serve` flags (must come last)")  # fmt: skip
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from pyserve.model.tokenizer import load_tokenizer

    vocab = load_tokenizer(args.model).vocab_size
    programs = load_programs(args)
    policies = ["external"] if args.url else [p for p in args.policies.split(",") if p]
    for policy in policies:
        print(json.dumps(bench_policy(args, policy, programs, vocab)), flush=True)


if __name__ == "__main__":
    main()
