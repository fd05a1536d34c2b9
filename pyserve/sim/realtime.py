"""The simulated GPU in real time: the engine's executor under ``executor="sim"``.

``pyserve serve --executor sim --preset NAME`` runs the real engine (C++ scheduler, KV manager,
prefix cache, host tier, retention) and the real server, but no model. Each step,
:class:`RealtimeExecutor` charges the step the cost model's seconds for its batch on the preset's
GPU (the simulator's ``plan_seconds``) and sleeps until that much wall time has passed, so a step
that takes 23 ms on an H100 takes 23 ms here. Its output tokens are drawn as the simulator draws
them: output token k of a call with seed s is ``table[draw_at(s, k)]`` (SplitMix64 of (s, k)),
where ``table`` holds the tokenizer's plain ids (not special, printable ASCII text) and s is the
request's ``seed`` or a hash of its request id.

Output lengths: a request with ``max_tokens`` (or ``ignore_eos``) runs to ``max_tokens`` (finish
reason ``length``), as benchmark clients that send the trace's output length expect. Without
``max_tokens`` its planned length is drawn as the ShareGPT workload draws one (lognormal, mean
277, at most 4096; at least ``min_tokens + 1``), and the executor emits EOS as its last token
(finish reason ``stop``).

KV sizes come from the preset: GPU blocks = what fits the GPU after the weights
(``CostModel.kv_capacity_blocks``, unless ``num_gpu_blocks`` is set); host blocks = the host pool
(``swap_space_bytes``, ``--cpu-cache-gib``) over the preset's bytes per block. The context limit is
the preset model's (``ModelSpec.context_len``) unless ``max_model_len`` is lower.

Pacing and lag: the executor keeps the simulated GPU's clock. A step that runs a sequence of the
previous step (the engine stayed busy) starts when the previous step ended on that clock, so the
host's own time between steps (scheduling, reports, HTTP) is absorbed as long as it fits the
modelled step (whose ``step_overhead_s`` charges that host work); a step of new sequences only
starts when it is called. The executor sleeps until the step's end on that clock. When the host
is slower than the simulated GPU the wall clock falls behind: ``Engine.stats()`` reports
``sim_lag_seconds`` (wall minus simulated time at the end of the last step), its maximum
``sim_lag_seconds_max`` and ``sim_late_steps`` (steps whose host work alone outlasted them); the
server exports them (``pyserve:sim_step_lag_seconds``, ...) and a warning is logged at most every
10 s while the lag exceeds a step.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future

import numpy as np
import torch

from pyserve.engine.prompt_logprobs import PromptRows
from pyserve.model.sampler import SamplerOutput, SamplingBatch
from pyserve.sim.cost_model import CostModel
from pyserve.sim.executor import plan_seconds, reload_s_per_token
from pyserve.sim.trace import draw_at, stable_seed
from pyserve.sim.workloads import chat_output_tokens

log = logging.getLogger("pyserve.sim.realtime")
_LOG_EVERY_S = 10.0
_NO_EOS = -1  # _eos_at of a call that runs to max_tokens


def drawable_ids(tokenizer) -> np.ndarray:
    """The ids output tokens are drawn from: not special, decoding to printable ASCII text.
    All non-special ids when none decodes so."""
    special = tokenizer.all_special_ids
    plain = [i for i in range(tokenizer.vocab_size) if i not in special]
    text = [i for i in plain if (s := tokenizer.decode([i])) and s.isascii() and s.isprintable()]
    return np.asarray(text or plain, dtype=np.int64)


class RealtimeExecutor:
    """The engine's runner on a simulated GPU: cost-model time on the wall clock, drawn tokens.

    NOTE: per-call state (seed, prompt length, EOS position) is kept in numpy arrays indexed by
    the core's seq id, written by :meth:`admit`; a reused seq id is overwritten by its next call.
    """

    def __init__(self, cost: CostModel, table: np.ndarray, eos_token_id: int, vocab_size: int,
                 clock=time.monotonic, sleep=time.sleep) -> None:  # fmt: skip
        if table.shape[0] == 0:
            raise ValueError("no token ids to draw from")
        self.cost, self.table, self.eos = cost, table, int(eos_token_id)
        self.vocab_size = vocab_size
        self.clock, self.sleep = clock, sleep
        self.last_forward_s = 0.0  # the last step's modelled seconds
        self._seed = np.zeros(64, np.uint64)
        self._prompt = np.zeros(64, np.int64)
        self._eos_at = np.full(64, _NO_EOS, np.int64)  # output index of the call's EOS
        self._due = -math.inf  # wall time the simulated GPU ended the last step
        self._prev = np.zeros(0, np.int32)  # seq ids of the last step
        self._logged = -math.inf
        self._stats = {"sim_steps": 0, "sim_modeled_seconds_total": 0.0, "sim_lag_seconds": 0.0,
                       "sim_lag_seconds_max": 0.0, "sim_late_steps": 0}  # fmt: skip

    def admit(self, seq_id: int, request_id: str, params, num_prompt_tokens: int) -> None:
        """Records a new call's seed, prompt length and planned output length."""
        if seq_id >= self._seed.shape[0]:
            n = max(2 * self._seed.shape[0], seq_id + 1)
            self._seed = np.resize(self._seed, n)
            self._prompt = np.resize(self._prompt, n)
            self._eos_at = np.resize(self._eos_at, n)
        seed = params.seed if params.seed is not None else stable_seed("realtime", request_id)
        self._seed[seq_id] = seed % 2**64
        self._prompt[seq_id] = num_prompt_tokens
        if params.max_tokens is not None or params.ignore_eos:
            self._eos_at[seq_id] = _NO_EOS  # NOTE: the core ends it at max_tokens
        else:
            self._eos_at[seq_id] = max(chat_output_tokens(seed % 2**64), params.min_tokens + 1) - 1

    def stats(self) -> dict:
        """Pacing counters: steps, modelled seconds, lag (see the module docstring)."""
        return dict(self._stats)

    def execute(self, plan, batch: SamplingBatch | None,
                token_bitmask: torch.Tensor | Future | None = None,
                prompt_rows: PromptRows | None = None) -> SamplerOutput | None:  # fmt: skip
        """Charges the plan's cost-model time in wall time and returns the drawn tokens.
        ``prompt_rows`` (prompt logprobs) are scored under the draw's distribution: uniform over
        the plain ids (``-ln(T)``; other ids ``-inf``)."""
        called = self.clock()
        seqs = np.asarray(plan.seq_ids)
        # NOTE: a sequence of the previous step runs again: the engine stayed busy, so this step
        # starts on the simulated GPU when that one ended (host time between them is lag).
        busy = bool(np.isin(seqs, self._prev, assume_unique=True).any())
        self._prev = seqs.copy()
        start = self._due if busy else called
        seconds = plan_seconds(self.cost, plan)
        if prompt_rows is not None:
            prompt_rows.score(self._draw_logits)
        out = None
        if batch is not None:
            if isinstance(token_bitmask, Future):
                token_bitmask = token_bitmask.result()
            out = self._draw(plan, batch, token_bitmask)
        self._pace(start, seconds)
        return out

    def _pace(self, start: float, seconds: float) -> None:
        end = start + seconds
        now = self.clock()
        st = self._stats
        if now < end:
            self.sleep(end - now)
            now = self.clock()
        elif now > end:
            st["sim_late_steps"] += 1  # the host's work alone outlasted the simulated step
        self._due = end
        self.last_forward_s = seconds
        lag = max(0.0, now - end)  # NOTE: a sleep that overshoots is caught up by the next step
        st["sim_steps"] += 1
        st["sim_modeled_seconds_total"] += seconds
        st["sim_lag_seconds"] = lag
        st["sim_lag_seconds_max"] = max(st["sim_lag_seconds_max"], lag)
        if st["sim_late_steps"] and lag > seconds and now - self._logged > _LOG_EVERY_S:
            self._logged = now
            log.warning("the host is %.1f ms behind the simulated GPU (%d steps ran late; the "
                        "largest lag %.1f ms)", lag * 1e3, st["sim_late_steps"],
                        st["sim_lag_seconds_max"] * 1e3)  # fmt: skip

    def _draw(self, plan, batch: SamplingBatch, mask: torch.Tensor | None) -> SamplerOutput:
        rows = np.asarray(plan.sample_seq_idx)
        seqs = np.asarray(plan.seq_ids)[rows]
        k = np.asarray(plan.seq_lens)[rows].astype(np.int64) - self._prompt[seqs]
        t = self.table.shape[0]
        idx = draw_at(self._seed[seqs], k, 0, t).astype(np.int64)
        tokens = self.table[idx]
        at_eos = self._eos_at[seqs] == k
        tokens[at_eos] = self.eos
        logp = np.full(tokens.shape[0], -math.log(t), np.float32)
        logp[at_eos] = 0.0
        if batch.banned_token_ids is not None:
            self._unban(tokens, idx, batch.banned_token_ids.cpu().numpy())
        if mask is not None:
            self._constrain(tokens, idx, logp, mask.cpu().numpy())
        out = SamplerOutput(token_ids=torch.from_numpy(tokens))
        if batch.need_logprobs:
            out.logprobs = torch.from_numpy(logp)
        if batch.num_logprobs > 0:
            n = batch.num_logprobs
            alt = self.table[(idx[:, None] + np.arange(1, n)) % t]
            out.topn_ids = torch.from_numpy(np.concatenate([tokens[:, None], alt], axis=1))
            rest = np.where(at_eos, -np.inf, -math.log(t)).astype(np.float32)
            out.topn_logprobs = torch.from_numpy(
                np.concatenate([logp[:, None], np.repeat(rest[:, None], n - 1, axis=1)], axis=1))
        return out

    def _draw_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """Logits ``[r, V]`` of the draw: equal over the plain ids, -inf elsewhere."""
        logits = torch.full((rows.shape[0], self.vocab_size), -math.inf)
        logits[:, torch.from_numpy(self.table)] = 0.0
        return logits

    def _unban(self, tokens: np.ndarray, idx: np.ndarray, banned: np.ndarray) -> None:
        """Rows below min_tokens may not draw their banned ids: the next table id instead."""
        for i in np.nonzero((banned == tokens[:, None]).any(axis=1))[0]:
            j = int(idx[i])
            while tokens[i] in banned[i]:
                j = (j + 1) % self.table.shape[0]
                tokens[i] = self.table[j]

    def _constrain(self, tokens: np.ndarray, idx: np.ndarray, logp: np.ndarray,
                   mask: np.ndarray) -> None:  # fmt: skip
        """Structured rows: a drawn id the grammar forbids becomes an allowed one, chosen by the
        same draw (``idx`` modulo the allowed ids; plain ids first)."""
        vocab = np.arange(mask.shape[1] * 32)
        for i in range(tokens.shape[0]):
            words = mask[i].view(np.uint32)
            ok = ((words[vocab >> 5] >> (vocab & 31).astype(np.uint32)) & 1).astype(bool)
            if tokens[i] < ok.shape[0] and ok[tokens[i]]:
                continue
            plain = self.table[ok[self.table]] if self.table[-1] < ok.shape[0] else np.zeros(0)
            allowed = plain if plain.shape[0] else np.flatnonzero(ok)
            if allowed.shape[0] == 0:
                raise RuntimeError("the grammar allows no token")
            tokens[i] = allowed[int(idx[i]) % allowed.shape[0]]
            logp[i] = -math.log(allowed.shape[0])


