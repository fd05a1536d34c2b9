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
    """What one training run did (``stopped_early``: the time budget ended it)."""

    steps: int
    epochs: int
    seconds: float
    final_loss: float
    stopped_early: bool = False


@dataclass(frozen=True)
class TrainOptions:
    """Optimiser settings of :func:`train_listmle`.

    ``lr`` is the encoder's peak learning rate; ``head_lr`` (default ``lr``) is used for the
    parameters the model lists in ``head_parameters()``. The rate warms up linearly over the
    first ``warmup`` fraction of the steps, then decays linearly to 0 (``warmup`` None: constant).
    ``aux_weight`` adds that times the MSE between the score and the standardised log length.
    ``max_seconds`` stops training when the budget is spent (the schedule still spans all
    ``epochs``). ``clip``: gradient-norm clipping (None: off).
    """

    epochs: int = 3
    list_size: int = 32
    lr: float = 1e-3
    head_lr: float | None = None
    weight_decay: float = 0.0
    warmup: float | None = None
    aux_weight: float = 0.0
    clip: float | None = None
    max_seconds: float | None = None
    log_every: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.list_size < 2 or self.lr <= 0:
            raise ValueError(
                f"need epochs > 0, list_size >= 2, lr > 0; got {self.epochs}, "
                f"{self.list_size}, {self.lr}"
            )
        if self.warmup is not None and not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.aux_weight < 0 or (self.max_seconds is not None and self.max_seconds <= 0):
            raise ValueError("aux_weight must be >= 0 and max_seconds > 0")


def _optimizer(model: nn.Module, opt: TrainOptions) -> torch.optim.AdamW:
    head = [p for p in getattr(model, "head_parameters", list)() if p.requires_grad]
    head_ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": rest, "lr": opt.lr}] if rest else []
    if head:
        groups.append({"params": head, "lr": opt.head_lr or opt.lr})
    return torch.optim.AdamW(groups, weight_decay=opt.weight_decay)


def _lr_factor(step: int, total: int, warmup: float | None) -> float:
    if warmup is None:
        return 1.0
    n_warm = max(1, int(warmup * total))
    if step < n_warm:
        return (step + 1) / n_warm
    return max(0.0, (total - step) / max(1, total - n_warm))


def train_listmle(
    model: nn.Module,
    items: list,
    labels: np.ndarray,
    options: TrainOptions | None = None,
    *,
    lengths: np.ndarray | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> TrainStats:
    """Train ``model`` (an encoder from :mod:`pyserve.ltr.encoders`) on featurized ``items``.

    Each optimiser step sees one random list of ``list_size`` items; a list whose labels are all
    equal carries no ordering information and is skipped. ``lengths`` (true output lengths) are
    needed only for the auxiliary loss.
    """
    opt_cfg = options or TrainOptions()
    labels = np.asarray(labels)
    if len(items) != labels.shape[0]:
        raise ValueError(f"{len(items)} items but {labels.shape[0]} labels")
    if len(items) < opt_cfg.list_size:
        raise ValueError(
            f"need at least list_size={opt_cfg.list_size} training items, got {len(items)}"
        )
    aux = None
    if opt_cfg.aux_weight > 0:
        if lengths is None or len(lengths) != len(items):
            raise ValueError("aux_weight > 0 needs one true length per item")
        logl = np.log1p(np.asarray(lengths, dtype=np.float64))
        aux = torch.from_numpy(((logl - logl.mean()) / max(logl.std(), 1e-6)).astype(np.float32))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, opt_cfg)
    base = [g["lr"] for g in opt.param_groups]
    model.train()
    n_lists = len(items) // opt_cfg.list_size
    total = n_lists * opt_cfg.epochs
    steps, t0, recent, early = 0, time.perf_counter(), [], False
    for epoch in range(opt_cfg.epochs):
        perm = rng.permutation(len(items))
        for b in range(n_lists):
            idx = perm[b * opt_cfg.list_size : (b + 1) * opt_cfg.list_size]
            y = torch.from_numpy(labels[idx])
            if bool((y == y[0]).all()):
                continue
            f = _lr_factor(epoch * n_lists + b, total, opt_cfg.warmup)
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * f
            scores = model(model.collate([items[i] for i in idx]))
            loss = listmle_loss(scores, y, gen)
            if aux is not None:
                loss = loss + opt_cfg.aux_weight * torch.mean((scores - aux[idx]) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if opt_cfg.clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.clip)
            opt.step()
            steps += 1
            recent = (recent + [loss.item()])[-100:]
            elapsed = time.perf_counter() - t0
            if log is not None and opt_cfg.log_every and steps % opt_cfg.log_every == 0:
                log(f"step {steps}/{total}: loss {np.mean(recent):.4f} ({elapsed:.0f} s)")
            if opt_cfg.max_seconds is not None and elapsed >= opt_cfg.max_seconds:
                early = True
                break
        if log is not None:
            log(f"epoch {epoch + 1}/{opt_cfg.epochs}: loss {np.mean(recent):.4f} ({steps} steps)")
        if early:
            break
    model.eval()
    final = float(np.mean(recent)) if recent else float("nan")
    return TrainStats(steps, opt_cfg.epochs, time.perf_counter() - t0, final, early)
