"""Sampler: greedy, seeds, temperature / top-p statistics, masks, penalties, logprobs."""

from __future__ import annotations

import torch

from pyserve.model.sampler import Sampler, SamplingBatch, apply_filters, apply_penalties
from pyserve.sampling_params import SamplingParams

V = 50


def _batch(params, outputs=None, prompts=None, eos=()):
    outputs = outputs if outputs is not None else [[] for _ in params]
    return SamplingBatch.from_params(params, outputs, prompts, eos)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def _sample_counts(logits_row, params, n=20000, seed=0) -> torch.Tensor:
    logits = logits_row.repeat(n, 1)
    gen = torch.Generator().manual_seed(seed)
    out = Sampler()(logits, _batch([params] * n), generator=gen)
    return torch.bincount(out.token_ids, minlength=logits_row.numel()).float()


def test_greedy_is_argmax():
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(0))
    out = Sampler()(logits, _batch([SamplingParams(temperature=0.0)] * 6))
    assert torch.equal(out.token_ids, logits.argmax(1))
    mixed = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=1)] * 3
    out = Sampler()(logits, _batch(mixed))
    assert torch.equal(out.token_ids[::2], logits[::2].argmax(1))


def test_seeded_rows_reproducible_across_batch_compositions():
    g = torch.Generator().manual_seed(1)
    row = torch.randn(V, generator=g)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    history = [[3, 4], [3, 4, 5, 6]]
    alone = [Sampler()(row[None], _batch([seeded], [h])).token_ids[0].item() for h in history]
    others = [SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, seed=7),
              SamplingParams(temperature=0.0)]  # fmt: skip
    for pos in range(4):
        params = others[:pos] + [seeded] + others[pos:]
        logits = torch.randn(len(params), V, generator=g)
        logits[pos] = row
        for h, expected in zip(history, alone, strict=True):
            outs = [[1] * (i + 1) for i in range(len(params))]
            outs[pos] = h
            tok = Sampler()(logits, _batch(params, outs)).token_ids[pos].item()
            assert tok == expected
    # Different steps draw differently: over many steps a seeded request is not constant.
    draws = {Sampler()(row[None], _batch([seeded], [[0] * s])).token_ids.item() for s in range(40)}
    assert len(draws) > 3


def test_temperature_distribution_chi_square():
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.5])
    counts = _sample_counts(logits, SamplingParams(temperature=0.7))
    # df = 4: the 99.9% quantile of chi-square is 18.47.
    assert _chi_square(counts, torch.softmax(logits / 0.7, 0)) < 18.47
    # The check has power: the untempered distribution is clearly rejected.
    assert _chi_square(counts, torch.softmax(logits, 0)) > 100


def test_top_p_distribution_chi_square():
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    counts = _sample_counts(probs.log(), SamplingParams(temperature=1.0, top_p=0.8), seed=1)
    # Mass ahead of each token: 0, .4, .7, .85, .95 -> the nucleus is the first three.
    assert counts[3:].sum() == 0
    nucleus = probs[:3] / probs[:3].sum()
    assert _chi_square(counts[:3], nucleus) < 13.82  # df = 2, 99.9% quantile
    assert _chi_square(counts[:3], torch.full((3,), 1 / 3)) > 100


def test_top_k_and_min_p_masks():
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(top_k=3), SamplingParams(min_p=0.2), SamplingParams(top_k=-1),
              SamplingParams(top_k=5, min_p=0.5)]  # fmt: skip
    out = apply_filters(logits, _batch(params))
    kept = torch.isfinite(out)
    top3 = torch.zeros(V, dtype=torch.bool)
    top3[logits[0].topk(3).indices] = True
    assert torch.equal(kept[0], top3)
    p1 = logits[1].softmax(0)
    assert torch.equal(kept[1], p1 >= 0.2 * p1.max())
    assert kept[2].all()
    p3 = logits[3].softmax(0)
    top5 = torch.zeros(V, dtype=torch.bool)
    top5[logits[3].topk(5).indices] = True
    assert torch.equal(kept[3], top5 & (p3 >= 0.5 * p3.max()))
    assert torch.equal(out[kept], logits[kept])  # kept logits unchanged


