"""Weights from safetensors folders and GGUF files: same values as transformers, clear errors."""

from __future__ import annotations

import json
import re

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llm_deploy.models import (
    ConfigError,
    Tokenizer,
    Weights,
    WeightsError,
    checkpoint_names,
    load_model,
    load_weights,
    make_tiny_weights,
    param_shapes,
    save_hf_folder,
)

from .model_files import T, llama_cpp_permute, quantized_reference, write_gguf


def _hf_model(config, seed=0):
    """A transformers Llama of `config` with its own random init."""
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(HFConfig(**config.to_dict())).eval()


def _assert_same_as_state_dict(weights: Weights, state_dict) -> None:
    names = checkpoint_names(weights.config, "hf")
    assert set(weights) == set(names)
    for ours, hf in names.items():
        np.testing.assert_array_equal(weights[ours], state_dict[hf].float().numpy(), err_msg=ours)


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_folder_in_two_shards_loads_the_same_values(tmp_path, tiny_config, tied):
    import dataclasses

    config = dataclasses.replace(tiny_config, tie_word_embeddings=tied)
    model = _hf_model(config)
    total = sum(p.numel() * 4 for p in model.state_dict().values())
    model.save_pretrained(tmp_path, max_shard_size=int(total * 0.6))
    Tokenizer.byte_level(config).save(tmp_path)
    assert len(list(tmp_path.glob("model-*-of-00002.safetensors"))) == 2
    assert (tmp_path / "model.safetensors.index.json").is_file()

    loaded = load_model(tmp_path)
    assert loaded.config == config
    assert ("lm_head" in loaded.weights) == (not tied)
    _assert_same_as_state_dict(loaded.weights, model.state_dict())


def test_save_hf_folder_round_trips_and_transformers_reads_it(tmp_path, tiny_config, tiny_weights):
    from transformers import LlamaForCausalLM

    save_hf_folder(tmp_path, tiny_config, tiny_weights, shards=2, tokenizer=Tokenizer.byte_level(tiny_config))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    again = load_weights(tmp_path)
    for name in tiny_weights:
        np.testing.assert_array_equal(again[name], tiny_weights[name])
    _assert_same_as_state_dict(tiny_weights, LlamaForCausalLM.from_pretrained(tmp_path).state_dict())


def test_half_and_bfloat16_safetensors_read_as_float32(tmp_path, tiny_config, tiny_weights):
    import torch
    from safetensors.torch import save_file as save_torch

    save_hf_folder(tmp_path, tiny_config, tiny_weights)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in load_file(tmp_path / "model.safetensors").items()}
    dtypes = {k: (torch.bfloat16 if i % 2 else torch.float16) for i, k in enumerate(tensors)}
    save_torch({k: v.to(dtypes[k]) for k, v in tensors.items()}, tmp_path / "model.safetensors")
    w = load_weights(tmp_path)
    for ours, hf in checkpoint_names(tiny_config, "hf").items():
        np.testing.assert_array_equal(w[ours], tensors[hf].to(dtypes[hf]).float().numpy())
    assert {w.raw(n).ggml_type for n in w} == {T.F16, T.BF16}


def test_tiny_weights_are_seeded():
    from llm_deploy.models import MODELS

    config = MODELS["llama-tiny"].config
    a, b, c = make_tiny_weights(config, 0), make_tiny_weights(config, 0), make_tiny_weights(config, 1)
    assert set(a) == set(param_shapes(config))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["lm_head"], c["lm_head"])
    assert (
        load_model("llama-tiny").weights["layers.1.down_proj"].tobytes() == a["layers.1.down_proj"].tobytes()
    )


