"""Reference paged attention vs dense per-sequence attention; KV cache swaps and sizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from paging import PageTable

from pyserve.attention import ReferenceAttention, build_attention_metadata
from pyserve.kv import KVCache, block_bytes

HQ, HKV, D, BS, LAYERS, BLOCKS = 4, 2, 8, 4, 2, 96


class DenseReference:
    """Keeps each sequence's K/V contiguously and attends with SDPA on the whole history."""

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def attend(self, seq: int, q, k, v, positions) -> torch.Tensor:
        self.k[seq] = torch.cat([self.k.get(seq, k[:0]), k])
        self.v[seq] = torch.cat([self.v.get(seq, v[:0]), v])
        keys = self.k[seq].repeat_interleave(HQ // HKV, dim=1).transpose(0, 1)
        values = self.v[seq].repeat_interleave(HQ // HKV, dim=1).transpose(0, 1)
        mask = torch.arange(keys.shape[1])[None, :] <= positions[:, None]
        out = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask)
        return out.transpose(0, 1)


def _run_steps(steps, dtype=torch.float32, seed=0):
    """Run a schedule of (decodes, prefills) steps through both implementations."""
    g = torch.Generator().manual_seed(seed)
    cache = KVCache(LAYERS, HKV, D, BS, BLOCKS, dtype=dtype)
    backend = ReferenceAttention(cache, HQ, D)
    table = PageTable(BLOCKS, BS, seed=seed)
    refs = [DenseReference() for _ in range(LAYERS)]
    for decodes, prefills in steps:
        plan = table.step(decodes, prefills)
        meta = build_attention_metadata(plan, BS, "cpu")
        backend.plan(meta)
        order = list(decodes) + list(prefills)
        t = plan.input_ids.shape[0]
        for layer in range(LAYERS):
            q = torch.randn(t, HQ, D, generator=g).to(dtype)
            k = torch.randn(t, HKV, D, generator=g).to(dtype)
            v = torch.randn(t, HKV, D, generator=g).to(dtype)
            out = backend.forward(layer, q, k, v)
            for i, seq in enumerate(order):
                lo, hi = plan.qo_indptr[i], plan.qo_indptr[i + 1]
                pos = torch.from_numpy(plan.positions[lo:hi]).long()
                ref = refs[layer].attend(seq, q[lo:hi], k[lo:hi], v[lo:hi], pos)
                torch.testing.assert_close(out[lo:hi], ref, rtol=1e-5, atol=1e-5)
            # Every written slot holds this step's K/V.
            blk, off = plan.slot_mapping // BS, plan.slot_mapping % BS
            assert torch.equal(cache.layer(layer)[blk, 0, off], k)
            assert torch.equal(cache.layer(layer)[blk, 1, off], v)


def _toks(n, start=0):
    return list(range(start, start + n))


def test_mixed_decodes_and_chunked_prefills_match_dense():
    steps = [
        ({}, {0: _toks(7), 1: _toks(5)}),  # two fresh prefills
        ({0: 1, 1: 2}, {2: _toks(6)}),  # decodes + a fresh prefill
        ({0: 1, 1: 2}, {2: _toks(5), 3: _toks(3)}),  # chunk over a cached prefix (6 + 5)
        ({0: 1, 1: 2, 2: 3}, {3: _toks(9)}),  # decodes of unequal lengths + third chunk
        ({0: 1, 1: 2, 2: 3, 3: 4}, {4: [5]}),  # single-token prefill
        ({3: 1, 0: 1}, {4: _toks(4), 1: _toks(2)}),  # a running sequence gets a multi-token chunk
    ]
    _run_steps(steps)


def test_many_decode_steps_cross_block_boundaries():
    steps = [({}, {0: _toks(3), 1: _toks(10), 2: _toks(1)})]
    steps += [({0: i, 1: i, 2: i}, {}) for i in range(9)]
    _run_steps(steps, seed=1)


def test_metadata_validation():
    table = PageTable(8, BS)
    plan = table.step({}, {0: _toks(5)})
    plan.qo_indptr = plan.qo_indptr[:1]
    with pytest.raises(ValueError, match="qo_indptr"):
        build_attention_metadata(plan, BS, "cpu")
    cache = KVCache(1, HKV, D, BS, 8)
    with pytest.raises(ValueError, match="multiple"):
        ReferenceAttention(cache, 3, D)
    meta = build_attention_metadata(PageTable(8, 2).step({}, {0: _toks(3)}), 2, "cpu")
    with pytest.raises(ValueError, match="block_size"):
        ReferenceAttention(cache, HQ, D).plan(meta)


def _filled_cache(num_cpu_blocks=4) -> KVCache:
    cache = KVCache(LAYERS, HKV, D, BS, 10, num_cpu_blocks=num_cpu_blocks)
    cache.device_pool.copy_(torch.randn(cache.device_pool.shape))
    return cache


def test_swap_round_trip_is_exact():
    cache = _filled_cache()
    original = cache.device_pool.clone()
    cache.swap_out(np.array([[3, 0], [5, 2]], dtype=np.int32))
    cache.device_pool[:, [3, 5]] = 0.0
    cache.swap_in(np.array([[2, 8], [0, 1]], dtype=np.int32))
    assert torch.equal(cache.device_pool[:, 8], original[:, 5])
    assert torch.equal(cache.device_pool[:, 1], original[:, 3])
    untouched = [0, 2, 4, 6, 7, 9]
    assert torch.equal(cache.device_pool[:, untouched], original[:, untouched])
    before = cache.device_pool.clone()
    cache.copy(torch.tensor([[8, 3], [9, 8]]))  # sources are read before any write
    assert torch.equal(cache.device_pool[:, 3], before[:, 8])
    assert torch.equal(cache.device_pool[:, 8], before[:, 9])


def test_apply_orders_swap_out_before_swap_in():
    cache = _filled_cache(num_cpu_blocks=1)
    original = cache.device_pool.clone()
    # Block 4 leaves through CPU block 0 while that same CPU block's old content is not needed.
    cache.apply(swap_out=[[4, 0]], swap_in=[[0, 6]], copy=np.zeros((0, 2), np.int32))
    assert torch.equal(cache.device_pool[:, 6], original[:, 4])


def test_swap_pair_validation():
    cache = _filled_cache()
    with pytest.raises(ValueError, match="out of range"):
        cache.swap_out([[10, 0]])
    with pytest.raises(ValueError, match="out of range"):
        cache.swap_in([[4, 0]])
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        cache.copy([1, 2, 3])


def test_block_count_from_budget():
    per_block = block_bytes(LAYERS, HKV, D, BS, torch.float16)
    assert per_block == LAYERS * 2 * BS * HKV * D * 2
    cache = KVCache.from_budget(LAYERS, HKV, D, BS, torch.float16, "cpu",
                                cpu_budget_bytes=13 * per_block + 7,
                                swap_budget_bytes=3 * per_block)  # fmt: skip
    assert (cache.num_blocks, cache.num_cpu_blocks) == (13, 3)
    assert cache.layer(1).shape == (13, 2, BS, HKV, D)
    assert cache.device_pool.dtype == torch.float16
    with pytest.raises(ValueError, match="below one block"):
        KVCache.from_budget(
            LAYERS, HKV, D, BS, torch.float16, "cpu", cpu_budget_bytes=per_block - 1
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reference_backend_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    plan = PageTable(BLOCKS, BS).step({}, {0: _toks(9), 1: _toks(4)})
    q = torch.randn(13, HQ, D, generator=g)
    k, v = torch.randn(2, 13, HKV, D, generator=g)
    outs = []
    for dev in ("cpu", "cuda"):
        backend = ReferenceAttention(KVCache(1, HKV, D, BS, BLOCKS, device=dev), HQ, D)
        backend.plan(build_attention_metadata(plan, BS, dev))
        outs.append(backend.forward(0, q.to(dev), k.to(dev), v.to(dev)).cpu())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
