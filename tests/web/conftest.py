"""Artifacts the in-browser runtime is tested on, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_webgpu_artifact(artifacts_dir):
    """`llama-tiny` (the same seeded weights as `tiny_artifact`) built for WebGPU in float32:
    SwiftShader, Chromium's adapter here, has no shader-f16."""
    from llm_deploy.build import build_model

    out = artifacts_dir / "llama-tiny-q0f32-webgpu"
    return build_model("llama-tiny", "webgpu", out, "q0f32", progress=False)


@pytest.fixture(scope="session")
def tiny_webgpu_f16_artifact(artifacts_dir):
    """`llama-tiny` for WebGPU with a float16 KV cache: its kernels need shader-f16."""
    from llm_deploy.build import build_model

    out = artifacts_dir / "llama-tiny-q0f32-kvf16-webgpu"
    return build_model("llama-tiny", "webgpu", out, "q0f32", progress=False, kv_dtype="float16")
