"""Calibration: a numpy Llama forward (float32) that shows each linear layer the activations it
will see, so a quantizer can minimise the error of its outputs instead of its weights.

The forward runs block by block over a fixed English text shipped beside this file
(calibration.txt; never the perplexity test text, which stays held out). Each block is given the
hidden states the *already quantized* blocks before it produce, and for every group of linears
that share an input (q/k/v, o, gate/up, down, and the tied LM head) it hands the quantizer
H = X^T X, X: (tokens, in), the statistic GPTQ needs. The quantizer's weights then replace the
float ones before the block's outputs are computed, so errors are compensated downstream
("sequential" GPTQ, as in Frantar et al. 2022).

No torch: build time must not need it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

CALIBRATION_TEXT = Path(__file__).with_name("calibration.txt")

# (names sharing one input, the group's role) per block, in the order the forward reaches them
LINEAR_GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))

# hook(names, w: (sum of outs, in), x: (tokens, in)) -> the weights the forward uses for the group
LinearHook = Callable[[tuple[str, ...], np.ndarray, np.ndarray], np.ndarray]
# quantize(names, w: (sum of outs, in), h: X^T X (in, in) float64) -> the weights to use from now
# on, or None to leave the group's own
Quantizer = Callable[[tuple[str, ...], np.ndarray, np.ndarray], np.ndarray | None]


def head_name(config) -> str:
    """The LM head's weight: the embedding table when the two are tied."""
    return "embed_tokens" if config.tie_word_embeddings else "lm_head"


