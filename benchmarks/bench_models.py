"""Random-weight Llama folders for the offline benchmarks, built once offline and cached.

- ``tiny``: hidden 256, 4 layers, 8/4 heads (head_dim 32), vocab 512, builtin:tiny's tokenizer.
- ``125m``: hidden 768, 12 layers, 12/4 heads (head_dim 64), vocab 32000, a word-level
  tokenizer of 32000 entries (so every sampled id detokenizes, in pyserve and in vLLM alike).

Both load in pyserve and in vLLM (float32). ``PYSERVE_CACHE`` chooses the cache root.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4),
    "125m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4),
}  # fmt: skip


def model_folder(name: str) -> str:
    """The folder of benchmark model ``name`` (``tiny`` or ``125m``), built if missing."""
    if name not in SHAPES:
        raise ValueError(f"unknown benchmark model {name!r}; choose from {sorted(SHAPES)}")
    root = Path(os.environ.get("PYSERVE_CACHE", Path.home() / ".cache" / "pyserve"))
    folder = root / f"bench-llama-{name}-v1"
    if not (folder / "config.json").exists():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        _build(tmp, SHAPES[name])
        tmp.rename(folder)
    return str(folder)


def _build(folder: Path, shape: dict) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pyserve.model.builtin import ensure_builtin

    torch.manual_seed(0)
    tiny = Path(ensure_builtin("tiny"))
    cfg = LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=False,
                      bos_token_id=None, eos_token_id=json.loads(
                          (tiny / "config.json").read_text())["eos_token_id"])  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    if shape["vocab_size"] == 512:  # builtin:tiny's byte-level tokenizer has 512 entries
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny / name, folder / name)
    else:
        _word_tokenizer(shape["vocab_size"]).save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "w2",
             "pad_token": "w0", "clean_up_tokenization_spaces": False}))  # fmt: skip


def _word_tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return tok