def build_realtime_executor(config):
    """The engine's parts under ``executor="sim"`` (see the module docstring). ValueError without
    a preset, for an unknown one, or when one call of max_model_len cannot fit the KV."""
    from pyserve.engine.components import ExecutorParts, resolve_max_model_len
    from pyserve.model.tokenizer import load_tokenizer
    from pyserve.sim.presets import get_preset, preset_names

    mc, cache = config.model, config.cache
    if not mc.preset:
        raise ValueError("executor 'sim' needs a cost-model preset (--preset NAME; known: "
                         f"{', '.join(preset_names())}, or a preset .json)")  # fmt: skip
    preset = get_preset(mc.preset)
    cost = CostModel(preset, cache.block_size)
    tokenizer = load_tokenizer(mc.model)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {mc.model!r} has no EOS token")
    max_model_len = resolve_max_model_len(mc.max_model_len, preset.model.context_len)
    gpu_blocks = cache.num_gpu_blocks or cost.kv_capacity_blocks()
    if gpu_blocks * cache.block_size < max_model_len:
        raise ValueError(f"preset {preset.name!r} holds {gpu_blocks * cache.block_size} tokens of "
                         f"KV, less than max_model_len={max_model_len}: lower max_model_len")  # fmt: skip
    block_bytes = cache.block_size * preset.model.kv_bytes_per_token
    runner = RealtimeExecutor(cost, drawable_ids(tokenizer), tokenizer.eos_token_id,
                              tokenizer.vocab_size)
    reload = reload_s_per_token(cost, config.scheduler.max_num_batched_tokens)
    return ExecutorParts(
        runner=runner, tokenizer=tokenizer, vocab_size=tokenizer.vocab_size,
        max_model_len=max_model_len, eos_token_ids=[tokenizer.eos_token_id],
        device=torch.device("cpu"), num_gpu_blocks=gpu_blocks,
        num_cpu_blocks=int(cache.swap_space_bytes // block_bytes),
        core_options={"retention_reload_s_per_token": reload},
    )  # fmt: skip