def calibration_ids(tokenizer, max_tokens: int = 8192) -> list[int]:
    """The calibration text's token ids (BOS first when the tokenizer adds one)."""
    return tokenizer.encode(CALIBRATION_TEXT.read_text())[:max_tokens]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * w


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (d, d + head_dim/2), as transformers does. x: (T, heads, hd); cos/sin: (T, 1, hd/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """q: (T, H, hd), k/v: (T, KV, hd) -> (T, H * hd); each token sees itself and those before."""
    t, heads, hd = q.shape
    group = heads // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (T, H, hd)
    q, k, v = (a.transpose(1, 0, 2) for a in (q, k, v))  # (H, T, hd)
    s = (q @ k.transpose(0, 2, 1)) / np.float32(np.sqrt(hd))  # (H, T, T)
    s += np.triu(np.full((t, t), -np.inf, np.float32), 1)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    return (s @ v).transpose(1, 0, 2).reshape(t, heads * hd)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class Forward:
    """The decoder over sequences of equal length, one block at a time. x: (S, T, hidden)."""

    def __init__(self, config, weights: Mapping[str, np.ndarray], seq_len: int) -> None:
        from llm_deploy.compiler.ops.attention import rope_inv_freq

        self.config, self.weights = config, weights
        scaling = None if config.rope_scaling is None else config.rope_scaling.to_dict()
        inv = rope_inv_freq(config.head_dim, config.rope_theta, scaling)  # (hd/2,) float64
        ang = np.arange(seq_len, dtype=np.float64)[:, None] * inv[None]  # (T, hd/2)
        self.cos = np.cos(ang).astype(np.float32)[:, None]  # (T, 1, hd/2)
        self.sin = np.sin(ang).astype(np.float32)[:, None]

    def embed(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.weights["embed_tokens"], np.float32)[ids]  # (S, T, hidden)

    def block(self, i: int, x: np.ndarray, hook: LinearHook | None = None) -> np.ndarray:
        """Block i on x; with `hook`, each linear group is replaced by what it returns first."""
        c, p = self.config, f"layers.{i}."
        s, t, _ = x.shape
        w = {
            name: np.asarray(self.weights[p + name], np.float32) for group in LINEAR_GROUPS for name in group
        }

        def linear(group: tuple[str, ...], inp: np.ndarray) -> list[np.ndarray]:
            mats = [w[name] for name in group]
            stacked = np.concatenate(mats, axis=0) if len(mats) > 1 else mats[0]  # (sum outs, in)
            if hook is not None:
                stacked = hook(tuple(p + n for n in group), stacked, inp.reshape(-1, inp.shape[-1]))
            out = inp @ stacked.T  # (S, T, sum outs)
            return np.split(out, np.cumsum([m.shape[0] for m in mats])[:-1], axis=-1)

        eps = c.rms_norm_eps
        h = rms_norm(x, self.weights[p + "input_norm"], eps)  # (S, T, hidden)
        q, k, v = linear(LINEAR_GROUPS[0], h)
        a = np.stack(
            [
                causal_attention(
                    rope(q[j].reshape(t, c.num_attention_heads, c.head_dim), self.cos[:t], self.sin[:t]),
                    rope(k[j].reshape(t, c.num_key_value_heads, c.head_dim), self.cos[:t], self.sin[:t]),
                    v[j].reshape(t, c.num_key_value_heads, c.head_dim),
                )
                for j in range(s)
            ]
        )  # (S, T, H * hd)
        (o,) = linear(LINEAR_GROUPS[1], a)
        x = x + o
        h = rms_norm(x, self.weights[p + "post_attention_norm"], eps)
        gate, up = linear(LINEAR_GROUPS[2], h)
        (down,) = linear(LINEAR_GROUPS[3], silu(gate) * up)
        return x + down

    def final_norm(self, x: np.ndarray) -> np.ndarray:
        return rms_norm(x, self.weights["norm"], self.config.rms_norm_eps)

    def logits(self, ids) -> np.ndarray:
        """(T, vocab) logits of one sequence of T <= seq_len tokens, through every block."""
        x = self.embed(np.asarray(ids)[None])
        for i in range(self.config.num_hidden_layers):
            x = self.block(i, x)
        return self.final_norm(x)[0] @ np.asarray(self.weights[head_name(self.config)], np.float32).T


def calibrate(
    config,
    weights: dict[str, np.ndarray],
    ids: list[int],
    quantize: Quantizer,
    seq_len: int = 512,
    head: bool = True,
    balance: Callable[[int, dict[tuple[str, ...], np.ndarray]], None] | None = None,
    target_damp: float | None = None,
) -> None:
    """Run the calibration forward over `ids` (cut into sequences of `seq_len`), calling
    `quantize(names, w, h)` on every linear group of every block in order, and on the LM head
    (`lm_head`, or `embed_tokens` when tied) when `head`; what it returns (unless None) replaces
    the group's weights in `weights` and in the forward from then on.

    `balance(i, inputs)`, when given, first sees block i's float inputs of each group (by names)
    and may rewrite `weights` in ways that keep the block's function (AWQ: `awq_balance`).

    With `target_damp`, the float model runs beside the quantized one, and each group is handed
    `retarget`'s weights instead of its own: those that on the quantized model's inputs best give
    the float model's outputs.
    """
    s = len(ids) // seq_len
    if s == 0:
        raise ValueError(f"calibration needs at least {seq_len} tokens, got {len(ids)}")
    fwd = Forward(config, weights, seq_len)

    def keep(
        names: tuple[str, ...], w: np.ndarray, x: np.ndarray, x_float: np.ndarray | None = None
    ) -> np.ndarray:
        h = (x.T @ x).astype(np.float64)
        target = w if x_float is None else retarget(w, x, x_float, target_damp, h)
        wq = quantize(names, target, h)
        if wq is None:
            return w
        rows = [weights[n].shape[0] for n in names]
        for n, part in zip(names, np.split(wq, np.cumsum(rows)[:-1], axis=0)):
            weights[n] = part
        return wq

    def toward(float_inputs: dict[tuple[str, ...], np.ndarray]) -> LinearHook:
        def keep_retargeted(names: tuple[str, ...], w: np.ndarray, x: np.ndarray) -> np.ndarray:
            return keep(names, w, x, float_inputs[names])

        return keep_retargeted

    x = fwd.embed(np.asarray(ids[: s * seq_len]).reshape(s, seq_len))  # (S, T, hidden)
    x_float = x  # the float model's hidden states, when retargeting
    for i in range(config.num_hidden_layers):
        if balance is not None:
            fwd.block(i, x, recorder(seen := {}))
            balance(i, seen)
        if target_damp is None:
            x = fwd.block(i, x, keep)
        else:  # block i is still float here: its run on x_float is the float model's
            x_float = fwd.block(i, x_float, recorder(float_inputs := {}))
            x = fwd.block(i, x, toward(float_inputs))
    if head:
        name = head_name(config)
        w, xh = np.asarray(weights[name], np.float32), fwd.final_norm(x).reshape(-1, config.hidden_size)
        if target_damp is None:
            keep((name,), w, xh)
        else:
            toward({(name,): fwd.final_norm(x_float).reshape(-1, config.hidden_size)})((name,), w, xh)


def recorder(seen: dict[tuple[str, ...], np.ndarray]) -> LinearHook:
    """A hook that changes nothing and records each group's inputs in `seen`."""

    def record(names: tuple[str, ...], w: np.ndarray, x: np.ndarray) -> np.ndarray:
        seen[names] = x
        return w

    return record


def retarget(
    w: np.ndarray, x: np.ndarray, x_float: np.ndarray, damp: float, h: np.ndarray | None = None
) -> np.ndarray:
    """The float weights V (out, in) to quantize in place of `w` when the layer's inputs are x
    (tokens, in), from the blocks already quantized, where the float model's were x_float: V
    gives, on x, the float model's outputs x_float W^T as nearly as it can while staying near W,

        V = argmin ||x V^T - x_float W^T||^2 + lam ||V - W||^2 = W + W (x_float - x)^T x (H + lam I)^-1

    with H = x^T x (`h`, when the caller has it) and lam = damp * mean(diag(H)). Quantizing V by its output error on x (GPTQ's
    objective) then also undoes the drift earlier layers left in x (GPTAQ's "asymmetric
    calibration", arXiv 2504.02692). The pull towards W is strong (calibrated.TARGET_DAMP, 3,
    against GPTQ's 0.3): a few thousand tokens fit the correction only roughly, and the later
    layers go on correcting what is left (GPTAQ's reference code likewise scales it by 0.25)."""
    if h is None:
        h = (x.T @ x).astype(np.float64)
    lam = damp * np.mean(np.diag(h))
    cross = ((x_float - x).T @ x).astype(np.float64)  # (in, in)
    correction = np.linalg.solve(h + lam * np.eye(len(h)), (w.astype(np.float64) @ cross).T).T  # H symmetric
    return (w + correction).astype(np.float32)


# (a linear group, the op whose output is its input): RMSNorm weights, or the rows of the linear
# before (attention and silu(gate) * up are linear in v's and up's rows). A fold into a linear
# comes before that linear's own group is scaled: o before q/k/v, down before gate/up.
FOLDS = (
    (("o_proj",), "v_proj"),
    (("q_proj", "k_proj", "v_proj"), "input_norm"),
    (("down_proj",), "up_proj"),
    (("gate_proj", "up_proj"), "post_attention_norm"),
)


def awq_balance(
    config, weights: dict[str, np.ndarray], packing, quantized: set[str] | None = None
) -> Callable[[int, dict], None]:
    """A `balance` for `calibrate`: AWQ factors for each group of block i, folded into `weights`
    (groups with a weight outside `quantized`, when given, are left as they are)."""
    from llm_deploy.quantization.awq import awq_scales

    kv, hd = config.num_key_value_heads, config.head_dim
    rep = config.num_attention_heads // kv

    def balance(i: int, inputs: dict[tuple[str, ...], np.ndarray]) -> None:
        p = f"layers.{i}."
        for group, prev in FOLDS:
            names = tuple(p + n for n in group)
            if quantized is not None and not set(names) <= quantized:
                continue
            x = inputs[names]  # (tokens, in)
            x_abs = np.abs(x).mean(axis=0)  # (in,)
            if prev == "v_proj":  # o's inputs: query heads (kv, rep, hd) share their kv head's v rows
                x_abs = np.repeat(x_abs.reshape(kv, rep, hd).mean(axis=1, keepdims=True), rep, axis=1).ravel()
            w = np.concatenate([weights[n] for n in names], axis=0)
            s = awq_scales(w, (x.T @ x).astype(np.float64), x_abs, packing).astype(np.float32)
            for n in names:
                weights[n] = weights[n] * s
            before = weights[p + prev]
            if prev == "v_proj":
                s = s.reshape(kv, rep, hd)[:, 0].ravel()  # (kv * hd,)
            weights[p + prev] = before / (s if before.ndim == 1 else s[:, None])

    return balance
