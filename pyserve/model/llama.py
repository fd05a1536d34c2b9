"""Llama-family decoder (Llama 2/3, Qwen2/2.5 with q/k/v bias, Mistral): GQA, RoPE, SwiGLU."""

from __future__ import annotations

import torch
from torch import nn

from pyserve.attention.base import AttentionBackend
from pyserve.model.config import ModelConfig
from pyserve.model.layers import RMSNorm, RotaryEmbedding, SwiGLUMLP, apply_rope
from pyserve.model.registry import register_model


class LlamaAttention(nn.Module):
    """Self-attention with fused q/k/v projection; the paged attention itself is the backend's."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        # NOTE: qkv_proj rows are [q (Hq*D) | k (Hkv*D) | v (Hkv*D)], as HF q/k/v_proj stacked.
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size,
                                  bias=cfg.attention_bias)  # fmt: skip
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.o_proj_bias)

    def forward(self, x: torch.Tensor, rope: tuple, attn: AttentionBackend) -> torch.Tensor:
        """``x [T, H]`` → ``[T, H]``."""
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        cos, sin = rope
        q = apply_rope(q.view(t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(t, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        out = attn.forward(self.layer_idx, q, k, v)
        return self.o_proj(out.reshape(t, self.q_size))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention block followed by a pre-norm SwiGLU block."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)

    def forward(self, x: torch.Tensor, rope: tuple, attn: AttentionBackend) -> torch.Tensor:
        """Residual stream ``x [T, H]`` → ``[T, H]``."""
        x = x + self.self_attn(self.input_layernorm(x), rope, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


@register_model("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
class LlamaForCausalLM(nn.Module):
    """Decoder-only causal LM over flat token batches (sequences are told apart by the backend)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    @torch.inference_mode()
    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionBackend
    ) -> torch.Tensor:
        """Run ``input_ids [T]`` at ``positions [T]`` (int64); returns final-norm hidden ``[T, H]``.

        NOTE: ``attn`` must already be planned for this step; it writes each layer's K/V.
        """
        x = self.embed_tokens(input_ids)
        rope = self.rotary(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, attn)
        return self.norm(x)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, V]`` in float32 for hidden rows ``[N, H]``."""
        return self.lm_head(hidden).float()

    def hf_weight_targets(self) -> dict[str, torch.Tensor]:
        """Map each Hugging Face checkpoint tensor name to the tensor (or slice) it fills.

        NOTE: slices of fused parameters are views, so ``copy_`` into them fills the parameter.
        """
        cfg = self.config
        targets: dict[str, torch.Tensor] = {
            "model.embed_tokens.weight": self.embed_tokens.weight.data,
            "model.norm.weight": self.norm.weight.data,
        }
        if not cfg.tie_word_embeddings:
            targets["lm_head.weight"] = self.lm_head.weight.data
        for i, layer in enumerate(self.layers):
            targets.update(_layer_targets(f"model.layers.{i}.", layer, cfg))
        return targets

    def ignored_hf_weights(self, name: str) -> bool:
        """Checkpoint tensors that are legitimately present but unused."""
        if name.endswith("rotary_emb.inv_freq"):
            return True
        return self.config.tie_word_embeddings and name == "lm_head.weight"


def _layer_targets(prefix: str, layer: LlamaDecoderLayer, cfg: ModelConfig) -> dict:
    attn, mlp = layer.self_attn, layer.mlp
    q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    out = {
        prefix + "input_layernorm.weight": layer.input_layernorm.weight.data,
        prefix + "post_attention_layernorm.weight": layer.post_attention_layernorm.weight.data,
        prefix + "self_attn.o_proj.weight": attn.o_proj.weight.data,
        prefix + "mlp.down_proj.weight": mlp.down_proj.weight.data,
    }
    kinds = ["weight"] + (["bias"] if cfg.attention_bias else [])
    for kind in kinds:
        fused = getattr(attn.qkv_proj, kind).data
        out[f"{prefix}self_attn.q_proj.{kind}"] = fused[:q]
        out[f"{prefix}self_attn.k_proj.{kind}"] = fused[q : q + kv]
        out[f"{prefix}self_attn.v_proj.{kind}"] = fused[q + kv :]
    if cfg.o_proj_bias:
        out[prefix + "self_attn.o_proj.bias"] = attn.o_proj.bias.data
    for kind in ["weight"] + (["bias"] if cfg.mlp_bias else []):
        fused = getattr(mlp.gate_up, kind).data
        out[f"{prefix}mlp.gate_proj.{kind}"] = fused[:inter]
        out[f"{prefix}mlp.up_proj.{kind}"] = fused[inter:]
        if kind == "bias":
            out[prefix + "mlp.down_proj.bias"] = mlp.down_proj.bias.data
    return out
