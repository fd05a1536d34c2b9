"""Fit cost-model coefficients to step times logged by a real engine.

Log format: JSONL, one step per line:
``{"q_lens": [int...], "ctx_lens": [int...], "seconds": float}``.

The step-time formula is linear in the inverse rates (seconds per FLOP, per byte) and overheads
once each ``max`` picks a side (compute- or memory-bound). We alternate: assign every step's linear
part and every sequence's attention to a side with the current coefficients, solve a relative
non-negative least-squares problem for the coefficients, repeat until the assignment is stable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pyserve.sim.cost_model import CostModel, CostParams, Preset

# Unknowns, in column order: s/linear FLOP, s/HBM byte, s/attention FLOP, s/step, s/token.
_COEFS = ("linear_flops_per_s", "hbm_bytes_per_s", "attn_flops_per_s")


@dataclass(frozen=True)
class StepLog:
    """Concatenated step records: per-sequence arrays plus the step index of each sequence."""

    q: np.ndarray  # int64 [total seqs]
    ctx: np.ndarray  # int64 [total seqs]
    step: np.ndarray  # int64 [total seqs], which record each sequence belongs to
    seconds: np.ndarray  # float64 [num steps]

    @property
    def num_steps(self) -> int:
        return int(self.seconds.shape[0])


@dataclass(frozen=True)
class CalibrationResult:
    """The fitted preset, its mean absolute % error on the log, and fit bookkeeping."""

    preset: Preset
    mape: float
    iterations: int
    num_steps: int


def make_step_log(records: list[tuple[list[int], list[int], float]]) -> StepLog:
    """A StepLog from (q_lens, ctx_lens, seconds) records; ValueError naming a bad record."""
    if not records:
        raise ValueError("no step records to calibrate on")
    qs, cs, steps, secs = [], [], [], []
    for i, (q, c, s) in enumerate(records):
        q, c = np.asarray(q, dtype=np.int64), np.asarray(c, dtype=np.int64)
        if q.ndim != 1 or q.shape != c.shape or q.size == 0:
            raise ValueError(f"record {i}: q_lens and ctx_lens must be non-empty, equal length")
        if q.min() < 1 or (c < q).any():
            raise ValueError(f"record {i}: need q_lens >= 1 and ctx_lens >= q_lens")
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"record {i}: seconds must be finite and > 0, got {s}")
        qs.append(q)
        cs.append(c)
        steps.append(np.full(q.size, i, dtype=np.int64))
        secs.append(float(s))
    return StepLog(np.concatenate(qs), np.concatenate(cs), np.concatenate(steps), np.array(secs))


def load_step_log(path: str | Path) -> StepLog:
    """Read a JSONL step log; ValueError names the bad line and the reason."""
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("a step record must be a JSON object")
                missing = [k for k in ("q_lens", "ctx_lens", "seconds") if k not in obj]
                if missing:
                    raise ValueError(f"missing field {missing[0]!r}")
                q, c, s = obj["q_lens"], obj["ctx_lens"], obj["seconds"]
                if not all(isinstance(x, int) and not isinstance(x, bool) for x in [*q, *c]):
                    raise ValueError("q_lens and ctx_lens must be lists of integers")
                if isinstance(s, bool) or not isinstance(s, (int, float)):
                    raise ValueError("seconds must be a number")
                make_step_log([(q, c, float(s))])
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(f"step log line {lineno}: bad JSON or types: {e}") from None
            except ValueError as e:
                msg = str(e).removeprefix("record 0: ")
                raise ValueError(f"step log line {lineno}: {msg}") from None
            records.append((q, c, float(s)))
    return make_step_log(records)


def _features(log: StepLog, preset: Preset, params: CostParams) -> np.ndarray:
    """Design matrix [num_steps, 5] for the side each max takes under ``params``."""
    m, n = preset.model, log.num_steps
    seqs = np.bincount(log.step, minlength=n).astype(np.float64)
    tokens = np.bincount(log.step, weights=log.q, minlength=n)
    lin_flops = tokens * m.linear_flops_per_token + seqs * m.head_flops_per_seq
    w_bytes = float(m.weight_read_bytes)
    q, c = log.q.astype(np.float64), log.ctx.astype(np.float64)
    attn_flops = (2 * c - q + 1) * q * (m.attn_flops_per_pair / 2)
    kv_bytes = c * m.kv_bytes_per_token
    lin_compute = lin_flops / params.linear_flops_per_s > w_bytes / params.hbm_bytes_per_s
    seq_compute = attn_flops / params.attn_flops_per_s > kv_bytes / params.hbm_bytes_per_s
    x = np.zeros((n, 5))
    x[:, 0] = np.where(lin_compute, lin_flops, 0.0)
    x[:, 1] = np.where(lin_compute, 0.0, w_bytes)
    x[:, 1] += np.bincount(log.step, weights=np.where(seq_compute, 0.0, kv_bytes), minlength=n)
    x[:, 2] = np.bincount(log.step, weights=np.where(seq_compute, attn_flops, 0.0), minlength=n)
    x[:, 3] = 1.0
    x[:, 4] = tokens
    return x


def _solve(x: np.ndarray, y: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Relative NNLS (rows weighted by 1/y); all-zero columns keep their prior value."""
    from scipy.optimize import nnls  # NOTE: imported here: only calibration needs scipy

    a = x / y[:, None]
    used = np.abs(a).sum(axis=0) > 0
    scale = np.linalg.norm(a[:, used], axis=0)
    # NOTE: columns are normalised: their magnitudes span ~1e15 (FLOPs) to 1 (the step count).
    rhs = np.ones_like(y) - a[:, ~used] @ prior[~used]
    sol, _ = nnls(a[:, used] / scale, rhs)
    theta = prior.copy()
    theta[used] = sol / scale
    return theta


