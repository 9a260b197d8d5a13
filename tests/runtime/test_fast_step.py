"""The low-overhead step (runtime/plan.py) computes what the VM's instructions compute, and still
checks what changed: the tiny model built for the CPU, run both ways."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.runtime.artifact import load_artifact
from llm_deploy.runtime.model_runner import ModelRunner
from llm_deploy.runtime.vm import MatchError, fast_step_default
from llm_deploy.targets.llvm.runtime import KernelCallError


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    return load_artifact(tiny_artifact)


def runner(artifact, fast: bool) -> ModelRunner:
    return ModelRunner(artifact, num_pages=64, vm=artifact.executable.vm(fast_step=fast))


def run_both(artifact, script):
    """`script(runner)` -> list of logits, on a fast and a slow runner."""
    return [script(runner(artifact, fast)) for fast in (True, False)]


def test_all_model_functions_are_planned(artifact):
    r = runner(artifact, True)
    assert r.vm.plan_status == {"prefill": "planned", "decode": "planned", "score": "planned"}
    assert set(runner(artifact, False).vm.plan_status.values()) == {"off"}


def test_a_plan_lists_its_launches_in_program_order(artifact):
    """`Plan.launches` (what bench/kernel_times.py replays) walks the loop's code: one entry per
    kernel call, each the address of a kernel of the artifact, in the decode program's order."""
    r = runner(artifact, True)
    r.add_sequence(0)
    r.prefill([0], [[5, 6, 7]])
    decode = r.vm["decode"]
    ids = r.device.from_host(np.asarray([5], np.int32))
    r.cache.begin_forward([0], [1])
    plan, _ = decode.plan_for(ids, r.cache, *r.params)
    r.cache.cancel_forward()
    module = artifact.executable.kernels
    by_address = {module[n].address: n for n in module.kernels}
    called = [by_address[fn] for fn, _ in plan.launches()]
    program = [
        ins["kernel"]
        for ins in artifact.executable.program["functions"]["decode"]["instrs"]
        if ins["op"] == "call_tir"
    ]
    assert called == program and len(called) == plan.kernel_calls


@pytest.mark.parametrize("batch", [1, 3, 5])
@pytest.mark.parametrize("prompt_len", [1, 17, 40])
def test_fast_step_logits_equal_slow_step(artifact, batch, prompt_len):
    rng = np.random.default_rng(batch * 100 + prompt_len)
    prompts = [rng.integers(3, 259, prompt_len + i).tolist() for i in range(batch)]
    seqs = list(range(batch))

    def script(r):
        for s in seqs:
            r.add_sequence(s)
        out = [r.prefill(seqs, prompts)]
        tokens = out[-1].argmax(-1).tolist()
        for _ in range(20):  # crosses page boundaries (16 tokens a page)
            out.append(r.decode(seqs, tokens))
            tokens = out[-1].argmax(-1).tolist()
        out.append(r.score(0, [5, 6, 7]))
        return out

    fast, slow = run_both(artifact, script)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)


def test_changing_batch_and_sequences_mid_stream(artifact):
    """Batches that grow and shrink between steps (new keys, old keys again) and a sequence
    removed and another forked: each step's logits as on the slow path."""

    def script(r):
        out = []
        r.add_sequence(0)
        out.append(r.prefill([0], [[5, 6, 7, 8, 9]]))
        r.add_sequence(1)
        out.append(r.prefill([1], [[10, 11]]))
        for step in range(6):
            out.append(r.decode([0, 1], [3 + step, 4 + step]))
            out.append(r.decode([1], [7]))
        r.fork_sequence(0, 2)
        r.remove_sequence(1)
        for step in range(4):
            out.append(r.decode([2, 0], [9, 8 + step]))
        return out

    fast, slow = run_both(artifact, script)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)


def test_new_token_arrays_are_read_at_every_call(artifact):
    """Two calls with the same shapes but other ids give other logits (no stale pointers)."""
    r = runner(artifact, True)
    r.add_sequence(0)
    r.add_sequence(1)
    r.prefill([0, 1], [[5, 6], [5, 6]])
    a = r.decode([0, 1], [20, 30])
    assert len(r._decode.plans) == 1
    assert not np.array_equal(a[0], a[1])


def test_bad_ids_are_still_checked(artifact):
    r = runner(artifact, True)
    r.add_sequence(0)
    r.prefill([0], [[5, 6, 7]])
    r.decode([0], [5])  # a plan exists now
    r.cache.begin_forward([0], [1])
    try:
        with pytest.raises(MatchError, match=r"decode: parameter ids: expected dtype int32"):
            r._decode(np.array([5.0], dtype="float32"), r.cache, *r.params)
        with pytest.raises(MatchError, match=r"parameter ids: expected shape \(b,\), got \(1, 1\)"):
            r._decode(np.array([[5]], dtype="int32"), r.cache, *r.params)
        # b bound from ids (2) disagrees with the step's arrays (1 token)
        with pytest.raises(MatchError, match=r"match_cast kv_step.*b is 2 here"):
            r._decode(np.array([5, 6], dtype="int32"), r.cache, *r.params)
    finally:
        r.cache.cancel_forward()


