"""Built-in cost-model presets: published hardware specs times documented efficiency factors.

Published numbers (vendor data sheets):

- H100 SXM5 80GB: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3, 81,559 MiB reported by nvidia-smi,
  PCIe gen5 x16 host link (63 GB/s per direction), NVLink 4 (450 GB/s per direction).
- A100 SXM4 80GB: 312 TFLOP/s dense BF16, 2.039 TB/s HBM2e, 81,920 MiB, PCIe gen4 x16
  (31.5 GB/s per direction).

Attainable fractions (what kernels really reach; calibration replaces them with measurements):

- ``matmul``: large BF16 GEMMs reach ~60-70% of peak on H100 and ~70% on A100.
- ``attention``: FlashAttention-2/FlashInfer prefill kernels reach ~40-55% of peak.
- ``hbm``: streaming kernels (decode GEMV, paged KV reads) reach ~80% of HBM bandwidth.
- ``host_link``: pinned-memory bulk copies reach ~80% of the PCIe link.
- ``tp_scaling``: tensor-parallel GEMMs on 4 GPUs lose ~10% to smaller shapes and sync.
- ``interconnect``: NCCL ring all-reduce reaches ~80% of the NVLink bus bandwidth.

Non-GEMM kernels (RMSNorm, RoPE, SiLU-mul, residual adds) stream activations through HBM; their
bytes per token give ``token_overhead_s``. Tensor parallelism adds two all-reduces of the hidden
state per layer: their latency goes to ``step_overhead_s`` and their bytes to ``token_overhead_s``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pyserve.sim.cost_model import CostParams, HardwareSpec, ModelSpec, Preset

GiB = 2**30
MiB = 2**20

LLAMA_3_1_8B = ModelSpec(
    name="Llama-3.1-8B",
    num_layers=32,
    hidden_size=4096,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    intermediate_size=14336,
    vocab_size=128256,
)
LLAMA_3_1_70B = ModelSpec(
    name="Llama-3.1-70B",
    num_layers=80,
    hidden_size=8192,
    num_heads=64,
    num_kv_heads=8,
    head_dim=128,
    intermediate_size=28672,
    vocab_size=128256,
)

H100_SXM_80GB = HardwareSpec(
    name="H100-SXM-80GB",
    peak_flops=989e12,
    hbm_bandwidth=3.35e12,
    hbm_bytes=81559 * MiB,
    host_link_bandwidth=63e9,
    interconnect_bus_bandwidth=450e9,
    interconnect_latency_s=10e-6,
)
A100_SXM_80GB = HardwareSpec(
    name="A100-SXM-80GB",
    peak_flops=312e12,
    hbm_bandwidth=2.039e12,
    hbm_bytes=81920 * MiB,
    host_link_bandwidth=31.5e9,
    interconnect_bus_bandwidth=300e9,
    interconnect_latency_s=12e-6,
)


@dataclass(frozen=True)
class Efficiency:
    """Attainable fractions of the published peaks (see the module docstring)."""

    matmul: float = 0.65
    attention: float = 0.5
    hbm: float = 0.8
    host_link: float = 0.8
    tp_scaling: float = 0.9
    interconnect: float = 0.8
    step_overhead_s: float = 1.0e-3  # scheduling, kernel launches, sampling, host sync
    swap_latency_s: float = 20e-6  # one batched gather + bulk copy launch


def activation_bytes_per_token(model: ModelSpec, tp: int) -> float:
    """HBM traffic of the non-GEMM kernels per token per GPU (reads + writes, all layers).

    Per layer: ~12 hidden-sized passes (2 RMSNorms, 2 residual adds, GEMM in/out), 3 passes over
    q/k/v (write, RoPE read+write) and 6 intermediate-sized passes (gate/up write, SiLU-mul read
    and write, down read). The q/k/v and MLP parts are sharded across the TP group.
    """
    qkv = (model.num_heads + 2 * model.num_kv_heads) * model.head_dim
    per_layer = 12 * model.hidden_size + (3 * qkv + 6 * model.intermediate_size) / tp
    return per_layer * model.num_layers * model.dtype_bytes


def derive_params(model: ModelSpec, hw: HardwareSpec, eff: Efficiency) -> CostParams:
    """Whole-deployment cost coefficients from specs and efficiency factors."""
    tp = hw.num_gpus
    scale = tp * (eff.tp_scaling if tp > 1 else 1.0)
    per_gpu_bw = hw.hbm_bandwidth * eff.hbm
    token_s = activation_bytes_per_token(model, tp) / per_gpu_bw
    step_s = eff.step_overhead_s
    if tp > 1:
        # NOTE: ring all-reduce moves 2 (tp-1)/tp of the message per GPU; 2 all-reduces per layer.
        allreduces = 2 * model.num_layers
        ring_bytes = 2 * (tp - 1) / tp * model.hidden_size * model.dtype_bytes
        token_s += allreduces * ring_bytes / (hw.interconnect_bus_bandwidth * eff.interconnect)
        step_s += allreduces * hw.interconnect_latency_s
    return CostParams(
        linear_flops_per_s=hw.peak_flops * eff.matmul * scale,
        attn_flops_per_s=hw.peak_flops * eff.attention * scale,
        hbm_bytes_per_s=per_gpu_bw * scale,
        host_bytes_per_s=hw.host_link_bandwidth * eff.host_link * tp,
        step_overhead_s=step_s,
        token_overhead_s=token_s,
        swap_latency_s=eff.swap_latency_s,
    )


def _tp(hw: HardwareSpec, n: int) -> HardwareSpec:
    return HardwareSpec(**{**asdict(hw), "name": f"{n}x{hw.name}", "num_gpus": n})


def _make(name: str, model: ModelSpec, hw: HardwareSpec, eff: Efficiency, desc: str) -> Preset:
    return Preset(name, model, hw, derive_params(model, hw, eff), description=desc)


def _builtin() -> dict[str, Preset]:
    h100, a100 = Efficiency(), Efficiency(matmul=0.7)
    tp4 = _tp(H100_SXM_80GB, 4)
    return {
        p.name: p
        for p in (
            _make("llama3-8b-h100", LLAMA_3_1_8B, H100_SXM_80GB, h100, "Llama-3.1-8B, 1x H100"),
            _make("llama3-8b-a100", LLAMA_3_1_8B, A100_SXM_80GB, a100, "Llama-3.1-8B, 1x A100"),
            _make("llama3-70b-4xh100", LLAMA_3_1_70B, tp4, h100, "Llama-3.1-70B, 4x H100 TP"),
        )
    }


PRESETS: dict[str, Preset] = _builtin()


def preset_names() -> list[str]:
    """Names accepted by :func:`get_preset`."""
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    """A built-in preset by name, or a preset JSON file written by :func:`save_preset`."""
    if name in PRESETS:
        return PRESETS[name]
    if name.endswith(".json") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"preset file {name!r} does not exist")
        return load_preset(path)
    raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")


def preset_to_dict(preset: Preset) -> dict:
    """JSON-ready form of a preset (infinite rates become the string 'inf')."""
    d = asdict(preset)
    d["params"] = {k: ("inf" if v == math.inf else v) for k, v in d["params"].items()}
    return d


def preset_from_dict(d: dict) -> Preset:
    """Inverse of :func:`preset_to_dict`; raises ValueError naming a missing or bad field."""
    try:
        params = {k: float(v) for k, v in d["params"].items()}
        return Preset(
            name=str(d["name"]),
            model=ModelSpec(**d["model"]),
            hardware=HardwareSpec(**d["hardware"]),
            params=CostParams(**params),
            gpu_memory_utilization=float(d.get("gpu_memory_utilization", 0.9)),
            activation_reserve_bytes=float(d.get("activation_reserve_bytes", 2 * GiB)),
            description=str(d.get("description", "")),
        )
    except KeyError as e:
        raise ValueError(f"preset is missing field {e.args[0]!r}") from None
    except (TypeError, AttributeError) as e:
        raise ValueError(f"bad preset: {e}") from None


def save_preset(preset: Preset, path: str | Path) -> None:
    """Write a preset as JSON."""
    Path(path).write_text(json.dumps(preset_to_dict(preset), indent=2) + "\n")


def load_preset(path: str | Path) -> Preset:
    """Read a preset written by :func:`save_preset`."""
    try:
        d = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"preset file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"preset file {str(path)!r} must hold a JSON object")
    return preset_from_dict(d)
