"""Cost model, presets and calibration of the simulator."""

import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest

from pyserve.sim import cli
from pyserve.sim.calibrate import (
    fit_preset,
    load_step_log,
    make_step_log,
    mean_abs_pct_error,
    predict,
)
from pyserve.sim.cost_model import CostModel, check_batch
from pyserve.sim.presets import (
    LLAMA_3_1_8B,
    LLAMA_3_1_70B,
    get_preset,
    load_preset,
    preset_names,
    save_preset,
)

H100_8B = get_preset("llama3-8b-h100")


def test_model_specs_match_published_parameter_counts():
    # Parameter counts published on the Hugging Face model cards.
    assert LLAMA_3_1_8B.num_params == 8_030_261_248
    assert LLAMA_3_1_70B.num_params == 70_553_706_496
    assert LLAMA_3_1_8B.kv_bytes_per_token == 131072  # 2 * 32 layers * 8 heads * 128 * 2 bytes


def test_step_time_matches_hand_computation():
    p = H100_8B.params
    q = np.array([1, 1, 512], dtype=np.int32)
    c = np.array([100, 2000, 1024], dtype=np.int32)
    tokens = 514
    layer = 218_112_000  # 4096*(4096+2048) + 4096*4096 + 3*4096*14336 + 2*4096
    flops = tokens * 2 * 32 * (layer - 8192) + 3 * 2 * 4096 * 128256
    weight_bytes = (32 * layer + 128256 * 4096) * 2
    linear = max(flops / p.linear_flops_per_s, weight_bytes / p.hbm_bytes_per_s)
    # query i of the 512-token chunk sees 512 + i + 1 keys: 512*512 + 512*513/2 pairs
    pairs = [100, 2000, 512 * 512 + 512 * 513 // 2]
    attn = sum(
        max(n * 4 * 32 * 32 * 128 / p.attn_flops_per_s, ctx * 131072 / p.hbm_bytes_per_s)
        for n, ctx in zip(pairs, c.tolist(), strict=True)
    )
    want = linear + attn + tokens * p.token_overhead_s + p.step_overhead_s
    model = CostModel(H100_8B)
    assert model.step_time(q, c) == pytest.approx(want, rel=1e-12)
    assert model.step_time(q, c, num_decodes=2) == pytest.approx(want, rel=1e-12)


def _random_batch(rng, n, max_q=2048):
    """n sequences: decodes first, then up to 4 prefill chunks (like a StepPlan)."""
    nd = n - int(rng.integers(0, min(n, 4) + 1))
    q = np.concatenate([np.ones(nd, np.int64), rng.integers(1, max_q, n - nd)])
    c = q + rng.integers(0, 8000, n)
    return q, c, nd


@pytest.mark.parametrize("preset", preset_names())
def test_step_time_is_monotone(preset):
    model = CostModel(get_preset(preset))
    rng = np.random.default_rng(0)
    for _ in range(200):
        q, c, _ = _random_batch(rng, int(rng.integers(1, 300)))
        t = model.step_time(q, c)
        i = int(rng.integers(len(q)))
        more_ctx, more_q = c.copy(), q.copy()
        more_ctx[i] += 100
        more_q[i] += 1
        assert model.step_time(q, more_ctx) > t
        assert model.step_time(more_q, more_ctx) > model.step_time(q, more_ctx)
        assert model.step_time(np.append(q, 1), np.append(c, 50)) > t
        assert model.step_time(q[:-1], c[:-1]) < t


def test_decode_hint_and_scalar_path_agree_with_vector_path():
    model = CostModel(H100_8B)
    rng = np.random.default_rng(1)
    for n in (1, 5, 9, 40, 256):
        q, c, nd = _random_batch(rng, n)
        want = model.step_time(q, c)
        assert model.step_time(q, c, num_decodes=nd) == pytest.approx(want, rel=1e-12)
    assert model.step_time(np.array([], np.int32), np.array([], np.int32)) == 0.0
    with pytest.raises(ValueError, match="ctx_lens has 1"):
        model.step_time(np.array([1, 1]), np.array([5]))
    with pytest.raises(ValueError, match="num_decodes"):
        model.step_time(np.array([1]), np.array([5]), num_decodes=2)


def test_step_time_is_cheap_at_256_sequences():
    model = CostModel(H100_8B)
    rng = np.random.default_rng(2)
    q = np.ones(256, np.int32)
    q[-2:] = 300
    c = (q + rng.integers(0, 4000, 256)).astype(np.int32)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        model.step_time(q, c, num_decodes=254)
        times.append(time.perf_counter() - t0)
    # NOTE: measured ~3 us here; the bound leaves room for a loaded CI machine.
    assert np.median(times) < 50e-6


def test_check_batch_rejects_bad_input():
    check_batch(np.array([1, 4]), np.array([3, 4]))
    with pytest.raises(ValueError, match=">= its q_lens"):
        check_batch(np.array([5]), np.array([4]))
    with pytest.raises(ValueError, match=">= 1"):
        check_batch(np.array([0]), np.array([4]))
    with pytest.raises(ValueError, match="integer"):
        check_batch(np.array([1.0]), np.array([4.0]))


def test_swap_time_and_capacity_by_hand():
    model = CostModel(H100_8B, block_size=16)
    assert model.swap_time(0) == 0.0
    want = 20e-6 + 1000 * 16 * 131072 / (63e9 * 0.8)
    assert model.swap_time(1000) == pytest.approx(want, rel=1e-12)
    assert model.swap_time(500, block_size=32) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError):
        model.swap_time(-1)
    free = 81559 * 2**20 * 0.9 - 2 * 2**30 - 8_030_261_248 * 2
    assert model.kv_capacity_blocks() == int(free // (16 * 131072))
    tp4 = CostModel(get_preset("llama3-70b-4xh100"))
    assert tp4.swap_time(1000) < model.swap_time(1000)  # four host links in parallel
    assert tp4.kv_capacity_blocks(16) > 0


def test_tensor_parallel_preset_costs_all_reduce():
    p = get_preset("llama3-70b-4xh100").params
    # 2 all-reduces per layer: 160 * 10 us of latency on top of the 1 ms base overhead
    assert p.step_overhead_s == pytest.approx(1e-3 + 160 * 10e-6)
    assert p.linear_flops_per_s == pytest.approx(4 * 0.9 * 0.65 * 989e12)


def test_preset_lookup_and_json_round_trip(tmp_path):
    with pytest.raises(ValueError, match="llama3-8b-a100"):
        get_preset("gpt-5-on-a-toaster")
    odd = replace(H100_8B, name="odd", params=replace(H100_8B.params, attn_flops_per_s=math.inf))
    path = tmp_path / "odd.json"
    save_preset(odd, path)
    assert load_preset(path) == odd
    assert get_preset(str(path)) == odd
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="missing field 'params'"):
        load_preset(path)


