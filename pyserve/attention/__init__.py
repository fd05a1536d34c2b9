"""Attention backends: the interface, its per-step metadata and the torch reference."""

from pyserve.attention.base import AttentionBackend, AttentionMetadata, build_attention_metadata
from pyserve.attention.reference import ReferenceAttention

__all__ = [
    "AttentionBackend",
    "AttentionMetadata",
    "ReferenceAttention",
    "build_attention_metadata",
]
