"""`build --quantization`: packed weights in the artifact, named as the pass recorded them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_deploy.build import build_model


def test_gguf_needs_a_gguf_source(tmp_path):
    with pytest.raises(ValueError, match="'gguf' keeps a GGUF file's blocks as they are"):
        build_model("llama-tiny", output=tmp_path / "a", quantization="gguf", progress=False)


@pytest.mark.slow
def test_a_quantized_tiny_build_stores_packed_weights_and_runs(tmp_path, tiny_runner_factory):
    from safetensors import safe_open

    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    out = build_model("llama-tiny", output=tmp_path / "q8", quantization="q8f16_1", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["build_options"]["quantization"] == "q8f16_1"
    params = manifest["params"]
    assert params[:3] == ["embed_tokens.qweight", "embed_tokens.scale", "layers.0.input_norm"]
    with safe_open(str(out / "params" / "params.safetensors"), framework="numpy") as f:
        assert f.get_tensor("layers.0.q_proj.qweight").dtype == np.uint32
        assert f.get_tensor("layers.0.q_proj.scale").dtype == np.float16
        assert f.get_tensor("norm").dtype == np.float32
    ours, ref = ModelRunner(load_artifact(out)), tiny_runner_factory()
    ids = list(range(3, 40))
    for r in (ours, ref):
        r.add_sequence(0)
    got, want = ours.score(0, ids), ref.score(0, ids)
    assert np.abs(got - want).max() < 0.05 * np.ptp(want)  # 8-bit: close to float32
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9
