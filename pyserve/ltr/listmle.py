"""ListMLE loss and the training loop of the ranker (each mini-batch is one list).

ListMLE (Xia et al. 2008) maximises the Plackett-Luce likelihood of the true order: with the list
sorted by label, longest first (pi), and scores s,

    loss = -(1/n) * sum_i [ s_pi(i) - logsumexp_{j >= i} s_pi(j) ].

So a higher score means "longer"; the ranker runs shorter (lower) scores first. As in the paper the
labels are output lengths bucketed by 10 tokens; ties inside a bucket are ordered at random.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

BUCKET_TOKENS = 10


def bucket_lengths(lengths, bucket: int = BUCKET_TOKENS) -> np.ndarray:
    """Output length -> bucket index (``length // bucket``), int64."""
    if bucket <= 0:
        raise ValueError(f"bucket must be positive, got {bucket}")
    arr = np.asarray(lengths)
    if arr.size and arr.min() < 0:
        raise ValueError("lengths must be non-negative")
    return (arr // bucket).astype(np.int64)


def listmle_loss(
    scores: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """ListMLE loss of one list (mean over its items).

    Args:
        scores: float [n], higher = predicted longer.
        labels: [n] true (bucketed) lengths; ties are broken by a random permutation.
        generator: RNG for tie breaking (deterministic when given).
    """
    if scores.dim() != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must be 1-D of equal length, got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if scores.numel() == 0:
        raise ValueError("listmle_loss needs a non-empty list")
    perm = torch.randperm(scores.numel(), generator=generator, device=scores.device)
    # NOTE: stable sort of a random permutation = random order among equal labels.
    order = perm[torch.sort(labels[perm], descending=True, stable=True).indices]
    s = scores[order]
    # logsumexp over suffixes s[i:], computed as a reversed cumulative logsumexp.
    suffix_lse = torch.logcumsumexp(s.flip(0), dim=0).flip(0)
    return (suffix_lse - s).mean()


@dataclass
class TrainStats:
    """What one training run did."""

    steps: int
    epochs: int
    seconds: float
    final_loss: float


def train_listmle(
    model: nn.Module,
    items: list,
    labels: np.ndarray,
    *,
    epochs: int = 3,
    list_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> TrainStats:
    """Train ``model`` (an encoder from :mod:`pyserve.ltr.encoders`) on featurized ``items``.

    Each optimiser step sees one random list of ``list_size`` items; a list whose labels are all
    equal carries no ordering information and is skipped.
    """
    labels = np.asarray(labels)
    if len(items) != labels.shape[0]:
        raise ValueError(f"{len(items)} items but {labels.shape[0]} labels")
    if epochs <= 0 or list_size < 2 or lr <= 0:
        raise ValueError(
            f"need epochs > 0, list_size >= 2, lr > 0; got {epochs}, {list_size}, {lr}"
        )
    if len(items) < list_size:
        raise ValueError(f"need at least list_size={list_size} training items, got {len(items)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    steps, t0, recent = 0, time.perf_counter(), []
    n_lists = len(items) // list_size
    for epoch in range(epochs):
        perm = rng.permutation(len(items))
        for b in range(n_lists):
            idx = perm[b * list_size : (b + 1) * list_size]
            y = torch.from_numpy(labels[idx])
            if bool((y == y[0]).all()):
                continue
            loss = listmle_loss(model(model.collate([items[i] for i in idx])), y, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            recent = (recent + [loss.item()])[-100:]
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {np.mean(recent):.4f} ({steps} steps)")
    model.eval()
    final = float(np.mean(recent)) if recent else float("nan")
    return TrainStats(steps, epochs, time.perf_counter() - t0, final)
