"""Maps a config.json ``architectures`` name to the model class that implements it.

Adding an architecture is one file: a module that decorates its class with
:func:`register_model`, listed in ``_ARCH_MODULES`` (or imported before loading).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}
_ARCH_MODULES = ("pyserve.model.llama",)


def register_model(*architectures: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a model class under one or more architecture names."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        for name in architectures:
            _REGISTRY[name] = cls
        return cls

    return wrap


def _ensure_loaded() -> None:
    for module in _ARCH_MODULES:  # NOTE: a no-op after the first import (sys.modules)
        importlib.import_module(module)


def supported_architectures() -> list[str]:
    """Names of all registered architectures."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_model_class(architecture: str) -> type[nn.Module]:
    """The class for ``architecture``; ``ValueError`` listing the supported ones otherwise."""
    _ensure_loaded()
    try:
        return _REGISTRY[architecture]
    except KeyError:
        raise ValueError(
            f"unknown model architecture {architecture!r}; supported: "
            f"{', '.join(supported_architectures())}"
        ) from None