def _synthetic_records(preset, n, rng, noise=0.0):
    model = CostModel(preset)
    records = []
    for _ in range(n):
        q, c, _ = _random_batch(rng, int(rng.integers(1, 256)))
        t = model.step_time(q, c) * (1 + noise * rng.standard_normal())
        records.append((q.tolist(), c.tolist(), t))
    return records


def test_calibrate_recovers_known_coefficients():
    p = H100_8B.params
    truth = replace(
        H100_8B,
        params=replace(
            p,
            linear_flops_per_s=p.linear_flops_per_s * 0.7,
            hbm_bytes_per_s=p.hbm_bytes_per_s * 1.15,
            attn_flops_per_s=p.attn_flops_per_s * 0.5,
            step_overhead_s=3e-3,
            token_overhead_s=2e-6,
        ),
    )
    log = make_step_log(_synthetic_records(truth, 300, np.random.default_rng(3)))
    result = fit_preset(log, H100_8B)
    assert result.mape < 1e-6
    for key in ("linear_flops_per_s", "hbm_bytes_per_s", "attn_flops_per_s"):
        assert getattr(result.preset.params, key) == pytest.approx(getattr(truth.params, key))
    assert result.preset.params.step_overhead_s == pytest.approx(3e-3)
    assert result.preset.params.token_overhead_s == pytest.approx(2e-6)
    np.testing.assert_allclose(predict(result.preset, log), log.seconds, rtol=1e-9)


def test_calibrate_cli_on_noisy_log(tmp_path, capsys):
    slow = replace(H100_8B.params, hbm_bytes_per_s=2.0e12, step_overhead_s=4e-3)
    truth = replace(H100_8B, params=slow)
    records = _synthetic_records(truth, 300, np.random.default_rng(4), noise=0.02)
    log_path = tmp_path / "steps.jsonl"
    log_path.write_text(
        "".join(
            json.dumps({"q_lens": q, "ctx_lens": c, "seconds": s}) + "\n" for q, c, s in records
        )
    )
    out = tmp_path / "fit.json"
    argv = ["calibrate", "--log", str(log_path), "--preset", "llama3-8b-h100", "--out", str(out)]
    assert cli.main(argv) == 0
    fitted = load_preset(out)
    assert fitted.params.hbm_bytes_per_s == pytest.approx(2.0e12, rel=0.05)
    assert fitted.params.step_overhead_s == pytest.approx(4e-3, rel=0.25)
    assert "(fitted)" in capsys.readouterr().out
    log = load_step_log(log_path)
    assert mean_abs_pct_error(H100_8B, log) > 10
    assert fit_preset(log, H100_8B).mape < 2.0  # 2% Gaussian noise: mean |error| ~ 1.6%


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "bad JSON"),
        ('{"q_lens": [1], "ctx_lens": [3]}', "missing field 'seconds'"),
        ('{"q_lens": [1, 2], "ctx_lens": [3], "seconds": 0.1}', "equal length"),
        ('{"q_lens": [4], "ctx_lens": [3], "seconds": 0.1}', "ctx_lens >= q_lens"),
        ('{"q_lens": [1], "ctx_lens": [3], "seconds": -1}', "seconds must be finite and > 0"),
        ('{"q_lens": ["1"], "ctx_lens": [3], "seconds": 1}', "lists of integers"),
    ],
)
def test_step_log_errors_name_the_line(tmp_path, line, reason):
    path = tmp_path / "log.jsonl"
    path.write_text('{"q_lens": [1], "ctx_lens": [3], "seconds": 0.01}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"line 2: .*{reason}"):
        load_step_log(path)
