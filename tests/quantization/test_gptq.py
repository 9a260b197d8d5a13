"""GPTQ onto the q4 group packings: the same arrays as rounding, a smaller output error.

Checked on small random matrices against round-to-nearest (pack/unpack, the format's numpy
reference), and end to end on the tiny model: the numpy calibration forward against the built
model's logits, and calibrated layers against rounded ones on the calibration activations.
"""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.quantization import QUANTIZATIONS, QuantizationError, pack, unpack
from llm_deploy.quantization.gptq import SHRINK, dequantize, gptq, inverse_cholesky_upper, refit_scales
from llm_deploy.quantization.pack import pack_codes

Q4 = ("q4f16_1", "q4f32_1")


def inputs(k: int, tokens: int, seed: int) -> np.ndarray:
    """Activations with correlated channels of unequal size, as a layer's inputs are: the channel
    mix is fixed, `seed` draws the tokens."""
    fixed = np.random.default_rng(1234)
    mix = fixed.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    size = fixed.uniform(0.2, 3.0, k)
    return ((np.random.default_rng(seed).standard_normal((tokens, k)) @ mix) * size).astype(np.float32)


def round_to_nearest(w: np.ndarray, p) -> tuple[np.ndarray, np.ndarray]:
    """Element by element, the grid GPTQ rounds onto: scale = the group's largest weight in
    magnitude, sign kept, / 8 (stored dtype); code = clip(round(w / scale) + 7, 0, 15)."""
    n, k = w.shape
    q = np.zeros((n, k), np.uint32)
    scales = np.zeros((n, k // p.group_size), p.scale_dtype)
    for i in range(n):
        for g in range(k // p.group_size):
            vals = w[i, g * p.group_size : (g + 1) * p.group_size]
            s = np.array(vals[np.argmax(np.abs(vals))] / (p.max_int + 1)).astype(p.scale_dtype)
            scales[i, g] = s
            for t, v in enumerate(vals):
                c = int(np.rint(np.float32(v) / np.float32(s))) if s != 0 else 0
                q[i, g * p.group_size + t] = min(max(c + p.max_int, 0), 2 * p.max_int + 1)
    return q, scales


def output_error(x: np.ndarray, w: np.ndarray, wq: np.ndarray) -> float:
    return float(np.sum((x @ (w - wq).T) ** 2))


@pytest.mark.parametrize("k", [64, 100, 200])
def test_inverse_cholesky_upper(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((3 * k, k))
    h = x.T @ x
    u = inverse_cholesky_upper(h, b=32)
    assert np.array_equal(u, np.triu(u))
    np.testing.assert_allclose(
        u.T @ u, np.linalg.inv(h), rtol=1e-8, atol=1e-10 * np.abs(np.linalg.inv(h)).max()
    )


@pytest.mark.parametrize("fmt", Q4)
@pytest.mark.parametrize("shrink", [None, SHRINK])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_is_below_rounding(fmt, shrink, act_order):
    p = QUANTIZATIONS[fmt].packing
    rng = np.random.default_rng(0)
    n, k = 48, 256
    x = inputs(k, 512, seed=0)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    q, scale = gptq(w, (x.T @ x).astype(np.float64), p, shrink=shrink, act_order=act_order)
    arrays = pack_codes(p, q, scale)  # the format's own arrays: spec shapes and dtypes are checked
    ours = unpack(p, arrays, (n, k))
    np.testing.assert_array_equal(ours, dequantize(q, scale, p))
    rounded = unpack(p, pack(p, w), (n, k))
    e_gptq, e_rtn = output_error(x, w, ours), output_error(x, w, rounded)
    print(f"{fmt} shrink={shrink is not None} act_order={act_order}: gptq {e_gptq:.4g}, rounding {e_rtn:.4g}")
    assert e_gptq < 0.9 * e_rtn
    held_out = inputs(k, 512, seed=1)  # inputs it was not fitted to, from the same distribution
    assert output_error(held_out, w, ours) < output_error(held_out, w, rounded)
    # the codes fixed, least-squares scales fit the calibration inputs at least as well
    refit = dequantize(q, refit_scales(w, (x.T @ x).astype(np.float64), q, p), p)
    assert output_error(x, w, refit) <= e_gptq * (1 + 1e-3)


@pytest.mark.parametrize("fmt", Q4)
def test_gptq_with_uncorrelated_equal_inputs_is_rounding(fmt):
    """H = c I: no column's error can be cancelled by another, so GPTQ rounds to nearest."""
    p = QUANTIZATIONS[fmt].packing
    w = np.random.default_rng(1).standard_normal((16, 128)).astype(np.float32)
    q, scale = gptq(w, 3.0 * np.eye(128), p)
    q_rtn, scale_rtn = round_to_nearest(w, p)
    np.testing.assert_array_equal(scale, scale_rtn)
    assert (q == q_rtn).mean() > 0.999  # ties may round either way in float64 against float32


@pytest.mark.parametrize("fmt", Q4)
def test_rounding_uses_all_sixteen_levels_the_format_decodes(fmt):
    """(q - 7) * scale decodes q = 15 as 8 * scale, a level MLC-LLM's rule (scale = max|w| / 7)
    never uses: with the scale signed, each group's largest weight takes code 15 and is exact,
    and the grid is finer by 8/7 (the format's own decoding, `unpack`, reads it)."""
    p = QUANTIZATIONS[fmt].packing
    w = np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32)
    w[0, :32] = (np.arange(32) % 16 - 8) / 2.0  # -4.0 .. 3.5, largest -4.0: a negative scale
    w[1, :32] = (np.arange(32) % 16 - 7) / 2.0  # -3.5 .. 4.0, largest +4.0
    q, scale = round_to_nearest(w, p)
    ours = unpack(p, pack_codes(p, q, scale), w.shape)
    assert q.max() == 15 and q.min() == 0
    assert scale[0, 0] == -0.5 and scale[1, 0] == 0.5
    np.testing.assert_array_equal(ours[:2, :32], w[:2, :32])  # 16 levels of 1/2, all exact
    mlc = unpack(p, pack(p, w), w.shape)
    assert np.sum((ours - w) ** 2) < 0.85 * np.sum((mlc - w) ** 2)


def test_a_code_over_four_bits_is_refused():
    p = QUANTIZATIONS["q4f16_1"].packing
    q = np.full((2, 32), 15, np.uint32)
    pack_codes(p, q, np.ones((2, 1), np.float16))
    q[1, 3] = 16
    with pytest.raises(QuantizationError, match="code 16 does not fit 4 bits"):
        pack_codes(p, q, np.ones((2, 1), np.float16))


def test_gptq_rejects_a_hessian_of_the_wrong_size():
    p = QUANTIZATIONS["q4f16_1"].packing
    with pytest.raises(ValueError, match=r"H is \(32, 32\), the weight \(4, 64\) needs \(64, 64\)"):
        gptq(np.zeros((4, 64), np.float32), np.eye(32), p)


def test_retarget_fits_the_float_outputs_on_the_drifted_inputs():
    """V = retarget(W, x, x_float) solves min ||x V^T - x_float W^T||^2 + lam ||V - W||^2 (its
    gradient vanishes), and so gives the float outputs more nearly than W does; without drift it
    is W."""
    from llm_deploy.quantization.calibrate import retarget

    rng = np.random.default_rng(3)
    x_float = inputs(96, 400, seed=2)
    x = x_float + 0.1 * rng.standard_normal(x_float.shape).astype(np.float32) * x_float.std(0)
    w = rng.standard_normal((40, 96)).astype(np.float32)
    np.testing.assert_array_equal(retarget(w, x_float, x_float, 1.0), w)
    for damp in (0.01, 1.0):
        v = retarget(w, x, x_float, damp).astype(np.float64)
        xd, xfd, wd = (a.astype(np.float64) for a in (x, x_float, w))
        lam = damp * np.mean(np.sum(xd * xd, axis=0))
        gradient = (xd @ v.T - xfd @ wd.T).T @ xd + lam * (v - wd)
        assert np.abs(gradient).max() < 1e-4 * np.abs((xfd @ wd.T).T @ xd).max()
        target = xfd @ wd.T
        assert np.sum((xd @ v.T - target) ** 2) < 0.9 * np.sum((xd @ wd.T - target) ** 2)


@pytest.fixture(scope="module")
def tiny():
    from llm_deploy.models import load_model

    m = load_model("llama-tiny")
    return m, {n: np.asarray(m.weights[n], np.float32) for n in m.weights}


def logits(config, weights, ids) -> np.ndarray:
    from llm_deploy.quantization.calibrate import Forward

    return Forward(config, weights, len(ids)).logits(ids)


def test_the_calibration_forward_is_the_model(tiny, tiny_runner_factory):
    """The numpy forward that calibration runs computes what the built model computes."""
    (config, _, _), w = tiny
    ids = list(range(3, 90))
    runner = tiny_runner_factory()
    runner.add_sequence(0)
    want = runner.score(0, ids)
    np.testing.assert_allclose(logits(config, w, ids), want, atol=1e-4 * np.ptp(want))


def test_a_calibrated_tiny_model_is_closer_to_float_than_a_rounded_one(tiny):
    from pathlib import Path

    from llm_deploy.quantization.calibrate import calibration_ids
    from llm_deploy.quantization.calibrated import calibrate_model

    (config, weights, tokenizer), w = tiny
    p = QUANTIZATIONS["q4f16_1"].packing
    names = {n for n, a in w.items() if a.ndim == 2}
    codes, floats = calibrate_model(config, weights, calibration_ids(tokenizer), p, names)
    assert set(codes) == names - {"embed_tokens"}  # untied: read by take only, rounded
    calibrated = {
        n: dequantize(codes[n][0], codes[n][1]["float16"], p) if n in codes else floats.get(n, a)
        for n, a in w.items()
    }
    assert set(floats) == {n for n in w if "norm" in n and n != "norm"}  # AWQ folded into each block norm
    calibrated["embed_tokens"] = unpack(p, pack(p, w["embed_tokens"]), w["embed_tokens"].shape)
    rounded = {n: unpack(p, pack(p, a), a.shape) if n in names else a for n, a in w.items()}
    held_out = tokenizer.encode((Path(__file__).parent.parent / "data" / "perplexity_text.txt").read_text())
    for ids in (calibration_ids(tokenizer)[:256], held_out[:256]):
        ref = logits(config, w, ids)
        e_cal = np.mean((logits(config, calibrated, ids) - ref) ** 2)
        e_rtn = np.mean((logits(config, rounded, ids) - ref) ** 2)
        print(f"logit error: calibrated {e_cal:.4g}, rounded {e_rtn:.4g}")
        assert e_cal < e_rtn


def test_awq_scaling_keeps_the_float_model(tiny):
    """AWQ's factors are folded into the norms and into v's and up's rows: without rounding, the
    model computes what it did (and the factors are not all ones, or this shows nothing)."""
    from llm_deploy.quantization.calibrate import awq_balance, calibrate, calibration_ids

    (config, _, tokenizer), w = tiny
    work = dict(w)
    balance = awq_balance(config, work, QUANTIZATIONS["q4f16_1"].packing)
    calibrate(config, work, calibration_ids(tokenizer, 1024), lambda names, wg, h: wg, balance=balance)
    for kind in ("input_norm", "v_proj", "o_proj", "up_proj", "post_attention_norm"):
        names = [f"layers.{i}.{kind}" for i in range(config.num_hidden_layers)]
        assert any(not np.allclose(work[n], w[n]) for n in names), f"no {kind} was rescaled"
    ids = list(range(3, 120))
    ref = logits(config, w, ids)
    np.testing.assert_allclose(logits(config, work, ids), ref, atol=1e-4 * np.ptp(ref))


def test_calibrated_weights_are_the_formats_arrays_and_cached(tiny, tmp_path, monkeypatch):
    """What the build stores: for every linear weight the arrays `pack` would give (names, shapes,
    dtypes), computed once; a second build reads them from the cache."""
    from llm_deploy.compiler.passes.quantize import quantize
    from llm_deploy.models.llama import build_llama
    from llm_deploy.quantization import calibrated

    monkeypatch.setenv("LLM_DEPLOY_CACHE", str(tmp_path))
    (config, weights, tokenizer), w = tiny
    plan = quantize(build_llama(config), "q4f16_1").attrs["quantization"]["params"]
    first = calibrated.calibrated_weights(config, weights, tokenizer, plan)
    assert set(first.packed) == set(plan) - {"embed_tokens"}
    p = QUANTIZATIONS["q4f16_1"].packing
    for name, arrays in first.packed.items():
        assert {k: (a.shape, a.dtype) for k, a in arrays.items()} == {
            k: (a.shape, a.dtype) for k, a in pack(p, w[name]).items()
        }
    assert len(list((tmp_path / "calibration").glob("*.npz"))) == 1
    monkeypatch.setattr(calibrated, "calibrate_model", None)  # a second run must not calibrate
    second = calibrated.calibrated_weights(config, weights, tokenizer, plan)
    for name, arrays in first.packed.items():
        for k, a in arrays.items():
            np.testing.assert_array_equal(second.packed[name][k], a)
    assert all(np.array_equal(second.floats[n], a) for n, a in first.floats.items())
    assert set(second.floats) == set(first.floats)
    # q4f32_1 reads the same entry: the same codes, its scales float32 (the format's arrays)
    plan32 = quantize(build_llama(config), "q4f32_1").attrs["quantization"]["params"]
    third = calibrated.calibrated_weights(config, weights, tokenizer, plan32)
    p32 = QUANTIZATIONS["q4f32_1"].packing
    for name, arrays in third.packed.items():
        assert {k: (a.shape, a.dtype) for k, a in arrays.items()} == {
            k: (a.shape, a.dtype) for k, a in pack(p32, w[name]).items()
        }
        np.testing.assert_array_equal(arrays["qweight"], first.packed[name]["qweight"])
        np.testing.assert_allclose(arrays["scale"], first.packed[name]["scale"], rtol=1e-3)
