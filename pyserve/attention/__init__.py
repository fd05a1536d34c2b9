"""Attention backends: the interface, its per-step metadata and the torch reference and the C++ CPU kernel."""

from pyserve.attention.base import AttentionBackend, AttentionMetadata, build_attention_metadata
from pyserve.attention.cpu import CpuAttention
from pyserve.attention.reference import ReferenceAttention

__all__ = [
    "AttentionBackend",
    "AttentionMetadata",
    "CpuAttention",
    "ReferenceAttention",
    "build_attention_metadata",
]
