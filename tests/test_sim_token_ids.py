"""The simulator's synthetic token ids: SplitMix64 in the C++ core against Vigna's reference."""

from __future__ import annotations

import numpy as np
import pytest

from pyserve import _core
from pyserve.sim.trace import Call, Program, ProgramTokens, draw_at, hash_block_ids

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def _finalize(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def splitmix64(state: int, n: int) -> list[int]:
    """Reference SplitMix64 (prng.di.unimi.it/splitmix64.c) on Python ints."""
    out = []
    for _ in range(n):
        state = (state + GOLDEN) & M64
        out.append(_finalize(state))
    return out


def test_reference_reproduces_the_published_sequence():
    # splitmix64.c seeded with 1234567: the test vector other implementations check against
    assert splitmix64(1234567, 5) == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ]


@pytest.mark.parametrize("seed", [0, 1234567, M64, 0x0123456789ABCDEF])
@pytest.mark.parametrize("low,high", [(16, 32000), (0, 2**31 - 1), (-5, 7), (-(2**31), 2**31 - 1)])
def test_draw_is_splitmix64_mapped_by_modulo(seed, low, high):
    got = _core.draw_token_ids(seed, 64, low, high)
    assert got.dtype == np.int32 and got.shape == (64,)
    assert got.tolist() == [low + z % (high - low) for z in splitmix64(seed, 64)]


def test_a_draw_prefix_equals_a_shorter_draw():
    long = _core.draw_token_ids(99, 1000, 16, 32000)
    assert np.array_equal(long[:37], _core.draw_token_ids(99, 37, 16, 32000))
    assert _core.draw_token_ids(99, 0, 16, 32000).shape == (0,)


def test_draw_at_picks_elements_of_the_cpp_draws():
    seeds = np.array([5, 2**64 - 3, 77], dtype=np.uint64)
    pos = np.array([0, 9, 3])
    want = [_core.draw_token_ids(int(s), 10, 16, 32000)[p] for s, p in zip(seeds, pos, strict=True)]
    assert draw_at(seeds, pos, 16, 32000).tolist() == want


def test_hash_block_ids_depend_on_the_hash_id_alone():
    ids = hash_block_ids([3, 7, 3], 4, 16, 32000)
    ref = [16 + _finalize((h * 4 + i + GOLDEN) & M64) % (32000 - 16) for h in (3, 7, 3)
           for i in range(4)]  # fmt: skip
    assert ids.dtype == np.int32 and ids.tolist() == ref
    assert np.array_equal(ids[:4], ids[8:]) and not np.array_equal(ids[:4], ids[4:8])


def test_program_tokens_are_stable_and_in_range():
    calls = (Call("a", 100, 20), Call("b", 10, 5, parents=("a",), reuse_parent_context=True))
    p = Program("p", 0.0, calls)
    t = ProgramTokens(p, vocab_size=500, reserved_low=16)
    full = t.prompt_ids("b")
    assert full.shape == (100 + 20 + 10,) and full.min() >= 16 and full.max() < 500
    assert np.array_equal(full[:120], t.full_ids("a"))
    assert np.array_equal(full, ProgramTokens(p, 500, 16).prompt_ids("b"))


@pytest.mark.parametrize("args", [(1, -1, 0, 10), (1, 4, 10, 10), (1, 4, 10, 3)])
def test_bad_draw_arguments_raise_value_error(args):
    with pytest.raises(ValueError):
        _core.draw_token_ids(*args)


def test_bad_hash_block_arguments_raise_value_error():
    with pytest.raises(ValueError):
        _core.hash_block_token_ids(np.array([1], np.uint64), 0, 0, 10)
    with pytest.raises(ValueError):
        _core.hash_block_token_ids(np.array([1], np.uint64), 4, 5, 5)
