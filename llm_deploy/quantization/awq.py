"""Activation-aware scaling (AWQ, Lin et al. 2023): weights of inputs that carry large activations
are scaled up before quantization, and the op before the linear (an RMSNorm weight, or the rows of
the projection that feeds it) divides its output by the same factors, so the float model computes
the same function while the salient weights get a finer share of the 4-bit grid.

    y = x W^T = (x / s) (W diag(s))^T

s = mean|x|^alpha per input channel, alpha picked from a grid by the output error of the rounded
weights on calibration inputs: tr((W - Q) H (W - Q)^T), H = X^T X.
"""

from __future__ import annotations

import numpy as np

from llm_deploy.quantization.formats import GroupPacking
from llm_deploy.quantization.gptq import dequantize
from llm_deploy.quantization.pack import group_quantize

ALPHAS = np.linspace(0.0, 1.0, 11)


def _rounded(w: np.ndarray, p: GroupPacking) -> np.ndarray:
    return dequantize(*group_quantize(w, p), p)


def output_error(w: np.ndarray, wq: np.ndarray, h: np.ndarray) -> float:
    d = (w - wq).astype(np.float32)
    return float(np.sum((d @ h.astype(np.float32)) * d))


def awq_scales(
    w: np.ndarray, h: np.ndarray, x_mean_abs: np.ndarray, p: GroupPacking, alphas: np.ndarray = ALPHAS
) -> np.ndarray:
    """Per-input-channel factors s (K,) for `w` (N, K) whose inputs have X^T X = `h` and mean
    |x| = `x_mean_abs`; all ones when no alpha beats plain rounding."""
    base = np.maximum(x_mean_abs.astype(np.float64), 1e-8)
    best, best_err = np.ones(w.shape[1]), np.inf
    for a in alphas:
        s = base**a
        s /= np.sqrt(s.max() * s.min())  # centre the factors around 1
        err = output_error(w, _rounded(w * s.astype(np.float32), p) / s.astype(np.float32), h)
        if err < best_err:
            best, best_err = s, err
    return best
