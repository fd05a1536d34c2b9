"""``builtin:tiny``: a deterministic small Llama written as a Hugging Face folder, no download.

The folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) is built once
under ``$PYSERVE_CACHE`` (default ``~/.cache/pyserve``) and then loaded like any HF folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

BUILTIN_VERSION = 2  # 2: the chat template renders tools, tool calls and tool results
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML with Hermes/Qwen2.5-style tools: the tool list goes into the system turn, an assistant's
# calls are <tool_call>{"name", "arguments"}</tool_call> blocks, and a tool result is a "tool"
# turn holding its tool_call_id, name and content (so the tool-call parser is "hermes").
CHAT_TEMPLATE = (
    "{%- set ns = namespace(start=0) -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] + '\\n\\n' -}}{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{{- '# Tools\\n\\nYou may call functions. Their signatures are within <tools></tools>:"
    "\\n<tools>\\n' -}}"
    "{%- for tool in tools -%}{{- tool | tojson -}}{{- '\\n' -}}{%- endfor -%}"
    "{{- '</tools>\\n\\nTo call a function, answer with a JSON object within "
    "<tool_call></tool_call>:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{{- '<|im_start|>tool\\n<tool_response>\\n' -}}"
    "{{- {'tool_call_id': message.get('tool_call_id'), 'name': message.get('name'),"
    " 'content': message['content']} | tojson -}}"
    "{{- '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') -}}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{%- if loop.first and message['content'] -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n' -}}"
    "{{- {'name': fn['name'], 'arguments': fn['arguments']} | tojson -}}"
    "{{- '\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
TINY = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    vocab_target=512,
    seed=1234,
)
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# A small fixed corpus: the tokenizer's merges come from it, so they never change.
_CORPUS = """\
The scheduler looks at every waiting request and picks the ones that fit in memory.
A program is a chain of calls; each call waits for a tool, a search, or a person.
Short calls should not wait behind long ones, and long programs should not starve.
When memory runs short, the engine swaps a request out to the host and brings it back later.
Tokens flow from the model to the client one at a time, as soon as they are sampled.
The cache keeps blocks of keys and values so that a shared prefix is computed only once.
How many tokens per second can a small machine serve? Measure it, then make it faster.
She opened the window, listened to the rain, and wrote three lines about the river.
Numbers like 42, 3.14, 2048 and 1e-4 appear in logs, configs and error messages.
def add(a, b): return a + b  # a function, a comment, and some punctuation: ()[]{}<>!?
Questions, answers, plans and summaries: an agent writes all of them while it works.
"""


def cache_root() -> Path:
    """Where built-in models are written: ``$PYSERVE_CACHE`` or ``~/.cache/pyserve``."""
    return Path(os.environ.get("PYSERVE_CACHE") or Path.home() / ".cache" / "pyserve")


def ensure_builtin(name: str) -> Path:
    """Folder of built-in model ``name`` (only ``tiny``), building it on first use."""
    if name != "tiny":
        raise ValueError(f"unknown built-in model {name!r}; available: builtin:tiny")
    folder = cache_root() / f"builtin-{name}-v{BUILTIN_VERSION}"
    if all((folder / f).is_file() for f in _FILES):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write_tiny(tmp)
        # NOTE: build in a private folder and rename, so concurrent builders never see a
        # half-written model; if another process won the race its identical copy is kept.
        try:
            os.replace(tmp, folder)
        except OSError:
            if not all((folder / f).is_file() for f in _FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_tokenizer():
    """A byte-level BPE tokenizer trained on the fixed corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY["vocab_target"],
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer)
    return tok


def tiny_config(vocab_size: int, eos_ids: list[int]) -> dict:
    """The HF ``config.json`` contents of the tiny model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": TINY["hidden_size"],
        "intermediate_size": TINY["intermediate_size"],
        "num_hidden_layers": TINY["num_hidden_layers"],
        "num_attention_heads": TINY["num_attention_heads"],
        "num_key_value_heads": TINY["num_key_value_heads"],
        "head_dim": TINY["hidden_size"] // TINY["num_attention_heads"],
        "max_position_embeddings": TINY["max_position_embeddings"],
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": None,
        "eos_token_id": eos_ids,
        "dtype": "float32",
    }


def tiny_weights(cfg: dict, special_ids: list[int]) -> dict[str, torch.Tensor]:
    """Seeded random weights with HF tensor names.

    Scales are chosen so greedy decoding wanders instead of locking onto one token: large
    embeddings and output rows make the next token depend strongly on the current one, and
    attention/MLP mix in the context. Special-token output rows are shrunk so EOS is rare.
    """
    g = torch.Generator().manual_seed(TINY["seed"])
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q, kv = h, cfg["num_key_value_heads"] * cfg["head_dim"]

    def rand(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    w = {"model.embed_tokens.weight": rand(vocab, h, std=1.0),
         "model.norm.weight": torch.ones(h)}  # fmt: skip
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = torch.ones(h)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h)
        w[p + "self_attn.q_proj.weight"] = rand(q, h, std=2.0 / h**0.5)
        w[p + "self_attn.k_proj.weight"] = rand(kv, h, std=2.0 / h**0.5)
        w[p + "self_attn.v_proj.weight"] = rand(kv, h, std=1.0 / h**0.5)
        w[p + "self_attn.o_proj.weight"] = rand(h, q, std=1.0 / q**0.5)
        w[p + "mlp.gate_proj.weight"] = rand(inter, h, std=1.0 / h**0.5)
        w[p + "mlp.up_proj.weight"] = rand(inter, h, std=1.0 / h**0.5)
        w[p + "mlp.down_proj.weight"] = rand(h, inter, std=1.0 / inter**0.5)
    head = rand(vocab, h, std=1.0 / h**0.5)
    head[special_ids] *= 0.3
    w["lm_head.weight"] = head
    return {k: v.contiguous() for k, v in w.items()}


def write_tiny(folder: Path) -> None:
    """Write the tiny model's four files into ``folder``."""
    tok = build_tokenizer()
    special_ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    eos_ids = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    cfg = tiny_config(tok.get_vocab_size(), eos_ids)
    save_file(tiny_weights(cfg, special_ids), str(folder / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    tok.save(str(folder / "tokenizer.json"))
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": cfg["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    for name, data in (("config.json", cfg), ("tokenizer_config.json", tok_cfg)):
        with open(folder / name, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
