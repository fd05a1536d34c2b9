"""A vLLM scheduler with no model, as vLLM's own scheduler unit tests build one: a real
VllmConfig on the builtin:tiny folder (no download), a fake KV cache config, fake requests and
fake model-runner outputs. Import only after ``pytest.importorskip("vllm")``."""

from __future__ import annotations

import torch
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from pyserve.model.builtin import ensure_builtin

BLOCK = 16
init_none_hash(sha256)
_HASHER = get_request_block_hasher(BLOCK, sha256)


class FakeClock:
    """Deterministic seconds for the plugin's step timing."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(cls=None, pyserve: dict | None = None, *, max_num_seqs=2, max_num_batched_tokens=256,
         num_blocks=64, max_model_len=256, async_scheduling=False, policy="fcfs"):  # fmt: skip
    """A scheduler of class ``cls`` (default vLLM's Scheduler); pyserve's config goes to
    ``additional_config["pyserve"]``. A ProgramScheduler gets a FakeClock (``s.clock``)."""
    mc = ModelConfig(model=str(ensure_builtin("tiny")), dtype="float32", seed=0,
                     max_model_len=max_model_len, skip_tokenizer_init=True)  # fmt: skip
    sc = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                         max_model_len=max_model_len, enable_chunked_prefill=True,
                         async_scheduling=async_scheduling, is_encoder_decoder=False,
                         policy=policy)  # fmt: skip
    cc = CacheConfig(block_size=BLOCK, enable_prefix_caching=True)
    cc.num_gpu_blocks = num_blocks
    extra = {} if pyserve is None else {"pyserve": pyserve}
    vc = VllmConfig(scheduler_config=sc, model_config=mc, cache_config=cc, additional_config=extra)
    # NOTE: the CPU platform turns async scheduling off; a GPU platform keeps it on.
    vc.scheduler_config.async_scheduling = async_scheduling
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                       kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])  # fmt: skip
    s = (cls or Scheduler)(vllm_config=vc, kv_cache_config=kv, block_size=BLOCK,
                           structured_output_manager=StructuredOutputManager(vc))  # fmt: skip
    if hasattr(s, "program_policy"):
        s.clock = FakeClock()
        s._clock0 = s.clock()
    return s


def request(rid: str, prompt_len: int, max_tokens: int, program: str | None = None,
            arrival: float = 0.0, **extra) -> Request:  # fmt: skip
    """A fake request; ``program`` goes to extra_args["program_id"]."""
    args = dict(extra)
    if program is not None:
        args["program_id"] = program
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args=args or None)
    return Request(rid, list(range(1, prompt_len + 1)), params, None, arrival_time=arrival,
                   block_hasher=_HASHER)  # fmt: skip


def step(s, seconds: float = 0.01, token: int = 7) -> tuple[dict[str, int], set[str]]:
    """One schedule() + fake execution of ``seconds`` + update_from_output(); returns the
    scheduled tokens per request and the ids that finished."""
    out = s.schedule()
    if hasattr(s, "clock"):
        s.clock.t += seconds
    ids = list(out.num_scheduled_tokens)
    sampled = [[] if s.requests[r].is_prefill_chunk else [token] for r in ids]
    mro = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                            sampled_token_ids=sampled)  # fmt: skip
    outputs = s.update_from_output(out, mro)
    done = {o.request_id for eco in outputs.values() for o in eco.outputs if o.finish_reason}
    return dict(out.num_scheduled_tokens), done
