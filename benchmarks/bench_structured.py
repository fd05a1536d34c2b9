"""Cost of structured outputs on this machine.

1. Masking cost per step at batch 64 under a 20-field JSON schema: xgrammar's batch bitmask
   fill, the sampler's mask application and the matchers' advance, in µs per step, on
   builtin:tiny's tokenizer (512 tokens) and on random vocabularies of 32k and 128k tokens.
2. Offline throughput (output tokens/s) and decode step time of LLM.generate on builtin:tiny,
   64 requests: without the schema (same output length, ignore_eos), with it (mask filled on a
   worker thread while the model runs), and with it filled on the engine thread.

    python benchmarks/bench_structured.py [--batch 64] [--steps 400] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import string
import time

import torch

from pyserve import LLM, SamplingParams, StructuredOutputsParams
from pyserve.model.sampler import apply_token_bitmask
from pyserve.structured.compiler import tokenizer_info
from pyserve.structured.manager import StructuredOutputManager


def schema_20() -> dict:
    """20 required fields cycling integer / enum / boolean / short string."""
    kinds = [{"type": "integer", "minimum": 0, "maximum": 999}, {"enum": ["red", "green", "blue"]},
             {"type": "boolean"}, {"type": "string", "maxLength": 6}]  # fmt: skip
    props = {f"field_{i}": kinds[i % 4] for i in range(20)}
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}  # fmt: skip


def synthetic_info(vocab: int, seed: int = 0):
    """A byte-level-like vocabulary of ``vocab`` tokens: the 256 bytes, then random unique
    strings of 2-8 printable characters (id 0 is the stop token)."""
    import random

    import xgrammar as xgr

    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " " * 8
    words = [bytes([b]) for b in range(256)]
    seen = set(words)
    while len(words) < vocab:
        w = "".join(rng.choices(alphabet, k=rng.randint(2, 8))).encode()
        if w not in seen:
            seen.add(w)
            words.append(w)
    return xgr.TokenizerInfo(words, xgr.VocabType.RAW, stop_token_ids=[0])


def masking_cost(info, batch: int, steps: int) -> dict:
    """µs per step of fill / apply / accept for ``batch`` matchers walking the schema."""
    mgr = StructuredOutputManager(info)
    grammar = mgr.compile(StructuredOutputsParams(json=schema_20()))
    gen = torch.Generator().manual_seed(0)
    fill, apply, accept = [], [], []
    rows = list(range(batch))
    for r in rows:
        mgr.add(r, grammar)
    done = 0
    for _ in range(steps):
        t0 = time.perf_counter()
        mask = mgr.bitmask_for(rows)
        t1 = time.perf_counter()
        logits = apply_token_bitmask(torch.rand(batch, mgr.vocab_size, generator=gen), mask)
        t2 = time.perf_counter()
        tokens = logits.argmax(dim=1).tolist()
        t3 = time.perf_counter()
        ended = mgr.accept(rows, tokens)
        t4 = time.perf_counter()
        fill.append(t1 - t0), apply.append(t2 - t1), accept.append(t4 - t3)
        for r in ended:  # restart a finished matcher so the batch stays full
            done += 1
            mgr.remove(r)
            mgr.add(r, grammar)
    us = lambda xs: round(1e6 * statistics.median(xs), 1)  # noqa: E731
    return {"fill_us": us(fill), "apply_us": us(apply), "accept_us": us(accept),
            "total_us": round(us(fill) + us(apply) + us(accept), 1), "objects_completed": done}  # fmt: skip


def throughput(llm: LLM, batch: int, structured: bool, sync_fill: bool = False) -> dict:
    so = StructuredOutputsParams(json=schema_20()) if structured else None
    # NOTE: the plain run ignores EOS and is capped at the structured run's mean length.
    params = [SamplingParams(max_tokens=512, seed=i, structured_outputs=so, ignore_eos=not so)
              for i in range(batch)]  # fmt: skip
    if not structured:
        params = [SamplingParams(max_tokens=throughput.mean_len, seed=i, ignore_eos=True)
                  for i in range(batch)]  # fmt: skip
    step_s = []
    eng = llm.engine
    orig = eng.step
    if sync_fill:  # the mask is filled on the engine thread, after the forward
        mgr = eng._structured()
        mgr.fill_async = mgr.bitmask_for

    def timed_step():
        t = time.perf_counter()
        out = orig()
        if eng.last_step.get("num_tokens") == batch:  # pure decode steps at full batch
            step_s.append(time.perf_counter() - t)
        return out

    eng.step = timed_step
    t0 = time.perf_counter()
    outs = llm.generate(["Describe the weather."] * batch, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    eng.step = orig
    if sync_fill:
        del mgr.fill_async
    tokens = sum(len(o.token_ids) for o in outs)
    if structured:
        throughput.mean_len = max(1, round(tokens / batch))
        valid = sum(o.finish_reason == "stop" for o in outs)
    else:
        valid = None
    return {"structured": structured, "mask_filled": "engine thread" if sync_fill else
            "worker thread, during the forward" if structured else None, "requests": batch, "output_tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1),
            "decode_step_ms": round(1e3 * statistics.median(step_s), 3) if step_s else None,
            "finished_stop": valid}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument(
        "--synthetic-vocab",
        type=int,
        nargs="*",
        default=[32000, 128000],
        help="also time masking over random vocabularies of these sizes",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM("builtin:tiny", kv_cache_bytes=64 << 20)
    llm.generate(["warm up"], SamplingParams(max_tokens=4), use_tqdm=False)
    eng = llm.engine
    infos = {"builtin:tiny": tokenizer_info(eng.tokenizer, eng.model.config.vocab_size,
                                            eng.eos_token_ids)}  # fmt: skip
    for v in args.synthetic_vocab:
        infos[f"synthetic-{v}"] = synthetic_info(v)
    for name, info in infos.items():
        cost = masking_cost(info, args.batch, args.steps)
        print(json.dumps({"case": "masking_per_step", "tokenizer": name, "batch": args.batch,
                          "vocab": info.vocab_size, **cost}))  # fmt: skip
    with_so = throughput(llm, args.batch, True)
    sync = throughput(llm, args.batch, True, sync_fill=True)
    without = throughput(llm, args.batch, False)
    for row in (without, with_so, sync):
        print(json.dumps({"case": "offline_throughput", **row}))


if __name__ == "__main__":
    main()
