"""Compiles constraints into xgrammar grammars for one tokenizer, with a bounded LRU cache."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence

from pyserve.structured.errors import StructuredOutputError, first_line, require_xgrammar
from pyserve.structured.params import StructuredOutputsParams
from pyserve.structured.schema import bound_strings, map_subschemas

MAX_WHITESPACE = 16  # characters of free whitespace allowed between two JSON tokens
CACHE_SIZE = 256  # compiled grammars kept (LRU)


def tokenizer_info(tokenizer, vocab_size: int, stop_token_ids: Sequence[int]):
    """xgrammar's view of ``tokenizer`` (pyserve's wrapper or a HF tokenizer).

    NOTE: ``vocab_size`` is the model's logits width (it may exceed the tokenizer's length when
    the embedding is padded); ids past the tokenizer are never allowed by a mask.
    """
    xgr = require_xgrammar()
    hf = getattr(tokenizer, "hf", tokenizer)
    return xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size,
                                              stop_token_ids=list(stop_token_ids))  # fmt: skip


class GrammarCache:
    """``get(params)`` compiles (or reuses) the grammar of a constraint.

    The key is :meth:`StructuredOutputsParams.key`: the canonical (sorted-key) schema plus the
    whitespace/strictness options, so the same schema sent twice compiles once. xgrammar's own
    cache is off: this LRU is the one cache.
    """

    def __init__(self, info, max_threads: int = 2, size: int = CACHE_SIZE) -> None:
        xgr = require_xgrammar()
        self.info = info
        self._compiler = xgr.GrammarCompiler(info, max_threads=max_threads, cache_enabled=False)
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self.size = size
        self.hits = 0
        self.misses = 0

    def get(self, params: StructuredOutputsParams):
        """The ``xgrammar.CompiledGrammar`` of ``params`` (ValueError if it cannot compile)."""
        key = params.key()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        compiled = self._compile(params)
        self._cache[key] = compiled
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return compiled

    def __len__(self) -> int:
        return len(self._cache)

    def _compile(self, p: StructuredOutputsParams):
        c = self._compiler
        try:
            if p.kind == "json" or p.kind == "json_object":
                schema = p.json if p.kind == "json" else {"type": "object"}
                schema = map_subschemas(schema, bound_strings)
                # NOTE: json_object allows any keys; a schema follows its own additionalProperties
                # unless disable_additional_properties (OpenAI strict) closes every object.
                strict = p.disable_additional_properties and p.kind == "json"
                return c.compile_json_schema(
                    json.dumps(schema),
                    any_whitespace=not p.disable_any_whitespace,
                    strict_mode=strict,
                    max_whitespace_cnt=None if p.disable_any_whitespace else MAX_WHITESPACE,
                )
            if p.kind == "regex":
                return c.compile_regex(p.regex)
            if p.kind == "structural_tag":
                return c.compile_structural_tag(json.dumps(p.structural_tag))
            if p.kind == "choice":
                return c.compile_grammar(choice_ebnf(p.choice))
            return c.compile_grammar(p.grammar)
        except (RuntimeError, ValueError) as exc:
            raise StructuredOutputError(f"cannot be compiled: {first_line(exc)}",
                                        f"structured_outputs.{p.kind}") from None  # fmt: skip


def choice_ebnf(choices: Sequence[str]) -> str:
    """An EBNF grammar whose language is exactly ``choices``."""
    # NOTE: json.dumps writes the escapes (\" \\ \n and \u plus four hex digits) that xgrammar's EBNF reads.
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)
