"""A Llama decoder layer written with the BlockBuilder, and its transformers twin, for tests.

Shared by the interpreter's golden test and by the tests of the printer, the checker,
legalization and the targets:

    cfg = LayerConfig()                                   # hidden 64, 4 heads, 2 kv heads
    mod = build_decoder_layer(cfg)                        # main(x (n, 64), *weights) -> (n, 64)
    weights = random_weights(cfg, seed=0)                 # {param name: array}, in param order
    out = run(mod, "decoder_layer", x, *weights.values())
    ref = hf_decoder_layer_forward(cfg, weights, x)       # transformers' LlamaDecoderLayer

Weights are function parameters (not constants), stored [out, in] like Hugging Face, and used
through `linear(x, W)` (x @ W^T).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Var
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.struct_info import tensor


@dataclass(frozen=True)
class LayerConfig:
    hidden_size: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, or transformers' rope_parameters for a scaled rope, e.g. {"rope_type": "llama3", ...}
    rope_scaling: Mapping[str, Any] | None = field(default=None, hash=False)
    head_dim: int | None = None
    dtype: str = "float32"

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


# Parameter name -> transformers' state-dict name, in the order of the function's parameters.
HF_NAMES = {
    "input_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "post_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}


def weight_shapes(cfg: LayerConfig) -> dict[str, tuple[int, ...]]:
    h, hd, i = cfg.hidden_size, cfg.hd, cfg.intermediate_size
    return {
        "input_norm": (h,),
        "wq": (cfg.num_heads * hd, h),
        "wk": (cfg.num_kv_heads * hd, h),
        "wv": (cfg.num_kv_heads * hd, h),
        "wo": (h, cfg.num_heads * hd),
        "post_norm": (h,),
        "w_gate": (i, h),
        "w_up": (i, h),
        "w_down": (h, i),
    }


def build_decoder_layer(
    cfg: LayerConfig = LayerConfig(), n: S.SymVar | None = None, name: str = "decoder_layer"
) -> IRModule:
    """`name(x (n, hidden), *weights) -> (n, hidden)`: one pre-norm Llama block over n tokens at
    positions 0..n-1 (no KV cache), causal attention with grouped-query heads."""
    n = n if n is not None else S.var("n")
    H, KV, hd, eps = cfg.num_heads, cfg.num_kv_heads, cfg.hd, cfg.rms_norm_eps
    x = Var("x", tensor((n, cfg.hidden_size), cfg.dtype))
    w = {k: Var(k, tensor(s, cfg.dtype)) for k, s in weight_shapes(cfg).items()}
    rope = {"theta": cfg.rope_theta, "offset": 0, "scaling": cfg.rope_scaling}
    bb = BlockBuilder()
    with bb.function(name, [x, *w.values()]):
        with bb.dataflow():
            h = bb.emit(ops.rms_norm(x, w["input_norm"], eps), "h")  # (n, hidden)
            q = bb.emit(ops.reshape(ops.linear(h, w["wq"]), (n, H, hd)), "q")  # (n, H, hd)
            k = bb.emit(ops.reshape(ops.linear(h, w["wk"]), (n, KV, hd)), "k")  # (n, KV, hd)
            v = bb.emit(ops.reshape(ops.linear(h, w["wv"]), (n, KV, hd)), "v")  # (n, KV, hd)
            q = bb.emit(ops.rope(q, **rope), "q_rot")
            k = bb.emit(ops.rope(k, **rope), "k_rot")
            a = bb.emit(ops.attention(q, k, v, causal=True), "attn")  # (n, H, hd)
            a = bb.emit(ops.reshape(a, (n, H * hd)), "attn_flat")  # (n, H * hd)
            x1 = bb.emit(ops.add(x, ops.linear(a, w["wo"])), "x1")  # (n, hidden)
            h2 = bb.emit(ops.rms_norm(x1, w["post_norm"], eps), "h2")
            gate = bb.emit(ops.silu(ops.linear(h2, w["w_gate"])), "gate")  # (n, inter)
            up = bb.emit(ops.linear(h2, w["w_up"]), "up")  # (n, inter)
            mlp = bb.emit(ops.linear(ops.multiply(gate, up), w["w_down"]), "mlp")  # (n, hidden)
            out = bb.emit_output(ops.add(x1, mlp), "out")
        bb.emit_func_output(out)
    return bb.get()


def random_weights(cfg: LayerConfig = LayerConfig(), seed: int = 0) -> dict[str, np.ndarray]:
    """Weights in parameter order: norms near 1, projections scaled like a trained model's."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in weight_shapes(cfg).items():
        if len(s) == 1:
            out[k] = 1.0 + 0.1 * rng.standard_normal(s)
        else:
            out[k] = rng.standard_normal(s) / np.sqrt(s[1])
    return {k: v.astype(cfg.dtype) for k, v in out.items()}


def hf_config(cfg: LayerConfig):
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rope = {**dict(cfg.rope_scaling), "rope_theta": cfg.rope_theta}
    return LlamaConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hd,
        num_hidden_layers=1,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=rope,
        max_position_embeddings=4096,
        attn_implementation="eager",
    )


def hf_decoder_layer(cfg: LayerConfig, weights: Mapping[str, np.ndarray]):
    """(transformers' LlamaDecoderLayer holding `weights`, its LlamaRotaryEmbedding), on the CPU."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = hf_config(cfg)
    layer = LlamaDecoderLayer(config, layer_idx=0).eval()
    state = {HF_NAMES[k]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    layer.load_state_dict(state, strict=True)
    return layer, LlamaRotaryEmbedding(config)


def hf_decoder_layer_forward(
    cfg: LayerConfig, weights: Mapping[str, np.ndarray], x: np.ndarray
) -> np.ndarray:
    """transformers' output for tokens x (n, hidden) at positions 0..n-1, causal, no cache."""
    import torch

    layer, rotary = hf_decoder_layer(cfg, weights)
    n = x.shape[0]
    hidden = torch.from_numpy(x)[None]  # (1, n, hidden)
    positions = torch.arange(n)[None]  # (1, n)
    cos, sin = rotary(hidden, positions)
    # The additive mask the eager attention adds to its scores: (1, 1, n, n), 0 on and below the
    # diagonal, the most negative float above it.
    mask = torch.full((n, n), torch.finfo(hidden.dtype).min, dtype=hidden.dtype).triu(1)[None, None]
    with torch.no_grad():
        out = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=(cos, sin))
    out = out[0] if isinstance(out, tuple) else out
    return out[0].numpy()