def test_tiny_greedy_decoding_has_clear_margins(tmp_path, tiny_config, tiny_weights):
    """The property cross-target greedy tests lean on, measured with transformers as the oracle."""
    import torch
    from transformers import LlamaForCausalLM

    save_hf_folder(tmp_path, tiny_config, tiny_weights)
    model = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    tok = Tokenizer.byte_level(tiny_config)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=16,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    margins = [float(v[0] - v[1]) for v in (torch.topk(step[0], 2).values for step in out.logits)]
    assert min(margins) > 0.1, margins
    assert np.median(margins) > 1.0, margins


# --- GGUF -----------------------------------------------------------------------------------------

TYPES = {
    "layers.0.q_proj": T.Q8_0,
    "layers.0.k_proj": T.Q4_1,
    "layers.1.k_proj": T.Q8_0,
    "embed_tokens": T.Q8_0,
}


def test_gguf_values_blocks_and_rotary_rows(tmp_path, tiny_config, tiny_weights):
    path = write_gguf(tmp_path / "tiny.gguf", tiny_config, tiny_weights, TYPES)
    w = load_weights(path)
    assert w.config == tiny_config
    for name in tiny_weights:
        kind = TYPES.get(name, T.F32)
        expected = quantized_reference(tiny_weights[name], kind)
        np.testing.assert_array_equal(w[name], expected, err_msg=name)
        raw = w.raw(name)
        assert raw.ggml_type == kind and raw.shape == tiny_weights[name].shape
        np.testing.assert_array_equal(raw.dequantize(), expected)
    # the raw blocks of q are the file's rows, un-permuted whole
    file_q = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.attn_q.weight")
    raw_q = w.raw("layers.0.q_proj").data
    assert raw_q.shape == (64, 64 // 32 * 34)
    np.testing.assert_array_equal(llama_cpp_permute(raw_q, tiny_config.num_attention_heads), file_q.data)


def test_gguf_reads_like_transformers(tmp_path, tiny_config, tiny_weights):
    """transformers' GGUF loader as the oracle of the q/k un-permutation, on a file in seconds."""
    from transformers import AutoModelForCausalLM

    path = write_gguf(tmp_path / "tiny.gguf", tiny_config, tiny_weights, TYPES)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name)
    _assert_same_as_state_dict(load_weights(path), model.state_dict())


# --- hand-broken files ------------------------------------------------------------------------------


@pytest.fixture
def hf_folder(tmp_path, tiny_config, tiny_weights):
    return save_hf_folder(tmp_path / "hf", tiny_config, tiny_weights, shards=2)


def _rewrite_shard(folder, change):
    shard = folder / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, shard)
    return shard


def test_missing_safetensors_tensor_is_named(hf_folder):
    shard = _rewrite_shard(hf_folder, lambda t: t.pop("model.norm.weight"))
    assert shard.exists()
    with pytest.raises(
        WeightsError,
        match=_re(f"{hf_folder}: missing tensor 'model.norm.weight' (parameter norm, expected shape (64,))"),
    ):
        load_weights(hf_folder)


def test_wrong_safetensors_shape_is_named(hf_folder):
    def change(t):
        t["model.norm.weight"] = np.zeros(65, np.float32)

    shard = _rewrite_shard(hf_folder, change)
    with pytest.raises(
        WeightsError,
        match=_re(
            f"tensor 'model.norm.weight' (parameter norm) in {shard} has shape (65,); expected (64,) from the config"
        ),
    ):
        load_weights(hf_folder)


def test_wrong_safetensors_dtype_is_named(hf_folder):
    def change(t):
        t["model.norm.weight"] = np.zeros(64, np.int32)

    shard = _rewrite_shard(hf_folder, change)
    with pytest.raises(
        WeightsError,
        match=_re(
            f"tensor 'model.norm.weight' in {shard} has dtype I32; expected one of ['BF16', 'F16', 'F32']"
        ),
    ):
        load_weights(hf_folder)


