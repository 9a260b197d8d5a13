"""The Llama decoder written in our IR, over a flat batch of tokens with a symbolic length.

Every function takes the tokens of several sequences back to back (`ids: (n,)`), the KV cache
as an opaque object, and the weights as parameters (named as in `weights.param_shapes`, with
dots turned into underscores). The cache tells each token's position and does the attention
over each sequence's history, so the paged cache can replace the reference one by a pass.

    prefill(ids (n,), logit_positions (b,), cache, *weights) -> logits (b, vocab)
    decode(ids (b,), cache, *weights)                       -> logits (b, vocab)
    score(ids (n,), cache, *weights)                        -> logits (n, vocab)
"""

from __future__ import annotations

import numpy as np

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Var
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops import kv_cache as kv
from llm_deploy.compiler.struct_info import ObjectInfo, tensor
from llm_deploy.models.config import LlamaConfig
from llm_deploy.models.weights import param_shapes

FUNCTIONS = ("prefill", "decode", "score")


def param_var_name(name: str) -> str:
    """`layers.3.q_proj` -> `layers_3_q_proj`: IR names are identifiers."""
    return name.replace(".", "_")


def weight_params(config: LlamaConfig, dtype: str = "float32") -> dict[str, Var]:
    """The weight parameters of every function, in model order, keyed by weight name."""
    return {name: Var(param_var_name(name), tensor(s, dtype)) for name, s in param_shapes(config).items()}


def _rope_scaling(config: LlamaConfig) -> dict | None:
    return None if config.rope_scaling is None else config.rope_scaling.to_dict()


def _layer(bb: BlockBuilder, config: LlamaConfig, i: int, x, pos, cache, w: dict[str, Var], n):
    """One pre-norm block: x + attn(norm(x)), then + mlp(norm(.)). x: (n, hidden)."""
    H, KV, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    p = f"layers.{i}."
    rope = {"theta": config.rope_theta, "scaling": _rope_scaling(config), "positions": pos}
    h = bb.emit(ops.rms_norm(x, w[p + "input_norm"], config.rms_norm_eps), f"l{i}_h")
    q = bb.emit(ops.reshape(ops.linear(h, w[p + "q_proj"]), (n, H, hd)), f"l{i}_q")  # (n, H, hd)
    k = bb.emit(ops.reshape(ops.linear(h, w[p + "k_proj"]), (n, KV, hd)), f"l{i}_k")  # (n, KV, hd)
    v = bb.emit(ops.reshape(ops.linear(h, w[p + "v_proj"]), (n, KV, hd)), f"l{i}_v")  # (n, KV, hd)
    q = bb.emit(ops.rope(q, **rope), f"l{i}_q_rot")
    k = bb.emit(ops.rope(k, **rope), f"l{i}_k_rot")
    a = bb.emit(kv.kv_cache_attention(cache, q, k, v, layer=i), f"l{i}_attn")  # (n, H, hd)
    a = bb.emit(ops.reshape(a, (n, H * hd)), f"l{i}_attn_flat")  # (n, H * hd)
    x = bb.emit(ops.add(x, ops.linear(a, w[p + "o_proj"])), f"l{i}_x_attn")
    h = bb.emit(ops.rms_norm(x, w[p + "post_attention_norm"], config.rms_norm_eps), f"l{i}_h2")
    gate = bb.emit(ops.silu(ops.linear(h, w[p + "gate_proj"])), f"l{i}_gate")  # (n, inter)
    up = bb.emit(ops.linear(h, w[p + "up_proj"]), f"l{i}_up")  # (n, inter)
    mlp = bb.emit(ops.linear(ops.multiply(gate, up), w[p + "down_proj"]), f"l{i}_mlp")  # (n, hidden)
    return bb.emit(ops.add(x, mlp), f"l{i}_out")


def _hidden(bb: BlockBuilder, config: LlamaConfig, ids, cache, w: dict[str, Var], n):
    """The final-normed hidden states of every token: (n, hidden)."""
    x = bb.emit(ops.take(w["embed_tokens"], ids, axis=0), "embed")  # (n, hidden)
    pos = bb.emit(kv.kv_cache_positions(cache, ids), "positions")  # (n,)
    for i in range(config.num_hidden_layers):
        x = _layer(bb, config, i, x, pos, cache, w, n)
    return bb.emit(ops.rms_norm(x, w["norm"], config.rms_norm_eps), "final_norm")


def _logits(bb: BlockBuilder, config: LlamaConfig, h, w: dict[str, Var]):
    head = w["embed_tokens"] if config.tie_word_embeddings else w["lm_head"]
    return bb.emit_output(ops.linear(h, head), "logits")


def build_llama(config: LlamaConfig, dtype: str = "float32", context_window: int | None = None) -> IRModule:
    """The IRModule of prefill, decode and score for `config`, weights in `dtype`."""
    ctx = context_window or config.max_position_embeddings
    bounds = {"n": (1, ctx), "b": (1, ctx)}
    attrs = {"bounds": bounds, "params": list(param_shapes(config))}
    w = weight_params(config, dtype)
    n, b = S.var("n"), S.var("b")
    cache = Var("cache", ObjectInfo())
    bb = BlockBuilder()

    ids = Var("ids", tensor((n,), "int32"))
    logit_positions = Var("logit_positions", tensor((b,), "int32"))
    with bb.function("prefill", [ids, logit_positions, cache, *w.values()], attrs=attrs):
        with bb.dataflow():
            h = _hidden(bb, config, ids, cache, w, n)
            last = bb.emit(ops.take(h, logit_positions, axis=0), "last_hidden")  # (b, hidden)
            logits = _logits(bb, config, last, w)
        bb.emit_func_output(logits)

    ids_b = Var("ids", tensor((b,), "int32"))
    with bb.function("decode", [ids_b, cache, *w.values()], attrs=attrs):
        with bb.dataflow():
            logits = _logits(bb, config, _hidden(bb, config, ids_b, cache, w, b), w)
        bb.emit_func_output(logits)

    with bb.function("score", [ids, cache, *w.values()], attrs=attrs):
        with bb.dataflow():
            logits = _logits(bb, config, _hidden(bb, config, ids, cache, w, n), w)
        bb.emit_func_output(logits)
    return bb.get().with_attrs(model="llama")


def weight_arrays(config: LlamaConfig, weights, dtype: str = "float32") -> list[np.ndarray]:
    """The weights in parameter order, as `dtype` arrays (float32 dequantized from GGUF blocks)."""
    return [np.ascontiguousarray(weights[name], dtype=dtype) for name in param_shapes(config)]
