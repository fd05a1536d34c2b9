"""FlashInfer backend: plan arguments on CPU (no FlashInfer needed); FlashInfer vs reference (GPU).

The CPU tests check :func:`build_plan_args` against FlashInfer's documented definitions of
``indptr`` / ``indices`` / ``last_page_len`` (including the worked example in
``flashinfer.append_paged_kv_cache``'s docstring), and check that attention computed the way
FlashInfer reads those arrays (pages, last-page length, bottom-right causal mask) equals dense
torch SDPA over the unpaged K/V.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from paging import PageTable

from pyserve.attention.flashinfer import build_plan_args, flashinfer_available


def _random_steps(seed: int, block_size: int, steps: int = 3):
    """Yield (plan, seq ids in plan order) for a few steps mixing decodes and chunked prefills."""
    rng = np.random.default_rng(seed)
    table = PageTable(num_blocks=512, block_size=block_size, seed=seed)
    remaining = {s: int(rng.integers(1, 90)) for s in range(6)}  # prompt tokens left per seq
    for _ in range(steps):
        decodes = {s: 1 for s, left in remaining.items() if left == 0 and s in table.lengths}
        prefills = {}
        for s, left in remaining.items():
            if left > 0:
                chunk = min(left, int(rng.integers(1, 40)))
                prefills[s] = [1] * chunk
                remaining[s] = left - chunk
        yield table.step(decodes, prefills), [*decodes, *prefills]


def _check_wrapper(w, page_size: int) -> None:
    assert w.qo_indptr[0] == 0 and w.kv_indptr[0] == 0
    assert (np.diff(w.qo_indptr) >= 1).all() and (np.diff(w.kv_indptr) >= 1).all()
    assert ((w.kv_last_page_len >= 1) & (w.kv_last_page_len <= page_size)).all()
    assert w.kv_hi - w.kv_lo == w.kv_indptr[-1]
    for arr in (w.qo_indptr, w.kv_indptr, w.kv_last_page_len):
        assert arr.dtype == np.int32


@pytest.mark.parametrize("block_size", [1, 16, 32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_args_follow_flashinfer_definitions(block_size: int, seed: int) -> None:
    for plan, _ in _random_steps(seed, block_size):
        nd = plan.num_decodes
        args = build_plan_args(plan.qo_indptr, plan.kv_indptr, plan.seq_lens, nd, block_size,
                               len(plan.kv_indices))  # fmt: skip
        lens = plan.seq_lens.astype(np.int64)
        parts = [w for w in (args.decode, args.prefill) if w is not None]
        for w in parts:
            _check_wrapper(w, block_size)
        # Rebasing: concatenating the wrappers' (un-rebased) arrays gives back the step's arrays.
        pages = np.concatenate([np.diff(w.kv_indptr) for w in parts])
        q_lens = np.concatenate([np.diff(w.qo_indptr) for w in parts])
        last = np.concatenate([w.kv_last_page_len for w in parts])
        np.testing.assert_array_equal(pages, np.diff(plan.kv_indptr))
        np.testing.assert_array_equal(q_lens, np.diff(plan.qo_indptr))
        np.testing.assert_array_equal(pages, -(-lens // block_size))  # ceil(len / page)
        np.testing.assert_array_equal((pages - 1) * block_size + last, lens)  # get_seq_lens
        np.testing.assert_array_equal(last, plan.kv_last_page_len)
        if args.decode is not None:
            assert args.decode.num_seqs == nd and (np.diff(args.decode.qo_indptr) == 1).all()
            assert args.decode.kv_lo == 0
        if args.prefill is not None:
            assert args.prefill.num_seqs == plan.num_prefills
            assert args.prefill.kv_lo == plan.kv_indptr[nd]
        # append_paged_kv_cache's (batch index, position) addresses each token's slot.
        b, p = args.batch_indices, args.positions
        page = plan.kv_indices[plan.kv_indptr[b] + p // block_size]
        np.testing.assert_array_equal(page.astype(np.int64) * block_size + p % block_size,
                                      plan.slot_mapping)  # fmt: skip
        np.testing.assert_array_equal(p, plan.positions)


def test_plan_args_agree_with_flashinfer_helpers() -> None:
    """FlashInfer's own get_seq_lens (torch, any device) and, on CUDA, its batch/position helper."""
    flashinfer = pytest.importorskip("flashinfer")
    for plan, _ in _random_steps(11, 16, steps=5):
        args = build_plan_args(plan.qo_indptr, plan.kv_indptr, plan.seq_lens, plan.num_decodes,
                               16, len(plan.kv_indices))  # fmt: skip
        lens = [flashinfer.get_seq_lens(torch.from_numpy(w.kv_indptr),
                                        torch.from_numpy(w.kv_last_page_len), 16)
                for w in (args.decode, args.prefill) if w is not None]  # fmt: skip
        np.testing.assert_array_equal(torch.cat(lens).numpy(), plan.seq_lens)
        if torch.cuda.is_available():
            b, p = flashinfer.get_batch_indices_positions(
                torch.from_numpy(plan.qo_indptr).cuda(),
                torch.from_numpy(plan.seq_lens).cuda(),
                len(plan.positions),
            )
            np.testing.assert_array_equal(b.cpu().numpy(), args.batch_indices)
            np.testing.assert_array_equal(p.cpu().numpy(), args.positions)


