"""The CPU engine's intra-op thread count (ModelConfig.cpu_threads)."""

from __future__ import annotations

import os

import pytest
import torch

from pyserve import LLM
from pyserve.engine.components import apply_cpu_threads, default_cpu_threads, usable_cores


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_keeps_one_core_for_the_frontend():
    cores = len(os.sched_getaffinity(0))
    assert default_cpu_threads() == max(1, cores - 1)
    torch.set_num_threads(cores)
    apply_cpu_threads(None, torch.device("cpu"))
    assert torch.get_num_threads() == max(1, cores - 1)


def test_explicit_count_is_applied_by_the_engine():
    LLM("builtin:tiny", cpu_threads=1, max_model_len=64, kv_cache_bytes=1 << 20)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_count_is_a_value_error(bad):
    with pytest.raises(ValueError, match="cpu_threads"):
        apply_cpu_threads(bad, torch.device("cpu"))


def test_cuda_device_leaves_torch_threads_alone():
    torch.set_num_threads(1)
    apply_cpu_threads(None, torch.device("cuda"))
    assert torch.get_num_threads() == 1


def test_offline_llm_takes_every_usable_core():
    torch.set_num_threads(1)
    LLM("builtin:tiny", max_model_len=64, kv_cache_bytes=1 << 20)
    assert torch.get_num_threads() == usable_cores()
