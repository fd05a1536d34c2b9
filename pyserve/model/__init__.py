"""Model execution: Llama-family models, HF folder loading, sampler, tokenizer, builtin:tiny."""

from pyserve.model.config import ModelConfig, RopeScaling
from pyserve.model.loader import load_model, parse_dtype, resolve_model_path
from pyserve.model.registry import get_model_class, register_model, supported_architectures
from pyserve.model.sampler import Sampler, SamplerOutput, SamplingBatch
from pyserve.model.tokenizer import (
    IncrementalDetokenizer,
    StopStringMatcher,
    Tokenizer,
    load_tokenizer,
)

__all__ = [
    "IncrementalDetokenizer",
    "ModelConfig",
    "RopeScaling",
    "Sampler",
    "SamplerOutput",
    "SamplingBatch",
    "StopStringMatcher",
    "Tokenizer",
    "get_model_class",
    "load_model",
    "load_tokenizer",
    "parse_dtype",
    "register_model",
    "resolve_model_path",
    "supported_architectures",
]