def test_plan_args_match_flashinfer_docstring_example() -> None:
    # flashinfer.append_paged_kv_cache docstring: lengths 45, 8, 25, 22 with page_size 16 take
    # 3, 1, 2, 2 pages with last_page_len 13, 8, 9, 6; appended positions restart per request.
    lens = np.array([45, 8, 25, 22])
    kv_indptr = np.array([0, 3, 4, 6, 8])
    qo_indptr = np.concatenate([[0], np.cumsum(lens)])
    args = build_plan_args(qo_indptr, kv_indptr, lens, 0, 16, 8)
    assert args.decode is None
    np.testing.assert_array_equal(args.prefill.kv_last_page_len, [13, 8, 9, 6])
    np.testing.assert_array_equal(args.batch_indices, np.repeat(np.arange(4), lens))
    np.testing.assert_array_equal(args.positions, np.concatenate([np.arange(n) for n in lens]))


def test_decodes_first_split_and_rebase() -> None:
    # Two decodes (contexts 17 and 5) then a 4-token chunk on a 30-token context (26 cached).
    qo = np.array([0, 1, 2, 6])
    kv = np.array([0, 2, 3, 5])
    lens = np.array([17, 5, 30])
    args = build_plan_args(qo, kv, lens, num_decodes=2, page_size=16, num_kv_indices=5)
    np.testing.assert_array_equal(args.decode.kv_indptr, [0, 2, 3])
    np.testing.assert_array_equal(args.decode.kv_last_page_len, [1, 5])
    assert (args.decode.kv_lo, args.decode.kv_hi) == (0, 3)
    np.testing.assert_array_equal(args.prefill.qo_indptr, [0, 4])
    np.testing.assert_array_equal(args.prefill.kv_indptr, [0, 2])
    np.testing.assert_array_equal(args.prefill.kv_last_page_len, [14])
    assert (args.prefill.kv_lo, args.prefill.kv_hi) == (3, 5)
    np.testing.assert_array_equal(args.positions, [16, 4, 26, 27, 28, 29])