def _to_params(theta: np.ndarray, base: CostParams) -> CostParams:
    rates = {k: (1.0 / t if t > 0 else math.inf) for k, t in zip(_COEFS, theta[:3], strict=True)}
    return replace(base, **rates, step_overhead_s=float(theta[3]), token_overhead_s=float(theta[4]))


def _to_theta(p: CostParams) -> np.ndarray:
    inv = [1.0 / getattr(p, k) for k in _COEFS]
    return np.array([*inv, p.step_overhead_s, p.token_overhead_s])


def mean_abs_pct_error(preset: Preset, log: StepLog) -> float:
    """Mean over steps of |predicted - logged| / logged, in percent."""
    x = _features(log, preset, preset.params)
    pred = x @ _to_theta(preset.params)
    return float(np.mean(np.abs(pred - log.seconds) / log.seconds) * 100)


def fit_preset(
    log: StepLog, preset: Preset, max_iter: int = 20, name: str | None = None
) -> CalibrationResult:
    """Fit ``preset``'s coefficients to ``log``; the model and memory budget are kept.

    Steps whose only sequences sit on one side of a ``max`` tell nothing about the other side's
    rate: such a coefficient keeps the preset's value.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    params, best, best_err, iterations = preset.params, preset.params, math.inf, 0
    prev_x = None
    while iterations < max_iter:
        x = _features(log, preset, params)
        if prev_x is not None and np.array_equal(x, prev_x):
            break  # NOTE: same sides as last time: the solve would return the same coefficients
        prev_x = x
        iterations += 1
        params = _to_params(_solve(x, log.seconds, _to_theta(params)), params)
        err = mean_abs_pct_error(replace(preset, params=params), log)
        if err < best_err:
            best, best_err = params, err
    label = name or f"{preset.name}-calibrated"
    fitted = replace(preset, name=label, params=best, description=f"{preset.name} fit to a log")
    return CalibrationResult(fitted, best_err, iterations, log.num_steps)


def predict(preset: Preset, log: StepLog) -> np.ndarray:
    """The cost model's time for every logged step (checks the fit against CostModel itself)."""
    model = CostModel(preset)
    bounds = np.searchsorted(log.step, np.arange(log.num_steps + 1))
    return np.array(
        [
            model.step_time(log.q[bounds[i] : bounds[i + 1]], log.ctx[bounds[i] : bounds[i + 1]])
            for i in range(log.num_steps)
        ]
    )
