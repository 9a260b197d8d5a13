"""The default_schedule pass: every tensor program of a module scheduled, the module still
well-formed and equal (a Llama decoder layer, compiled for the CPU and run by the VM, against
the graph-level layer), twice the same as once, and part of the default pipeline."""

import numpy as np
import pytest

from llm_deploy.compiler import tir, wellformed
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.passes.schedule import default_schedule, host_cpu
from llm_deploy.compiler.pipeline import PIPELINES, build
from tests.compiler.llama_layer import LayerConfig, build_decoder_layer, random_weights


def test_host_cpu_knows_the_simd_width():
    assert host_cpu().vector_bits in (128, 256, 512)
    assert host_cpu().lanes("float32") == host_cpu().vector_bits // 32


def test_schedules_every_prim_func_and_is_idempotent():
    lowered = legalize(build_decoder_layer(LayerConfig()))
    scheduled = default_schedule(lowered)
    wellformed.check(scheduled)
    prim_funcs = {k: f for k, f in scheduled.items() if isinstance(f, tir.PrimFunc)}
    assert prim_funcs.keys() == {k for k, f in lowered.items() if isinstance(f, tir.PrimFunc)}
    for name, f in prim_funcs.items():
        kinds = {x.kind for x in tir_loops(f)}
        assert "parallel" in kinds or "vectorized" in kinds, f"{name} was left serial"
    assert default_schedule(scheduled) == scheduled
    with pytest.raises(ValueError, match="no default schedule for target 'nope'"):
        default_schedule(lowered, "nope")


def tir_loops(f):
    from llm_deploy.compiler.schedule.ir import loops

    return list(loops(f.body))


def test_default_pipeline_schedules_and_the_compiled_layer_matches():
    assert default_schedule in PIPELINES["default"]
    assert PIPELINES["default"].index(default_schedule) > PIPELINES["default"].index(legalize)
    cfg = LayerConfig()
    mod = build_decoder_layer(cfg)
    exe = build(mod, "llvm")
    vm = exe.vm()
    weights = random_weights(cfg, seed=0)
    for n in (1, 5, 17):
        x = np.random.default_rng(n).standard_normal((n, cfg.hidden_size)).astype("float32")
        expected = run(mod, "decoder_layer", x, *weights.values())
        got = vm["decoder_layer"](x, *weights.values())
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