def test_unexpected_safetensors_tensor_is_named(hf_folder):
    def change(t):
        t["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)

    shard = _rewrite_shard(hf_folder, change)
    with pytest.raises(
        WeightsError, match=_re(f"unexpected tensor 'model.layers.0.self_attn.q_proj.bias' in {shard}")
    ):
        load_weights(hf_folder)


def test_missing_shard_and_truncated_file_are_named(hf_folder):
    shard = hf_folder / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(
        WeightsError, match=r"tensor '[\w.]+' in .*model-00002-of-00002.safetensors: data ends at byte"
    ):
        load_weights(hf_folder)
    shard.unlink()
    with pytest.raises(
        WeightsError, match=_re(f"lists shard {shard.name}, which is missing from {hf_folder}")
    ):
        load_weights(hf_folder)


def test_wrong_shape_in_gguf_is_named(tmp_path, tiny_config, tiny_weights):
    broken = dict(tiny_weights)
    broken["layers.1.up_proj"] = np.zeros((128, 64), np.float32)
    path = write_gguf(tmp_path / "b.gguf", tiny_config, broken)
    with pytest.raises(
        WeightsError,
        match=_re(
            f"tensor 'blk.1.ffn_up.weight' (parameter layers.1.up_proj) in {path} has shape (128, 64); expected (160, 64)"
        ),
    ):
        load_weights(path)


def test_missing_gguf_tensor_is_named(tmp_path, tiny_config, tiny_weights):
    path = write_gguf(tmp_path / "b.gguf", tiny_config, tiny_weights, skip=["layers.0.v_proj"])
    with pytest.raises(
        WeightsError,
        match=_re(
            f"{path}: missing tensor 'blk.0.attn_v.weight' (parameter layers.0.v_proj, expected shape (32, 64))"
        ),
    ):
        load_weights(path)


def test_unsupported_gguf_type_is_named(tmp_path, tiny_config, tiny_weights):
    ints = {"blk.0.attn_v.weight": np.zeros((32, 64), np.int32)}
    path = write_gguf(
        tmp_path / "b.gguf", tiny_config, tiny_weights, skip=["layers.0.v_proj"], extra_tensors=ints
    )
    with pytest.raises(
        WeightsError,
        match=_re(
            f"tensor 'blk.0.attn_v.weight' in {path} has GGUF type I32, which is not supported; expected one of"
        ),
    ):
        load_weights(path)


def test_unexpected_gguf_tensor_and_bad_files_are_named(tmp_path, tiny_config, tiny_weights):
    extra = {"blk.0.attn_q.bias": np.zeros(64, np.float32)}
    path = write_gguf(tmp_path / "b.gguf", tiny_config, tiny_weights, extra_tensors=extra)
    with pytest.raises(WeightsError, match=_re(f"unexpected tensor 'blk.0.attn_q.bias' in {path}")):
        load_weights(path)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ConfigError, match=_re(f"{garbage}: not a readable GGUF file")):
        load_weights(garbage)
    with pytest.raises(FileNotFoundError, match="no model at"):
        load_weights(tmp_path / "nothing-here")


def test_truncated_gguf_is_named(tmp_path, tiny_config, tiny_weights):
    path = write_gguf(tmp_path / "t.gguf", tiny_config, tiny_weights)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ConfigError, match=_re(f"{path}: not a readable GGUF file")):
        load_weights(path)


def test_load_model_by_preset_name(tiny_config):
    tiny = load_model("llama-tiny")
    assert tiny.config == tiny_config and "lm_head" in tiny.weights
    assert tiny.tokenizer.vocab_size == tiny_config.vocab_size
    with pytest.raises(ConfigError, match="preset 'llama-2-7b' describes shapes only"):
        load_model("llama-2-7b")
    with pytest.raises(FileNotFoundError, match="is neither a model preset"):
        load_model("no-such-model")


def test_lm_head_of_tied_weights_says_why(tiny_weights, smollm2):
    with pytest.raises(KeyError, match="embeddings are tied: use embed_tokens"):
        smollm2.weights.raw("lm_head")
    assert "lm_head" in tiny_weights


def _re(text: str) -> str:
    return re.escape(text)
