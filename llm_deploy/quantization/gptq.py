"""GPTQ (Frantar et al. 2022) onto a symmetric group packing: codes and scales in the arrays that
round-to-nearest (pack.group_quantize) would fill, chosen to minimise the layer's output error
on calibration activations instead of each weight's own error.

For W (N, K) and H = X^T X (K, K) from inputs X (tokens, K), the columns are quantized left to
right; each column's rounding error is spread over the columns not yet quantized through the
Cholesky factor of H^-1, so later columns absorb what earlier ones lost:

    err = (w[:, j] - q[:, j]) / U[j, j]          U = chol(H^-1), upper
    W[:, j+1:] -= err * U[j, j+1:]

A group's scale is set when its first column is reached, from the group's weights as updated so
far (its largest weight, sign kept, over max_int + 1: the codes use all 2**bits levels the format
decodes, -max_int..max_int + 1, with the extra one on the largest weight's side; or the fraction of
that in SHRINK that rounds the group best; rounded to the scale's storage dtype so the codes fit
what the kernel reads). `refit_scales` can refit them by least squares once all codes are fixed.
Columns go in order, or by decreasing H diagonal with every group's scale set up front (act-order
with static groups), so groups stay contiguous along K as the format requires. Updates are applied
lazily in blocks of columns (the paper's "lazy batch" form).
"""

from __future__ import annotations

import numpy as np

from llm_deploy.quantization.formats import GroupPacking

# fractions of max|w| / max_int tried as each group's scale (clipping the largest weights can
# round the rest more finely); the one with the least squared error in the group wins
SHRINK = np.linspace(1.0, 0.7, 7)


def _group_scale(g: np.ndarray, p: GroupPacking, shrink: np.ndarray | None = None) -> np.ndarray:
    """(N, group) float weights -> (N,) scales in storage dtype: the group's largest weight in
    magnitude, sign kept, over max_int + 1, so it takes the top code (Q4_0's choice: the grid's
    extra level goes to whichever side needs it), or with `shrink` the fraction of that (clipping
    the largest weights) that rounds the group with the least squared error."""
    peak = g[np.arange(g.shape[0]), np.abs(g).argmax(axis=-1)]  # (N,) signed
    full = peak / (p.max_int + 1)
    if shrink is None:
        return full.astype(p.scale_dtype)
    cand = (full[None] * shrink[:, None]).astype(p.scale_dtype).astype(g.dtype)  # (C, N)
    err = ((_codes(g[None], cand[..., None], p) * cand[..., None] - g[None]) ** 2).sum(-1)  # (C, N)
    return cand[np.argmin(err, axis=0), np.arange(g.shape[0])].astype(p.scale_dtype)


def _codes(w: np.ndarray, s: np.ndarray, p: GroupPacking) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s != 0, np.rint(w / s), 0.0)
    return np.clip(q, -p.max_int, p.max_int + 1)  # signed codes: value = code * scale


def _cholesky(a: np.ndarray) -> np.ndarray:
    """Lower L with L L^T = a, a column at a time (for small blocks)."""
    n = a.shape[0]
    low = np.zeros_like(a)
    for j in range(n):
        d = np.sqrt(a[j, j] - low[j, :j] @ low[j, :j])
        low[j, j] = d
        low[j + 1 :, j] = (a[j + 1 :, j] - low[j + 1 :, :j] @ low[j, :j]) / d
    return low


def _lower_inverse(low: np.ndarray) -> np.ndarray:
    """L^-1 of a lower triangular L, a row at a time (for small blocks)."""
    n = low.shape[0]
    inv = np.zeros_like(low)
    for i in range(n):
        inv[i, : i + 1] = -(low[i, :i] @ inv[:i, : i + 1]) / low[i, i]
        inv[i, i] = 1.0 / low[i, i]
    return inv


