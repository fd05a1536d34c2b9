"""Ranking quality: Kendall's tau-b (the paper's metric), without scipy."""

from __future__ import annotations

import numpy as np


def _tied_pairs(values: np.ndarray) -> int:
    """Number of unordered pairs with equal values."""
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau(x, y, chunk: int = 1024) -> float:
    """Kendall's tau-b between two score vectors (same definition as scipy's default).

    tau_b = (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)), n0 = n(n-1)/2.
    Exact O(n^2) pair count done in row chunks of ``chunk`` (memory O(chunk * n)).
    Returns NaN when either vector is constant.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError(f"kendall_tau needs at least 2 points, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("kendall_tau inputs must be finite")
    n = x.size
    s = 0  # sum over ordered pairs (i, j) of sign(dx) * sign(dy) = 2 * (concordant - discordant)
    for start in range(0, n, chunk):
        dx = np.sign(x[start : start + chunk, None] - x[None, :])
        dy = np.sign(y[start : start + chunk, None] - y[None, :])
        s += int((dx * dy).sum())
    n0 = n * (n - 1) // 2
    denom = np.sqrt(float(n0 - _tied_pairs(x)) * float(n0 - _tied_pairs(y)))
    if denom == 0.0:
        return float("nan")
    return float(s / 2 / denom)
