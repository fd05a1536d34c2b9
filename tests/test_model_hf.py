"""Logits and greedy tokens of pyserve's Llama-family models equal Hugging Face transformers'."""

from __future__ import annotations

import pytest
import torch
from paging import PageTable
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from pyserve.attention import ReferenceAttention, build_attention_metadata
from pyserve.kv import KVCache
from pyserve.model.loader import load_model

BLOCK = 4
NEW_TOKENS = 64
SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=256,
    initializer_range=0.1,
    bos_token_id=None,
    eos_token_id=None,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
CASES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "llama3-rope": (LlamaConfig, LlamaForCausalLM, {"rope_parameters": LLAMA3_ROPE}),
    "qwen2-tied": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
    "mistral": (MistralConfig, MistralForCausalLM, {"head_dim": 16, "sliding_window": 4096}),
}


def _save_hf(kind: str, folder) -> torch.nn.Module:
    cfg_cls, model_cls, extra = CASES[kind]
    torch.manual_seed(0)
    cfg = cfg_cls(**SMALL, **extra)
    model = model_cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    model.save_pretrained(folder)
    return model


class PagedRunner:
    """Drives a pyserve model through the reference backend with a shuffled page table."""

    def __init__(self, model, num_blocks: int = 64) -> None:
        cfg = model.config
        self.model = model
        dtype = model.embed_tokens.weight.dtype
        cache = KVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, BLOCK,
                        num_blocks, dtype=dtype)  # fmt: skip
        self.attn = ReferenceAttention(cache, cfg.num_attention_heads, cfg.head_dim)
        self.table = PageTable(num_blocks, BLOCK, seed=3)

    def step(self, decodes: dict, prefills: dict) -> torch.Tensor:
        """Run one step; returns logits for every token of the step."""
        plan = self.table.step(decodes, prefills)
        meta = build_attention_metadata(plan, BLOCK, "cpu")
        self.attn.plan(meta)
        hidden = self.model(torch.from_numpy(plan.input_ids).long(), meta.positions, self.attn)
        return self.model.compute_logits(hidden)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("kind", list(CASES))
def test_logits_and_greedy_match_transformers(kind, tmp_path):
    hf = _save_hf(kind, tmp_path)
    ours = load_model(tmp_path, "float32", "cpu")
    assert ours.config.architecture == CASES[kind][1].__name__
    prompt = torch.randint(
        0, SMALL["vocab_size"], (11,), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        hf_out = hf.generate(prompt[None], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=0)[0]  # fmt: skip
        hf_logits = hf(hf_out[None, :-1]).logits[0].float()
    hf_tokens = hf_out[len(prompt) :].tolist()

    runner = PagedRunner(ours)
    # Chunked prefill: 4 + 4 + 3 tokens, each chunk attending over its cached prefix.
    chunks = [prompt[i : i + 4].tolist() for i in range(0, len(prompt), 4)]
    prefill_logits = torch.cat([runner.step({}, {0: c}) for c in chunks])
    assert _rel_err(prefill_logits, hf_logits[: len(prompt)]) < 1e-4
    tokens = [int(prefill_logits[-1].argmax())]
    for i in range(NEW_TOKENS - 1):
        logits = runner.step({0: tokens[-1]}, {})[0]
        assert _rel_err(logits, hf_logits[len(prompt) + i]) < 1e-4, f"decode step {i}"
        tokens.append(int(logits.argmax()))
    assert tokens == hf_tokens
    assert len(set(tokens)) > 4  # the reference output is not degenerate


def test_batched_sequences_match_single_runs(tmp_path):
    """Two prompts sharing steps (one decoding while the other prefills) keep their logits."""
    hf = _save_hf("qwen2-tied", tmp_path)
    ours = load_model(tmp_path, "float32", "cpu")
    g = torch.Generator().manual_seed(5)
    a, b = (torch.randint(0, 256, (n,), generator=g).tolist() for n in (9, 14))
    with torch.no_grad():
        ref_a = hf(torch.tensor([a + [7, 8]])).logits[0]
        ref_b = hf(torch.tensor([b])).logits[0]
    runner = PagedRunner(ours)
    la = runner.step({}, {0: a})
    assert _rel_err(la, ref_a[:9]) < 1e-4
    mixed = runner.step({0: 7}, {1: b[:6]})  # decode of a, first chunk of b
    assert _rel_err(mixed[0], ref_a[9]) < 1e-4
    assert _rel_err(mixed[1:], ref_b[:6]) < 1e-4
    mixed = runner.step({0: 8}, {1: b[6:]})
    assert _rel_err(mixed[0], ref_a[10]) < 1e-4
    assert _rel_err(mixed[1:], ref_b[6:]) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loads_close_to_float32(dtype, tmp_path):
    _save_hf("llama", tmp_path)
    ref = load_model(tmp_path, "float32", "cpu")
    half = load_model(tmp_path, dtype, "cpu")
    assert half.embed_tokens.weight.dtype == dtype
    ids = list(range(3, 40))
    ref_logits = PagedRunner(ref).step({}, {0: ids})
    half_logits = PagedRunner(half).step({}, {0: ids})
    assert half_logits.dtype == torch.float32
    assert _rel_err(half_logits, ref_logits) < 5e-2


@pytest.mark.parametrize("rope", [LLAMA3_ROPE, {"rope_type": "linear", "factor": 4.0}])
def test_rope_scaling_frequencies_match_transformers(rope):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from pyserve.model.config import ModelConfig
    from pyserve.model.layers import rope_inv_freq

    hf_cfg = LlamaConfig(**SMALL, rope_parameters={"rope_theta": 10000.0, **rope})
    hf_cfg.architectures = ["LlamaForCausalLM"]
    ref, _ = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_cfg, torch.device("cpu"))
    cfg = ModelConfig.from_dict(hf_cfg.to_dict())
    ours = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    unscaled = rope_inv_freq(cfg.head_dim, cfg.rope_theta, type(cfg.rope_scaling)())
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=0)
    assert not torch.allclose(ours, unscaled)  # the scaling is exercised
