"""Bad model folders and bad sampling parameters raise clear ValueErrors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from pyserve.model.loader import load_model, parse_dtype
from pyserve.model.registry import get_model_class, supported_architectures
from pyserve.sampling_params import SamplingParams


@pytest.fixture
def hf_dir(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    return tmp_path


def _edit_weights(folder, fn):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path)


def _edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_good_folder_loads(hf_dir):
    model = load_model(hf_dir)
    assert model.config.num_hidden_layers == 2
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"} <= set(
        supported_architectures()
    )


def test_unknown_architecture(hf_dir):
    _edit_config(hf_dir, architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(ValueError, match="GPTNeoXForCausalLM"):
        load_model(hf_dir)
    with pytest.raises(ValueError, match="unknown model architecture"):
        get_model_class("Nope")


def test_missing_tensor_is_named(hf_dir):
    _edit_weights(hf_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(
        ValueError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"
    ):
        load_model(hf_dir)


def test_misshaped_tensor_is_named(hf_dir):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][
            :8
        ]

    _edit_weights(hf_dir, shrink)
    with pytest.raises(
        ValueError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight'.*\(8, 32\)"
    ):
        load_model(hf_dir)


def test_unexpected_tensor_and_sharded_checkpoint(hf_dir):
    tensors = load_file(hf_dir / "model.safetensors")
    names = sorted(tensors)
    (hf_dir / "model.safetensors").unlink()
    save_file({n: tensors[n] for n in names[:10]}, hf_dir / "model-00001-of-00002.safetensors")
    save_file({n: tensors[n] for n in names[10:]}, hf_dir / "model-00002-of-00002.safetensors")
    assert load_model(hf_dir).config.vocab_size == 64  # many shards load
    save_file({"model.extra.weight": torch.zeros(2)}, hf_dir / "zz.safetensors")
    with pytest.raises(ValueError, match="model.extra.weight"):
        load_model(hf_dir)


def test_bad_folder_config_and_dtype(tmp_path, hf_dir):
    # NOTE: hf_dir is tmp_path itself (same fixture instance).
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_model(empty)
    with pytest.raises(ValueError, match="dtype"):
        parse_dtype("int8")
    _edit_config(hf_dir, num_key_value_heads=3)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        load_model(hf_dir)
    _edit_config(
        hf_dir, num_key_value_heads=2, rope_parameters={"rope_type": "yarn", "factor": 2.0}
    )
    with pytest.raises(ValueError, match="yarn"):
        load_model(hf_dir)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"n": 0}, "n"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"logprobs": -1}, "logprobs"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_invalid_sampling_params(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_valid_sampling_params_normalise():
    p = SamplingParams(stop="END", stop_token_ids=[5], top_k=-1, temperature=0)
    assert p.stop == ("END",) and p.stop_token_ids == (5,) and p.greedy
