"""Load a Llama-family model from a Hugging Face folder (config.json + *.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from pyserve.model.config import ModelConfig
from pyserve.model.registry import get_model_class

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype, config: ModelConfig | None = None) -> torch.dtype:
    """Resolve ``dtype`` (a torch dtype, a name, or ``"auto"`` = the checkpoint's dtype)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    name = str(dtype).lower()
    if name == "auto":
        name = (config.torch_dtype if config is not None else None) or "float32"
        # NOTE: bfloat16 checkpoints run in float32 on CPU only when asked; "auto" keeps them.
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    return _DTYPES[name]


def resolve_model_path(model: str | Path) -> Path:
    """Turn ``builtin:<name>`` into its cache folder (building it once); check a folder exists."""
    text = str(model)
    if text.startswith("builtin:"):
        from pyserve.model.builtin import ensure_builtin

        return ensure_builtin(text.split(":", 1)[1])
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ValueError(f"model folder {text!r} does not exist (or use 'builtin:tiny')")
    return path


def load_model(
    model: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu"
) -> nn.Module:
    """Build the model named by ``config.json`` and fill it from the folder's safetensors files.

    Returns an ``nn.Module`` in eval mode with ``.config`` (:class:`ModelConfig`),
    ``forward(input_ids, positions, attn)`` and ``compute_logits(hidden)``.
    Raises ``ValueError`` for an unknown architecture, a missing, misshaped or unexpected tensor.
    """
    path = resolve_model_path(model)
    config = ModelConfig.from_folder(path)
    cls = get_model_class(config.architecture)
    torch_dtype = parse_dtype(dtype, config)
    dev = torch.device(device)
    with torch.device("meta"):
        net = cls(config)
    _materialize(net, torch_dtype, dev)
    load_safetensors_folder(net, path)
    return net.eval()


def _materialize(module: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Replace meta parameters by uninitialised real ones, keeping tied parameters tied."""
    memo: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            if id(param) not in memo:
                data = torch.empty(param.shape, dtype=dtype, device=device)
                memo[id(param)] = nn.Parameter(data, requires_grad=False)
            sub._parameters[name] = memo[id(param)]


def load_safetensors_folder(model: nn.Module, path: Path) -> None:
    """Copy every checkpoint tensor into ``model.hf_weight_targets()``; check completeness."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in model folder {str(path)!r}")
    targets = model.hf_weight_targets()
    seen: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name not in targets:
                    if model.ignored_hf_weights(name):
                        continue
                    raise ValueError(f"unexpected tensor {name!r} in {file.name}")
                tensor = f.get_tensor(name)
                target = targets[name]
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ValueError(
                        f"tensor {name!r} in {file.name} has shape {tuple(tensor.shape)}, "
                        f"the config expects {tuple(target.shape)}"
                    )
                target.copy_(tensor)
                seen.add(name)
    missing = [name for name in targets if name not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"checkpoint in {str(path)!r} is missing tensor {missing[0]!r}{more}")
