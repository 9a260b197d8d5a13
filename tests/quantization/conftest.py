"""The default model built once per session in every format (the q0f32 build is the shared one)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def format_artifact(artifacts_dir, default_artifact):
    """format name -> artifact folder of the default model, built on first use, with the exact
    kernels everywhere (int_dot off: decode's int8-activation kernels are judged on their own,
    in test_int_dot_quality.py)."""
    from llm_deploy.build import build_model

    built = {"q0f32": default_artifact}

    def get(fmt: str):
        if fmt not in built:
            built[fmt] = build_model(
                "llama", output=artifacts_dir / f"llama-{fmt}-llvm", quantization=fmt, progress=False,
                int_dot=False,
            )  # fmt: skip
        return built[fmt]

    return get


@pytest.fixture(scope="session")
def format_runner(format_artifact):
    """format name -> a fresh ModelRunner of that build (the loaded artifact is not kept)."""
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    return lambda fmt: ModelRunner(load_artifact(format_artifact(fmt)))