def test_other_weights_are_checked_and_used(artifact):
    r = runner(artifact, True)
    slow = runner(artifact, False)
    for x in (r, slow):
        x.add_sequence(0)
        x.prefill([0], [[5, 6, 7]])
    r.decode([0], [5])
    slow.decode([0], [5])
    # Another object of the same shape: checked, and its values used (the plans are dropped).
    params = list(r.params)
    i = max(range(len(params)), key=lambda j: params[j].size)
    params[i] = params[i] * np.float32(0.5)
    r.params = slow.params = params
    np.testing.assert_array_equal(r.decode([0], [6]), slow.decode([0], [6]))
    # A weight of the wrong shape: a clear error naming the parameter.
    bad = list(params)
    bad[i] = bad[i][:-1]
    r.params = bad
    with pytest.raises(MatchError, match=r"decode: parameter \w+: expected shape"):
        r.decode([0], [7])


def test_bad_kernel_argument_is_reported_when_the_plan_is_built(artifact):
    """A plan checks each launch once, with the checks of a direct kernel call."""
    r = runner(artifact, True)
    name = next(n for n in r.vm.kernels.kernels)
    kernel = r.vm.kernels[name]
    with pytest.raises(KernelCallError, match=f"kernel {name}"):
        kernel.bind(*([np.zeros(3, "float64")] * len(kernel.signature.params)))


def test_switches(artifact, tiny_artifact, monkeypatch):
    monkeypatch.setenv("LLMD_FAST_STEP", "0")
    assert not fast_step_default()
    assert set(ModelRunner(artifact).vm.plan_status.values()) == {"off"}
    monkeypatch.setenv("LLMD_FAST_STEP", "1")
    assert fast_step_default()
    off = load_artifact(tiny_artifact, fast_step=False)
    assert set(ModelRunner(off).vm.plan_status.values()) == {"off"}
    assert ModelRunner(artifact).vm.plan_status["decode"] == "planned"


def test_plan_with_library_call_reshape_and_tuple_result():
    """Native launches around a DPS library call (a segment boundary), a reshaped fresh output,
    a tuple result; each call's results are its own arrays."""
    from llm_deploy.compiler import ops
    from llm_deploy.compiler import struct_info as SI
    from llm_deploy.compiler.builder import BlockBuilder
    from llm_deploy.compiler.expr import Tuple, Var
    from llm_deploy.compiler.pipeline import build
    from llm_deploy.compiler.shape import var

    n = var("n")
    bb = BlockBuilder()
    x, w = Var("x", SI.tensor((n, 4))), Var("w", SI.tensor((4,)))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            a = bb.emit_output(ops.add(x, w), "a")
        sm = bb.emit(ops.call_extern("numpy.softmax", [a], SI.tensor((n, 4))), "sm")
        with bb.dataflow():
            r = bb.emit(ops.reshape(sm, (n * 4,)), "r")
            o = bb.emit_output(ops.multiply(r, r), "o")
        bb.emit_func_output(Tuple((o, sm)))
    exe = build(bb.get())
    fast, slow = exe.vm(fast_step=True), exe.vm(fast_step=False)
    assert fast.plan_status["main"] == "planned"
    rng = np.random.default_rng(0)
    w_value = np.arange(4, dtype="float32")
    results = []
    for rows in (1, 3, 7, 3):
        xv = rng.standard_normal((rows, 4)).astype("float32")
        got, want = fast["main"](xv, w_value), slow["main"](xv, w_value)
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e)
        results.append((got, want))
    for got, want in results:  # later calls did not overwrite earlier results
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e)
    plan = next(iter(fast._functions["main"].plans.values()))
    assert [s[0] for s in plan.segments] == ["native", "extern", "native"]
    assert len(fast._functions["main"].plans) == 3  # rows 1, 3, 7


def test_instruction_path_skips_only_identical_weights():
    """Kernels without a native entry (here numpy functions, as GPU targets' are their own):
    the VM's instructions run, and a weight is rechecked whenever it is another object."""
    from llm_deploy.compiler import ops
    from llm_deploy.compiler import struct_info as SI
    from llm_deploy.compiler.builder import BlockBuilder
    from llm_deploy.compiler.expr import GlobalVar, Var
    from llm_deploy.compiler.shape import var
    from llm_deploy.compiler.vm_codegen import lower_to_vm
    from llm_deploy.runtime.vm import VirtualMachine

    n = var("n")
    bb = BlockBuilder()
    x, w = Var("x", SI.tensor((n, 4))), Var("w", SI.tensor((4,)))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(ops.call_tir(GlobalVar("add"), [x, w], SI.tensor((n, 4))), "out")
        bb.emit_func_output(out)
    program, constants = lower_to_vm(bb.get())
    vm = VirtualMachine(
        program, {"add": lambda a, b, o: np.add(a, b, out=o)}, constants=constants, fast_step=True
    )
    assert vm.plan_status["main"] == "kernel add has no native entry"
    w_value = np.ones(4, "float32")
    for rows in (2, 5):
        np.testing.assert_array_equal(vm["main"](np.zeros((rows, 4), "float32"), w_value), np.ones((rows, 4)))
    with pytest.raises(MatchError, match=r"main: parameter w: expected shape \(4,\), got \(5,\)"):
        vm["main"](np.zeros((2, 4), "float32"), np.ones(5, "float32"))
    with pytest.raises(MatchError, match=r"parameter w: expected dtype float32, got float64"):
        vm["main"](np.zeros((2, 4), "float32"), np.ones(4, "float64"))
    np.testing.assert_array_equal(vm["main"](np.ones((1, 4), "float32"), w_value), np.full((1, 4), 2.0))
