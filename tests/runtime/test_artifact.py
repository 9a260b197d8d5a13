"""A decoder layer compiled for the CPU, saved, and run from the folder in a fresh process in
which the compiler cannot even be imported (issue 6)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llm_deploy.compiler.pipeline import build
from tests.compiler.llama_layer import (
    LayerConfig,
    build_decoder_layer,
    hf_decoder_layer_forward,
    random_weights,
)

RUNNER = textwrap.dedent(
    """
    import builtins, sys
    import numpy as np
    real_import = builtins.__import__
    def guarded(name, *args, **kwargs):
        if name == "llm_deploy.compiler" or name.startswith("llm_deploy.compiler."):
            raise ImportError("the compiler must not be needed to run an artifact")
        return real_import(name, *args, **kwargs)
    builtins.__import__ = guarded
    from llm_deploy.runtime.executable import Executable
    folder, inputs, out = sys.argv[1:4]
    data = np.load(inputs)
    vm = Executable.load(folder).vm()
    args = [data[f"arg{i}"] for i in range(len(data.files))]
    np.save(out, vm["decoder_layer"](*args))
    assert not any(m.startswith("llm_deploy.compiler") for m in sys.modules), "compiler was imported"
    """
)


@pytest.fixture(scope="module")
def saved_layer(tmp_path_factory):
    cfg = LayerConfig()
    folder = tmp_path_factory.mktemp("layer")
    build(build_decoder_layer(cfg)).save(folder)
    return cfg, folder


@pytest.mark.parametrize("n", [1, 7, 64])
def test_saved_decoder_layer_runs_in_fresh_process(saved_layer, tmp_path, n):
    cfg, folder = saved_layer
    weights = random_weights(cfg, seed=n)
    x = np.random.default_rng(n).standard_normal((n, cfg.hidden_size)).astype("float32")
    args = [x, *weights.values()]
    np.savez(tmp_path / "in.npz", **{f"arg{i}": a for i, a in enumerate(args)})
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(folder), str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ours = np.load(tmp_path / "out.npy")
    ref = hf_decoder_layer_forward(cfg, weights, x)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_guard_really_blocks_the_compiler(tmp_path):
    code = RUNNER.split("from llm_deploy.runtime")[0] + "import llm_deploy.compiler.shape\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "must not be needed" in proc.stderr
