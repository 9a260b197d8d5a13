"""The CPU pipeline with fusion and memory planning, on the default model (SmolLM2-135M, q0f32):
the same greedy tokens as without them, fewer kernels per decode step, and a decode step that
allocates nothing but the logits it returns."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llm_deploy.compiler.passes.fuse_tir import fuse_tir
from llm_deploy.compiler.passes.memory_plan import memory_plan
from llm_deploy.compiler.pipeline import PIPELINES

PROMPT = "The three most famous landmarks of Paris are the Eiffel Tower, the"
STEPS = 16


def test_the_llvm_pipeline_is_the_default_and_unoptimized_stays_available():
    names = [p.__name__ for p in PIPELINES["llvm"]]
    assert names.index("legalize") < names.index("fuse_ops") < names.index("fuse_tir")
    assert names[-1] == memory_plan.__name__ and fuse_tir in PIPELINES["llvm"]
    if "default_schedule" in names:
        assert names.index("fuse_tir") < names.index("default_schedule")  # schedules see fused programs
    assert "fuse_ops" not in [p.__name__ for p in PIPELINES["unoptimized"]]


def greedy(runner, ids: list[int], steps: int) -> tuple[list[int], list[int], list[int]]:
    """Tokens, kernels launched and allocations made per decode step."""
    vm = runner.vm
    runner.add_sequence(0)
    try:
        nxt = int(runner.prefill([0], [ids])[0].argmax())
        tokens, kernels, allocs = [], [], []
        for _ in range(steps):
            tokens.append(nxt)
            k0, a0 = vm.stats["kernel_calls"], vm.stats["allocs"]
            nxt = int(runner.decode([0], [nxt])[0].argmax())
            kernels.append(vm.stats["kernel_calls"] - k0)
            allocs.append(vm.stats["allocs"] - a0)
    finally:
        runner.remove_sequence(0)
    return tokens, kernels, allocs


@pytest.mark.slow
def test_default_model_greedy_tokens_with_fusion_and_planning_on_and_off(default_artifact):
    from llm_deploy.compiler.pipeline import build
    from llm_deploy.models import MODELS
    from llm_deploy.models.llama import build_llama
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    on = load_artifact(default_artifact)
    decode_ops = [i["op"] for i in on.executable.program["functions"]["decode"]["instrs"]]
    assert "alloc_storage" in decode_ops and "reshape" in decode_ops  # built with the llvm pipeline
    mod = build_llama(MODELS["llama"].config, "float32", on.build_options["context_window"])
    off = replace(on, executable=build(mod, "llvm", pipeline="unoptimized"))
    ids = on.tokenizer.encode(PROMPT)
    assert 12 <= len(ids) <= 20

    tokens_on, kernels_on, allocs_on = greedy(ModelRunner(on), ids, STEPS)
    tokens_off, kernels_off, allocs_off = greedy(ModelRunner(off), ids, STEPS)
    assert tokens_on == tokens_off
    layers = on.config["num_hidden_layers"]
    assert kernels_on[0] <= 10 * layers + 3 < 20 * layers <= kernels_off[0]
    # Storage exists after the first step: later steps allocate only the logits they return.
    assert allocs_on[1:] == [1] * (STEPS - 1) and allocs_off[1] > 20 * layers