def test_penalties_match_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0]])
    p = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    batch = _batch([p], outputs=[[1, 2, 2]], prompts=[[0, 4]])
    got = apply_penalties(logits, batch)
    expected = torch.tensor([[
        2.0 / 2.0,  # prompt token, positive: divided
        -1.0 * 2.0 - 0.25 * 1 - 0.5,  # output once: rep, frequency x1, presence
        0.5 / 2.0 - 0.25 * 2 - 0.5,  # output twice
        3.0,  # unseen
        -2.0 * 2.0,  # prompt token, negative: multiplied
        1.0,
    ]])  # fmt: skip
    torch.testing.assert_close(got, expected)
    # No penalty configured: logits pass through the sampler untouched (greedy picks token 3).
    plain = _batch([SamplingParams(temperature=0.0)], outputs=[[3, 3]])
    assert plain.output_token_ids is None
    assert Sampler()(logits, plain).token_ids.item() == 3
    penalised = _batch([SamplingParams(temperature=0.0, frequency_penalty=2.0)], outputs=[[3, 3]])
    assert Sampler()(logits, penalised).token_ids.item() == 0


def test_logprobs_match_log_softmax():
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(4))
    params = [
        SamplingParams(temperature=0.0, logprobs=5),
        SamplingParams(temperature=0.5, logprobs=2, seed=3),
        SamplingParams(temperature=2.0, logprobs=0),
    ]
    out = Sampler()(logits, _batch(params))
    ref = torch.log_softmax(logits / torch.tensor([[1.0], [0.5], [2.0]]), dim=1)
    torch.testing.assert_close(out.logprobs, ref.gather(1, out.token_ids[:, None])[:, 0])
    assert out.topn_logprobs.shape == (3, 5)
    torch.testing.assert_close(out.topn_logprobs, ref.topk(5, dim=1).values)
    assert torch.equal(out.topn_ids, ref.topk(5, dim=1).indices)
    assert Sampler()(logits, _batch([SamplingParams()] * 3)).logprobs is None


def test_min_tokens_bans_eos_and_stop_tokens():
    logits = torch.zeros(2, V)
    logits[:, 7] = 10.0
    logits[:, 9] = 5.0
    p = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[9])
    out = Sampler()(logits, _batch([p, p], outputs=[[1], [1, 2]], eos=[7]))
    assert out.token_ids.tolist() == [0, 7]  # row 0 below min_tokens: 7 (eos) and 9 banned


def test_token_bitmask_restricts_each_row():
    logits = torch.randn(2, 40)
    mask = torch.zeros(2, 2, dtype=torch.int32)
    mask[0, 0] = 1 << 5  # row 0 may only emit token 5
    mask[1, 1] = (1 << 2) | (1 << 7)  # row 1: tokens 34 and 39
    batch = SamplingBatch.from_params([SamplingParams(temperature=0.0)] * 2, [[], []])
    batch.token_bitmask = mask
    out = Sampler()(logits, batch).token_ids.tolist()
    assert out[0] == 5 and out[1] == (34 if logits[1, 34] > logits[1, 39] else 39)


def test_slot_sampling_matches_from_params():
    """The engine's persistent per-slot settings give the same batch as rebuilding it."""
    import numpy as np

    from pyserve.engine.slot_sampling import SlotSampling

    params = [
        SamplingParams(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5,
                       presence_penalty=0.2, min_tokens=3, stop_token_ids=[4]),
        SamplingParams(temperature=0.7, top_k=5, seed=3, logprobs=2),
    ]  # fmt: skip
    slots = SlotSampling(16, [7], torch.device("cpu"), capacity=2)
    slots.add(3, params[0], [1, 2, 3])  # NOTE: slot 3 > capacity: the arrays grow
    slots.add(0, params[1], [5])
    slots.record(np.array([3, 0]), np.array([9, 9]))
    slots.record(np.array([3]), np.array([2]))
    rows = np.array([3, 0], np.int32)
    for seed in range(5):  # NOTE: a batch's generators are used up by one draw: build both anew
        ref = SamplingBatch.from_params(params, [[9, 2], [9]], [[1, 2, 3], [5]], [7])
        logits = torch.randn(2, 16, generator=torch.Generator().manual_seed(seed))
        a, b = Sampler()(logits, slots.batch(rows)), Sampler()(logits, ref)
        assert a.token_ids.tolist() == b.token_ids.tolist()
        torch.testing.assert_close(a.topn_logprobs, b.topn_logprobs)
    slots.finish(3)
    assert slots.batch(np.array([0], np.int32)).banned_token_ids is None
