"""Building blocks of Llama-family decoders: RMSNorm, rotary embeddings, SwiGLU MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pyserve.model.config import RopeScaling


class RMSNorm(nn.Module):
    """Root-mean-square norm; statistics in float32, result cast back to the input dtype."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x [T, H]``."""
        dtype = x.dtype
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            # torch's fused kernel: one pass instead of five, the same float32 result
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` (float32, CPU), with linear / Llama-3 scaling."""
    # NOTE: explicit CPU device: models are built under a ``torch.device("meta")`` context.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type != "llama3":
        return inv_freq
    # Llama 3: long wavelengths are slowed by `factor`, short ones kept, the band in between
    # interpolated linearly in (context / wavelength).
    ctx = scaling.original_max_position_embeddings
    long_wave = ctx / scaling.low_freq_factor
    short_wave = ctx / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    slowed = torch.where(wavelen > long_wave, inv_freq / scaling.factor, inv_freq)
    mix = (ctx / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - mix) * slowed / scaling.factor + mix * slowed
    in_band = (wavelen >= short_wave) & (wavelen <= long_wave)
    return torch.where(in_band, blended, slowed)


class RotaryEmbedding(nn.Module):
    """Computes ``cos``/``sin`` tables for the positions of one step (non-interleaved RoPE)."""

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling) -> None:
        super().__init__()
        # NOTE: a plain attribute, not a buffer: the loader materialises modules from the meta
        # device and only fills parameters; this stays an exact float32 CPU tensor until used.
        self._inv_freq = rope_inv_freq(head_dim, theta, scaling)
        self._inv_freq_dev: dict[torch.device, torch.Tensor] = {}

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Return ``(cos, sin)``, each ``[T, 1, head_dim]`` in ``dtype``, for ``positions [T]``."""
        dev = positions.device
        inv = self._inv_freq_dev.get(dev)
        if inv is None:
            inv = self._inv_freq_dev.setdefault(dev, self._inv_freq.to(dev))
        freqs = positions.float()[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [T, heads, D]`` by the tables from :class:`RotaryEmbedding` (half-split layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class SwiGLUMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate and up fused into one matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        # NOTE: gate_up.weight rows [0, I) are HF gate_proj, rows [I, 2I) are HF up_proj.
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to ``x [T, H]``."""
        gate, up = self.gate_up(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)
