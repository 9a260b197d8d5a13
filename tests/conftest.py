"""Session-wide fixtures: artifacts are built once per test session and shared by every folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def tiny_artifact(artifacts_dir):
    """`llama-tiny` (seeded random weights) built for the CPU."""
    from llm_deploy.build import build_model

    return build_model("llama-tiny", output=artifacts_dir / "llama-tiny-q0f32-llvm", progress=False)


@pytest.fixture(scope="session")
def default_artifact(artifacts_dir):
    """The default model (SmolLM2-135M-Instruct from its GGUF), q0f32, built for the CPU."""
    from llm_deploy.build import build_model

    return build_model(
        "llama", output=artifacts_dir / "llama-q0f32-llvm", quantization="q0f32", progress=False
    )


@pytest.fixture(scope="session")
def default_runner_factory(default_artifact):
    """Fresh runners over one loaded artifact (kernels loaded once)."""
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    artifact = load_artifact(default_artifact)
    return lambda **kw: ModelRunner(artifact, **kw)


@pytest.fixture(scope="session")
def tiny_runner_factory(tiny_artifact):
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    artifact = load_artifact(tiny_artifact)
    return lambda **kw: ModelRunner(artifact, **kw)


@pytest.fixture(scope="session")
def smollm2_path():
    from llm_deploy.models import MODELS

    return MODELS["llama"].gguf_path()


@pytest.fixture(scope="session")
def smollm2():
    """Our reading of the default model, by its preset name: (config, weights, tokenizer)."""
    from llm_deploy.models import load_model

    return load_model("llama")


@pytest.fixture(scope="session")
def hf_smollm2_model(smollm2_path):
    """transformers' own GGUF loading (about 30 s): the oracle for the config and every value."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
