"""Writers of small model files for tests: GGUF files laid out as llama.cpp's converter lays them out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import gguf
import numpy as np

from llm_deploy.models import LlamaConfig, checkpoint_names
from llm_deploy.models.tokenizer import TINY_SPECIAL_TOKENS, _bytes_to_unicode

T = gguf.GGMLQuantizationType


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute`: HF's half-split rotary rows to interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(
    path: Path,
    config: LlamaConfig,
    weights: Mapping[str, np.ndarray],
    types: Mapping[str, T] | None = None,
    *,
    tokens: Sequence[str] | None = None,
    token_types: Sequence[int] | None = None,
    tokenizer_model: str = "gpt2",
    pre: str = "default",
    merges: Sequence[str] = (),
    scores: Sequence[float] | None = None,
    chat_template: str | None = None,
    add_bos: bool = False,
    extra_kv: Mapping[str, str | float] | None = None,
    skip: Sequence[str] = (),
    extra_tensors: Mapping[str, np.ndarray] | None = None,
    rename: Mapping[str, str] | None = None,
) -> Path:
    """A GGUF of `weights` (our names, HF layout) the way llama.cpp writes one: q/k rows permuted,
    shapes reversed, each tensor in `types[name]` (default F32). The tokenizer defaults to the
    byte-level `llama-tiny` vocabulary spelled as a GPT-2 BPE. `skip`, `rename`, `extra_kv`
    and `extra_tensors` change or break the file on purpose."""
    types = types or {}
    names = checkpoint_names(config, "gguf") | dict(rename or {})
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    if tokens is None:
        spelling = _bytes_to_unicode()
        tokens = [*TINY_SPECIAL_TOKENS, *(spelling[b] for b in range(256))]
        token_types = [3] * len(TINY_SPECIAL_TOKENS) + [1] * 256
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(list(tokens))
    w.add_token_types(list(token_types or [1] * len(tokens)))
    if merges or tokenizer_model == "gpt2":
        w.add_token_merges(list(merges))
    if scores is not None:
        w.add_token_scores(list(scores))
    w.add_bos_token_id(config.bos_token_id if config.bos_token_id is not None else 1)
    w.add_eos_token_id(config.eos_token_ids[0] if config.eos_token_ids else 2)
    w.add_add_bos_token(add_bos)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for key, value in (extra_kv or {}).items():
        (w.add_string if isinstance(value, str) else w.add_float32)(key, value)
    for ours, a in weights.items():
        if ours in skip:
            continue
        if ours.endswith(("q_proj", "k_proj")):
            heads = config.num_attention_heads if ours.endswith("q_proj") else config.num_key_value_heads
            a = llama_cpp_permute(a, heads)
        kind = types.get(ours, T.F32)
        if kind == T.F32:
            w.add_tensor(names[ours], np.ascontiguousarray(a, dtype=np.float32))
        else:
            w.add_tensor(
                names[ours], gguf.quants.quantize(np.ascontiguousarray(a, np.float32), kind), raw_dtype=kind
            )
    for name, a in (extra_tensors or {}).items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantized_reference(a: np.ndarray, kind: T) -> np.ndarray:
    """What a tensor reads back as after a round trip through `kind`."""
    if kind == T.F32:
        return a
    return gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(a, np.float32), kind), kind)
