"""Shared fixtures: the tiny preset, and transformers' tokenizer of the default model (the default
model itself, ours and transformers', is in tests/conftest.py: the KV cache tests use it too)."""

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
def hf_smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
