"""builtin:tiny (deterministic folder, varied greedy output), tokenizer, streaming, stop strings."""

from __future__ import annotations

import hashlib

import pytest
import torch
from paging import PageTable

from pyserve.attention import ReferenceAttention, build_attention_metadata
from pyserve.kv import KVCache
from pyserve.model.builtin import ensure_builtin, write_tiny
from pyserve.model.loader import load_model
from pyserve.model.tokenizer import IncrementalDetokenizer, StopStringMatcher, load_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYSERVE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield ensure_builtin("tiny")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(tiny_dir)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    cfg = model.config
    cache = KVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, 8, 32)
    attn = ReferenceAttention(cache, cfg.num_attention_heads, cfg.head_dim)
    table = PageTable(32, 8)

    def run(decodes, prefills):
        plan = table.step(decodes, prefills)
        meta = build_attention_metadata(plan, 8, "cpu")
        attn.plan(meta)
        return model.compute_logits(
            model(torch.from_numpy(plan.input_ids).long(), meta.positions, attn)
        )

    out = [int(run({}, {0: prompt})[-1].argmax())]
    while len(out) < n:
        out.append(int(run({0: out[-1]}, {})[0].argmax()))
    return out


def test_folder_is_complete_cached_and_deterministic(tiny_dir, tmp_path):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    before = _digest(tiny_dir)
    assert ensure_builtin("tiny") == tiny_dir  # reused, not rebuilt
    write_tiny(tmp_path)
    assert _digest(tmp_path) == before
    with pytest.raises(ValueError, match="builtin:tiny"):
        ensure_builtin("huge")


def test_greedy_output_is_varied_and_matches_transformers(tiny_dir, tokenizer):
    from transformers import LlamaForCausalLM

    model = load_model("builtin:tiny", "float32", "cpu")
    assert model.config.vocab_size == tokenizer.vocab_size
    assert tokenizer.eos_token_id in model.config.eos_token_ids
    prompt = tokenizer.encode("The scheduler looks at")
    tokens = _greedy(model, prompt, 64)
    assert len(set(tokens)) >= 16
    assert any(tokens[i] != tokens[i - p] for p in range(1, 9) for i in range(32, 64))
    other = _greedy(model, tokenizer.encode("Numbers like"), 16)
    assert other != tokens[:16]
    hf = LlamaForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24,
                          do_sample=False, pad_token_id=0)[0, len(prompt):]  # fmt: skip
    assert ref.tolist() == tokens[:24]


def test_tokenizer_round_trip_and_chat_template(tokenizer):
    text = "Hello, world! Schedulers swap 2048 blocks — ünïcödé 世界 🙂"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode("The scheduler")) < len("The scheduler")  # merges are used
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    rendered = tokenizer.decode(ids, skip_special_tokens=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ids) == "user\nhi\nassistant\n"


def test_incremental_detokenizer_streams_exact_text(tokenizer):
    prompt = tokenizer.encode("Say: ")
    text = "ok 世界 done 🙂!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 2  # multi-byte characters span several tokens
    detok = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detok.add(i) for i in ids]
    assert "".join(deltas) == text == detok.text
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # some tokens completed no character on their own


def test_stop_string_matcher():
    m = StopStringMatcher(["STOP", "\n\n"])
    assert m.process("hello ST") == ("hello ", False)  # "ST" might start "STOP"
    assert m.process("A") == ("STA", False)
    assert m.process("rt S") == ("rt ", False)
    assert m.process("TOP and more") == ("", True)
    assert m.matched == "STOP" and m.process("x") == ("", True)
    keep = StopStringMatcher(["\n\n", "end"], include_stop_str=True)
    assert keep.process("a\n") == ("a", False)
    assert keep.process("\nb") == ("\n\n", True)
    plain = StopStringMatcher(["zz"])
    assert plain.process("abz") == ("ab", False)
    assert plain.flush() == "z"
    with pytest.raises(ValueError):
        StopStringMatcher([""])
