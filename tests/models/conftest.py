"""Shared fixtures: the tiny preset, and the default model as we read it and as transformers does."""

from __future__ import annotations

import pytest

from llm_deploy.models import MODELS, LlamaConfig, Weights, make_tiny_weights


@pytest.fixture(scope="session")
def tiny_config() -> LlamaConfig:
    return MODELS["llama-tiny"].config


@pytest.fixture(scope="session")
def tiny_weights(tiny_config) -> Weights:
    return make_tiny_weights(tiny_config, seed=0)


@pytest.fixture(scope="session")
def smollm2_path():
    return MODELS["llama"].gguf_path()


@pytest.fixture(scope="session")
def smollm2():
    """Our reading of the default model, by its preset name: (config, weights, tokenizer)."""
    from llm_deploy.models import load_model

    return load_model("llama")


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)


@pytest.fixture(scope="session")
def hf_smollm2_model(smollm2_path):
    """transformers' own GGUF loading (about 30 s): the oracle for the config and every value."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