def inverse_cholesky_upper(h: np.ndarray, b: int = 64) -> np.ndarray:
    """U upper with U^T U = H^-1, for H symmetric positive definite (K, K).

    With P the reversal permutation and P H P = L L^T: H^-1 = (P L^-T P)(P L^-1 P), so
    U = P L^-1 P. Blocked by hand (b x b blocks column by column, the rest matrix products)
    because LAPACK's threaded factorizations crawl on a shared machine.
    """
    a = h[::-1, ::-1].copy()
    k = a.shape[0]
    low = np.zeros_like(a)
    diag_inv = []
    for j0 in range(0, k, b):
        j1 = min(j0 + b, k)
        ljj = _cholesky(a[j0:j1, j0:j1])
        diag_inv.append(_lower_inverse(ljj))
        low[j0:j1, j0:j1] = ljj
        if j1 < k:
            lij = a[j1:, j0:j1] @ diag_inv[-1].T  # (K - j1, b)
            low[j1:, j0:j1] = lij
            a[j1:, j1:] -= lij @ lij.T
    inv = np.zeros_like(low)  # L^-1, lower, a block row at a time
    for i0, mii in zip(range(0, k, b), diag_inv):
        i1 = i0 + mii.shape[0]
        inv[i0:i1, i0:i1] = mii
        if i0:
            inv[i0:i1, :i0] = -mii @ (low[i0:i1, :i0] @ inv[:i0, :i0])
    return inv[::-1, ::-1].copy()


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    p: GroupPacking,
    damp: float = 0.01,
    block: int = 128,
    shrink: np.ndarray | None = None,
    act_order: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes in [0, 2**bits - 1] (N, K) and scales (N, K / group) of `w` (N, K) for inputs with
    X^T X = `h` (K, K). `damp` adds that fraction of the mean diagonal to H (it is often singular).

    `act_order` visits the columns by decreasing H diagonal (the inputs with the most energy
    first, while the most columns are left to absorb their error) with "static groups": every
    group's scale is set up front from the float weights, so groups stay contiguous along K.
    """
    n, k = w.shape
    gs = p.group_size
    if h.shape != (k, k):
        raise ValueError(f"gptq: H is {h.shape}, the weight {w.shape} needs ({k}, {k})")
    if block % gs:
        raise ValueError(f"gptq: block {block} must be a multiple of the group size {gs}")
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0  # inputs that never fire: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scales = np.zeros((n, k // gs), p.scale_dtype)
    order = np.arange(k)
    if act_order:
        scales = np.stack([_group_scale(w[:, g : g + gs], p, shrink) for g in range(0, k, gs)], axis=1)
        order = np.argsort(-np.diag(h), kind="stable")
        w, h = w[:, order], h[order][:, order]
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    u = inverse_cholesky_upper(h)  # (K, K)

    codes = np.zeros((n, k), np.float64)  # in visiting order
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb = w[:, b0:b1].copy()  # (N, B): this block, updated column by column
        err = np.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = b0 + j
            if not act_order and col % gs == 0:
                scales[:, col // gs] = _group_scale(wb[:, j : j + gs], p, shrink)
            s = scales[:, order[col] // gs].astype(np.float64)
            c = _codes(wb[:, j], s, p)
            codes[:, col] = c
            e = (wb[:, j] - c * s) / ub[j, j]
            wb[:, j:] -= np.outer(e, ub[j, j:])
            err[:, j] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    q = np.empty((n, k), np.uint32)
    q[:, order] = codes + p.max_int
    return q, scales


def dequantize(q: np.ndarray, scales: np.ndarray, p: GroupPacking) -> np.ndarray:
    """float32 (N, K) values of codes and scales: what the kernels compute."""
    return (q.astype(np.float32) - p.max_int) * np.repeat(scales.astype(np.float32), p.group_size, axis=-1)


def refit_scales(
    w: np.ndarray, h: np.ndarray, q: np.ndarray, p: GroupPacking, rows: int = 4096
) -> np.ndarray:
    """The scales (N, K / group) that, with the codes `q` fixed, minimise the output error
    ||X (w - dequantize(q, scales))^T||^2 for X^T X = `h`: GPTQ fixed each group's scale before
    the group's own updates, and the codes it chose may be fit better afterwards. Per row, the
    output is linear in the G = K / group scales: a G x G least-squares system."""
    n, k = w.shape
    g, gs = k // p.group_size, p.group_size
    hk = h.astype(np.float64).reshape(k, g, gs)  # H's columns by group
    out = np.zeros((n, g), p.scale_dtype)
    for r0 in range(0, n, rows):
        c = (q[r0 : r0 + rows].astype(np.float64) - p.max_int).reshape(-1, g, gs)  # (R, G, gs)
        m = np.empty((len(c), g, g))  # per row, m[i, j] = c_i^T H[group i, group j] c_j
        for j in range(g):
            hc = (c[:, j] @ hk[:, j].T).reshape(c.shape)  # (R, G, gs): H[:, group j] c_j
            m[:, :, j] = np.einsum("rga,rga->rg", c, hc)
        b = np.einsum("rga,rga->rg", c, (w[r0 : r0 + rows].astype(np.float64) @ h).reshape(c.shape))
        m[:, np.arange(g), np.arange(g)] += 1e-9 * np.abs(m).max()  # a group of all-zero codes
        out[r0 : r0 + rows] = np.linalg.solve(m, b[..., None])[..., 0].astype(p.scale_dtype)
    return out
