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