@pytest.mark.parametrize(
    ("qo", "kv", "lens", "nd", "n_idx", "match"),
    [
        ([0, 0, 3], [0, 1, 2], [5, 5], 0, 2, "1..seq_len"),
        ([0, 1, 3], [0, 2, 1], [5, 5], 0, 1, "non-decreasing"),
        ([0, 2, 3], [0, 1, 2], [5, 5], 1, 2, "one query token"),
        ([0, 1, 2], [0, 1, 2], [17, 5], 0, 2, "ceil"),
        ([0, 1, 2], [0, 1, 2], [5, 5], 0, 3, "len\\(kv_indices\\)"),
        ([0, 1, 2], [0, 1, 2], [5, 5], 3, 2, "num_decodes"),
        ([0, 6, 7], [0, 1, 2], [5, 5], 0, 2, "1..seq_len"),
        ([1, 2, 3], [0, 1, 2], [5, 5], 0, 2, "starting at 0"),
    ],
)
def test_bad_plan_arrays_raise(qo, kv, lens, nd, n_idx, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_plan_args(np.array(qo), np.array(kv), np.array(lens), nd, 16, n_idx)


def _paged_attention(w, kv_indices, cache, q, scale):
    """Attention the way FlashInfer reads one wrapper's arrays (bottom-right causal mask)."""
    bs, out = cache.shape[2], []
    for i in range(w.num_seqs):
        pages = kv_indices[w.kv_lo + w.kv_indptr[i] : w.kv_lo + w.kv_indptr[i + 1]]
        kv_len = (len(pages) - 1) * bs + int(w.kv_last_page_len[i])
        keys = cache[pages, 0].reshape(-1, *cache.shape[3:])[:kv_len]
        vals = cache[pages, 1].reshape(-1, *cache.shape[3:])[:kv_len]
        qs = q[w.qo_indptr[i] : w.qo_indptr[i + 1]]
        rows = torch.arange(kv_len - len(qs), kv_len)[:, None]
        mask = torch.arange(kv_len)[None, :] <= rows
        o = F.scaled_dot_product_attention(qs.transpose(0, 1), keys.transpose(0, 1),
                                           vals.transpose(0, 1), attn_mask=mask, scale=scale,
                                           enable_gqa=True)  # fmt: skip
        out.append(o.transpose(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize(("block_size", "hq", "hkv"), [(16, 4, 1), (32, 4, 4), (16, 8, 2)])
def test_flashinfer_semantics_of_plan_equal_dense_attention(block_size, hq, hkv) -> None:
    """Attention read through the plan arrays == dense causal SDPA on each whole sequence."""
    gen = torch.Generator().manual_seed(block_size + hq)
    d, scale = 8, 8**-0.5
    cache = torch.zeros(512, 2, block_size, hkv, d, dtype=torch.float64)
    history: dict[int, list[torch.Tensor]] = {}  # seq -> K/V rows [2, hkv, d] in order
    table_steps = _random_steps(hq, block_size, steps=6)
    decodes_seen = 0
    for plan, order in table_steps:
        decodes_seen += plan.num_decodes
        n = len(plan.input_ids)
        q = torch.randn(n, hq, d, generator=gen, dtype=torch.float64)
        kv = torch.randn(n, 2, hkv, d, generator=gen, dtype=torch.float64)
        slots = torch.from_numpy(plan.slot_mapping)
        cache[slots // block_size, :, slots % block_size] = kv  # the interface's slot rule
        args = build_plan_args(plan.qo_indptr, plan.kv_indptr, plan.seq_lens, plan.num_decodes,
                               block_size, len(plan.kv_indices))  # fmt: skip
        idx = torch.from_numpy(plan.kv_indices.astype(np.int64))
        nd = plan.num_decodes
        got = torch.cat([_paged_attention(w, idx, cache, qq, scale)
                         for w, qq in ((args.decode, q[:nd]), (args.prefill, q[nd:]))
                         if w is not None])  # fmt: skip
        expected = []
        for s in range(len(plan.seq_lens)):
            lo, hi = int(plan.qo_indptr[s]), int(plan.qo_indptr[s + 1])
            seq = history.setdefault(order[s], [])
            seq.extend(kv[lo:hi])
            full = torch.stack(seq)  # [L, 2, hkv, d]
            expected.append(_dense(q[lo:hi], full, scale))
        torch.testing.assert_close(got, torch.cat(expected), rtol=1e-10, atol=1e-10)
    assert decodes_seen > 0  # the scenario mixed decodes with prefills


def _dense(q: torch.Tensor, full: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of the last len(q) positions over the whole sequence, GQA by repeat."""
    hq, hkv = q.shape[1], full.shape[2]
    keys = full[:, 0].repeat_interleave(hq // hkv, dim=1)
    vals = full[:, 1].repeat_interleave(hq // hkv, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, keys) * scale
    qpos = torch.arange(len(full) - len(q), len(full))[:, None]
    scores = scores.masked_fill(torch.arange(len(full))[None, :] > qpos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), vals)


# ---- GPU: FlashInfer vs the reference backend ---------------------------------------------------

GPU_FLASHINFER = pytest.mark.skipif(not flashinfer_available(), reason="needs CUDA + flashinfer")

# (decodes, prefill chunks) per step; prefill chunks extend what the sequence already holds, so
# "a" and "d" are chunked prefills whose later chunks hit their cached prefix.
_SCENARIO = [
    ([], {"a": 300, "b": 37, "c": 1}),
    (["b", "c"], {"a": 400, "d": 129}),
    (["a", "b", "c"], {"d": 250, "e": 64}),
    (["a", "b", "c", "d", "e"], {}),
]


@pytest.mark.gpu
@GPU_FLASHINFER
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_flashinfer_matches_reference_backend(block_size: int, group: int) -> None:
    from pyserve.attention.base import build_attention_metadata
    from pyserve.attention.flashinfer import FlashInferAttention
    from pyserve.attention.reference import ReferenceAttention
    from pyserve.kv.cache import KVCache

    hkv, d, layers = 2, 128, 2
    hq = hkv * group
    caches = [KVCache(layers, hkv, d, block_size, 256, 0, torch.bfloat16, "cuda") for _ in "ab"]
    fast = FlashInferAttention(caches[0], hq, d)
    ref = ReferenceAttention(caches[1], hq, d)
    table = PageTable(num_blocks=256, block_size=block_size, seed=group)
    ids = {name: i for i, name in enumerate("abcde")}
    gen = torch.Generator(device="cuda").manual_seed(block_size * 10 + group)
    for decodes, prefills in _SCENARIO:
        plan = table.step({ids[s]: 1 for s in decodes},
                          {ids[s]: [1] * n for s, n in prefills.items()})  # fmt: skip
        meta = build_attention_metadata(plan, block_size, "cuda")
        fast.plan(meta)
        ref.plan(meta)
        n = len(plan.input_ids)
        for layer in range(layers):
            q = torch.randn(n, hq, d, generator=gen, device="cuda").bfloat16()
            k = torch.randn(n, hkv, d, generator=gen, device="cuda").bfloat16()
            v = torch.randn(n, hkv, d, generator=gen, device="cuda").bfloat16()
            got = fast.forward(layer, q, k, v).float()
            want = ref.forward(layer, q, k, v).float()
            assert torch.isfinite(got).all()
            rel = ((got - want).norm() / want.norm()).item()
            assert rel <= 1e-2, f"layer {layer}: relative error {rel:.2e}"
        # Both backends wrote the same K/V to the same slots.
        assert torch.equal(caches[0].device_pool, caches[1].device_pool)
