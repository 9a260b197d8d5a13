"""Loading an artifact: zero-copy weights, the tokenizer on first use, the KV pool sized to need."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llm_deploy.runtime.artifact import ArtifactError, load_artifact, map_safetensors
from llm_deploy.runtime.model_runner import ModelRunner


def test_mapped_tensors_equal_safetensors_own_loader(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a_odd_bytes": rng.integers(-128, 127, 7).astype(np.int8),  # puts the next tensors off alignment
        "b_f32": rng.standard_normal((3, 5)).astype(np.float32),
        "c_f16": rng.standard_normal(9).astype(np.float16),
        "d_i64": rng.integers(0, 1 << 40, (2, 2)).astype(np.int64),
        "e_empty": np.zeros((0, 4), np.float32),
    }
    save_file(tensors, tmp_path / "t.safetensors")
    mapped, reference = map_safetensors(tmp_path / "t.safetensors"), load_file(tmp_path / "t.safetensors")
    assert set(mapped) == set(reference)
    for name, ref in reference.items():
        got = mapped[name]
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        np.testing.assert_array_equal(got, ref, err_msg=name)
        assert got.ctypes.data % got.dtype.itemsize == 0, f"{name} is not aligned for its dtype"
        assert type(got) is np.ndarray and got.flags.c_contiguous and got.flags.writeable
    # Writes stay private to the process: the file is unchanged.
    mapped["b_f32"][0, 0] = 123.0
    np.testing.assert_array_equal(load_file(tmp_path / "t.safetensors")["b_f32"], tensors["b_f32"])


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    save_file({"w": np.ones(64, np.float32)}, tmp_path / "t.safetensors")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-16])
    with pytest.raises(ArtifactError, match="tensor 'w' of shape"):
        map_safetensors(tmp_path / "cut.safetensors")


def test_artifact_weights_are_views_of_the_file_and_tokenizer_loads_on_use(tiny_artifact):
    art = load_artifact(tiny_artifact)
    reference = load_file(tiny_artifact / "params" / "params.safetensors")
    for name, p in zip(art.manifest["params"], art.params):
        np.testing.assert_array_equal(p, reference[name])
    assert "tokenizer" not in vars(art)  # not parsed by loading
    ids = art.tokenizer.encode("hello")
    assert ids and art.tokenizer.decode(ids).strip() == "hello"


def test_kv_pool_sized_by_max_tokens(tiny_artifact):
    art = load_artifact(tiny_artifact)
    page = art.build_options["kv_page_size"]
    assert ModelRunner(art, max_tokens=40).cache.num_pages == -(-40 // page) + 1
    window = art.build_options["context_window"]
    assert ModelRunner(art).cache.num_pages == -(-window // page) + 1
    with pytest.raises(ValueError, match="max_tokens must be in 1..256"):
        ModelRunner(art, max_tokens=window + 1)
    with pytest.raises(ValueError, match="not both"):
        ModelRunner(art, num_pages=4, max_tokens=40)
