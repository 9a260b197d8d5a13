"""LlamaConfig from Hugging Face dicts and GGUF metadata, build options, and the preset registry."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from llm_deploy.models import MODELS, BuildOptions, ConfigError, LlamaConfig, RopeScaling, load_config
from llm_deploy.models.config import QUANTIZATION_NAMES

# Meta-Llama-3.1-8B's config.json, trimmed to what matters here, plus a key we do not know.
LLAMA31 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16",
    "some_future_key": {"nested": [1, 2]},
}


def test_hf_dict_reads_every_field_and_keeps_unknown_keys():
    c = LlamaConfig.from_hf_dict(LLAMA31)
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4096, 32, 8, 128)
    assert c.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert c.eos_token_ids == (128001, 128008, 128009)
    assert c.extra["some_future_key"] == {"nested": [1, 2]}
    assert c.extra["torch_dtype"] == "bfloat16"
    assert LlamaConfig.from_hf_dict(c.to_dict()) == c
    assert LlamaConfig.from_hf_dict(c.to_dict()).extra == c.extra


def test_to_dict_is_a_config_transformers_reads():
    from transformers import LlamaConfig as HFConfig

    c = LlamaConfig.from_hf_dict(LLAMA31)
    hf = HFConfig(**c.to_dict())
    assert (hf.hidden_size, hf.num_key_value_heads, hf.head_dim) == (4096, 8, 128)
    assert hf.rope_parameters["rope_type"] == "llama3"
    assert hf.rope_parameters["rope_theta"] == 500000.0
    # and the other way: transformers 5 writes `rope_parameters`, which we read back
    assert LlamaConfig.from_hf_dict(hf.to_dict()) == c


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0}, LLAMA31["rope_scaling"]])
def test_rope_inv_freq_matches_transformers(scaling):
    from transformers import LlamaConfig as HFConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    c = LlamaConfig.from_hf_dict({**LLAMA31, "rope_scaling": scaling})
    hf = LlamaRotaryEmbedding(HFConfig(**c.to_dict()))
    np.testing.assert_allclose(c.rope_inv_freq(), hf.inv_freq.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": 4100}, "num_attention_heads (32) does not divide hidden_size (4100)"),
        ({"num_key_value_heads": 5}, "must be a multiple of num_key_value_heads (5)"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"vocab_size": 12.5}, "vocab_size must be int"),
        ({"rms_norm_eps": -1}, "rms_norm_eps must be > 0"),
        ({"eos_token_id": 200000}, "eos_token_id 200000 is outside the vocabulary"),
        ({"head_dim": 33}, "head_dim must be even"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"attention_bias": True}, "attention_bias=True is not supported"),
        ({"model_type": "mistral"}, "only 'llama' models are supported"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn' is not supported"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "llama3 rope_scaling needs low_freq_factor",
        ),
        ({"intermediate_size": None}, "missing required key 'intermediate_size'"),
    ],
)
def test_impossible_configs_are_clear_errors(change, message):
    with pytest.raises(ConfigError, match="^my/config.json: .*" + _re(message)):
        LlamaConfig.from_hf_dict({**LLAMA31, **change}, where="my/config.json")


def test_explicit_head_dim_may_differ_from_hidden_over_heads():
    c = LlamaConfig.from_hf_dict({**LLAMA31, "hidden_size": 4000, "head_dim": 128})
    assert c.q_size == 4096 and c.hidden_size == 4000


def test_hf_folder_joins_stop_tokens_of_generation_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA31, "eos_token_id": 128001}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    assert load_config(tmp_path).eos_token_ids == (128001, 128009)


@pytest.mark.slow
def test_gguf_config_equals_the_preset_and_transformers(smollm2, hf_smollm2_model):
    ours = smollm2.config
    assert ours == MODELS["llama"].config
    hf_dict = {k: v for k, v in hf_smollm2_model.config.to_dict().items() if k != "quantization_config"}
    # transformers keeps GGUF's float32 eps as a float64 (9.999999747378752e-06); we keep 1e-05.
    assert hf_dict["rms_norm_eps"] == np.float32(ours.rms_norm_eps)
    assert LlamaConfig.from_hf_dict(hf_dict) == dataclasses.replace(
        ours, rms_norm_eps=hf_dict["rms_norm_eps"]
    )
    assert ours.extra["general.name"] == "Smollm2 135M 8k Lc100K Mix1 Ep2"


def test_gguf_rope_scaling(tmp_path, tiny_config, tiny_weights):
    from .model_files import write_gguf

    linear = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    path = write_gguf(tmp_path / "a.gguf", tiny_config, tiny_weights, extra_kv=linear)
    assert load_config(path).rope_scaling == RopeScaling("linear", 4.0)
    yarn = {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0}
    path = write_gguf(tmp_path / "b.gguf", tiny_config, tiny_weights, extra_kv=yarn)
    with pytest.raises(ConfigError, match=_re(f"{path}: rope_scaling type 'yarn' is not supported")):
        load_config(path)


def test_presets_are_registered_and_valid():
    assert {"llama", "llama-tiny", "tinyllama-1.1b", "llama-2-7b", "llama-3-8b"} <= set(MODELS)
    assert MODELS["llama-tiny"].weights == {"random_seed": 0}
    assert MODELS["llama-3-8b"].config.num_key_value_heads == 8
    assert MODELS["llama-2-7b"].config.head_dim == 128
    for name, preset in MODELS.items():
        assert preset.name == name
        assert preset.build.quantization in QUANTIZATION_NAMES
        assert preset.build.context_window <= preset.config.max_position_embeddings
    with pytest.raises(KeyError, match="no model preset 'nope'; known presets: .*llama-tiny"):
        MODELS["nope"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"prefill_chunk": 4096}, "prefill_chunk (4096) cannot exceed context_window (2048)"),
        ({"kv_page_size": 24}, "must be a multiple of kv_page_size (24)"),
        ({"kv_dtype": "int8"}, "kv_dtype 'int8' is not one of"),
        ({"quantization": "q3"}, "quantization 'q3' is not one of"),
        ({"context_window": 0}, "context_window must be a positive integer"),
        ({"prefil_chunk": 64}, "unknown build option(s) ['prefil_chunk']"),
    ],
)
def test_bad_build_options_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=_re(message)):
        BuildOptions.from_dict(options)


def test_a_broken_preset_file_names_itself(tmp_path, monkeypatch):
    from llm_deploy.models.config import _Presets

    good = json.loads(json.dumps(_preset_dict("llama-tiny")))
    (tmp_path / "ok.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps({**good, "name": "bad", "build": {"context_window": 4096}}))
    monkeypatch.setenv("LLM_DEPLOY_CONFIGS", str(tmp_path))
    with pytest.raises(
        ConfigError, match=_re(f"{tmp_path / 'bad.json'}: build: context_window 4096 exceeds")
    ):
        dict(_Presets())


def _preset_dict(name: str) -> dict:
    p = MODELS[name]
    return {"name": p.name, "config": p.config.to_dict(), "build": p.build.to_dict(), "weights": p.weights}


def _re(text: str) -> str:
    import re

    return re.escape(text)
