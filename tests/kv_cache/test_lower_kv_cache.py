"""lower_kv_cache: the model's KV-cache ops become the paged attention kernel over the cache's own
arrays (as IR text, before and after), and the lowered model runs equal to the extern path on the
interpreter and on the VM with compiled kernels."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler import interpreter
from llm_deploy.compiler.parser import parse
from llm_deploy.compiler.passes.kv_cache import KERNEL_NAME, bind_kv_cache, lower_kv_cache
from llm_deploy.compiler.testing import assert_roundtrip, assert_structural_equal
from llm_deploy.kv_cache import PagedKVCache
from llm_deploy.kv_cache.kernels import paged_attention_func
from llm_deploy.runtime.vm import MatchError

BEFORE = """
@function
def f(ids: Tensor[(n,), "int32"], cache: Object, q: Tensor[(n, 4, 8), "float32"], k: Tensor[(n, 2, 8), "float32"], v: Tensor[(n, 2, 8), "float32"]) -> Tensor[(n, 4, 8), "float32"]:
    with dataflow():
        pos: Tensor[(n,), "int32"] = kv_cache_positions(cache, ids)
        a0: Tensor[(n, 4, 8), "float32"] = kv_cache_attention(cache, q, k, v, layer=0)
        a1: Tensor[(n, 4, 8), "float32"] = kv_cache_attention(cache, a0, k, v, layer=1)
        output(a1)
    return a1
"""

# The step arrays once per block, each layer's pools, one kernel shared by both layers.
STEP = 'Tuple[Tensor[(n,), "int32"], Tensor[(n,), "int64"], Tensor[(n,), "int32"], Tensor[(b1,), "int32"], Tensor[(p,), "int32"]]'
STEP_RAW = 'Tuple[Tensor[ndim(1), "int32"], Tensor[ndim(1), "int64"], Tensor[ndim(1), "int32"], Tensor[ndim(1), "int32"], Tensor[ndim(1), "int32"]]'
POOL = 'Tensor[(pages, page_size, 2, 8), "float32"]'
POOLS_RAW = 'Tuple[Tensor[ndim(4), "float32"], Tensor[ndim(4), "float32"]]'
STEP_ARGS = "positions, slots, token_seq, indptr, indices"
AFTER = f"""
@function
def f(ids: Tensor[(n,), "int32"], cache: Object, q: Tensor[(n, 4, 8), "float32"], k: Tensor[(n, 2, 8), "float32"], v: Tensor[(n, 2, 8), "float32"]) -> Tensor[(n, 4, 8), "float32"]:
    with dataflow():
        step_raw: {STEP_RAW} = call_extern_value(extern("kv_cache.step_arrays"), (cache,), out_sinfo={STEP_RAW})
        step: {STEP} = match_cast(step_raw, {STEP})
        positions: Tensor[(n,), "int32"] = step[0]
        slots: Tensor[(n,), "int64"] = step[1]
        token_seq: Tensor[(n,), "int32"] = step[2]
        indptr: Tensor[(b1,), "int32"] = step[3]
        indices: Tensor[(p,), "int32"] = step[4]
        pos: Tensor[(n,), "int32"] = positions
        pools0_raw: {POOLS_RAW} = call_extern_value(extern("kv_cache.layer_pools"), (cache, prim(0)), out_sinfo={POOLS_RAW})
        pools0: Tuple[{POOL}, {POOL}] = match_cast(pools0_raw, Tuple[{POOL}, {POOL}])
        k0: {POOL} = pools0[0]
        v0: {POOL} = pools0[1]
        a0: Tensor[(n, 4, 8), "float32"] = call_tir({KERNEL_NAME}, (q, k, v, k0, v0, {STEP_ARGS}), out_sinfo=Tensor[(n, 4, 8), "float32"])
        pools1_raw: {POOLS_RAW} = call_extern_value(extern("kv_cache.layer_pools"), (cache, prim(1)), out_sinfo={POOLS_RAW})
        pools1: Tuple[{POOL}, {POOL}] = match_cast(pools1_raw, Tuple[{POOL}, {POOL}])
        k1: {POOL} = pools1[0]
        v1: {POOL} = pools1[1]
        a1: Tensor[(n, 4, 8), "float32"] = call_tir({KERNEL_NAME}, (a0, k, v, k1, v1, {STEP_ARGS}), out_sinfo=Tensor[(n, 4, 8), "float32"])
        output(a1)
    return a1
"""


def kernel_text(*args) -> str:
    return str(paged_attention_func(*args)).replace("def main(", f"def {KERNEL_NAME}(", 1)


def test_attention_becomes_the_paged_kernel_over_the_cache_arrays():
    after = lower_kv_cache(parse(BEFORE))
    assert_structural_equal(after, AFTER + kernel_text(4, 2, 8))
    assert_roundtrip(after)


def test_pools_take_the_builds_kv_dtype():
    after = lower_kv_cache(parse(BEFORE).with_attrs(kv_dtype="float16"))
    expected = AFTER.replace(POOL, POOL.replace("float32", "float16"))
    expected = expected.replace(POOLS_RAW, POOLS_RAW.replace("float32", "float16"))
    assert_structural_equal(
        after, parse(expected + kernel_text(4, 2, 8, "float32", "float16")).with_attrs(kv_dtype="float16")
    )


def test_extern_kind_is_bind_kv_cache():
    before = parse(BEFORE)
    after = lower_kv_cache(before, kind="extern")
    assert after == bind_kv_cache(before)
    assert 'call_extern_pure(extern("kv_cache.attention"), (cache, q, k, v, prim(0))' in str(after)
    assert 'call_extern_pure(extern("kv_cache.attention"), (cache, a0, k, v, prim(1))' in str(after)
    with pytest.raises(ValueError, match="unknown kind 'dense'; expected one of paged_kernels, extern"):
        lower_kv_cache(before, kind="dense")


def test_a_call_of_unknown_head_shape_keeps_the_extern():
    text = BEFORE.replace('q: Tensor[(n, 4, 8), "float32"]', 'q: Tensor[ndim(3), "float32"]')
    text = text.replace('a0: Tensor[(n, 4, 8), "float32"]', 'a0: Tensor[ndim(3), "float32"]')
    text = text.replace('a1: Tensor[(n, 4, 8), "float32"]', 'a1: Tensor[ndim(3), "float32"]')
    text = text.replace('-> Tensor[(n, 4, 8), "float32"]', '-> Tensor[ndim(3), "float32"]')
    after = lower_kv_cache(parse(text))
    assert str(after).count('extern("kv_cache.attention")') == 2
    assert KERNEL_NAME not in after
    assert_roundtrip(after)


# ---------------------------------------------------------------------------------------------
# The tiny model, lowered, against the extern path


@pytest.fixture(scope="module")
def tiny():
    from llm_deploy.models import MODELS, make_tiny_weights
    from llm_deploy.models.llama import build_llama, weight_arrays

    config = MODELS["llama-tiny"].config
    return (
        config,
        build_llama(config, "float32", 256),
        weight_arrays(config, make_tiny_weights(config, seed=0)),
    )


def run_steps(config, weights, call):
    """prefill, decode and score over a ragged batch with a fork; every step's logits."""
    cache = PagedKVCache(
        config.num_hidden_layers, config.num_key_value_heads, config.head_dim, page_size=4, num_pages=64
    )
    for s in range(3):
        cache.add_sequence(s)
    outs = []

    def step(fn, seq_ids, lens, ids, extra):
        cache.begin_forward(seq_ids, lens)
        outs.append(call(fn, np.asarray(ids, np.int32), *extra(cache), cache, *weights))
        cache.end_forward()

    step("prefill", [0, 1, 2], [5, 9, 2], np.arange(16) % 250, lambda c: (c.last_token_indices.copy(),))
    cache.fork_sequence(1, 3)
    step("decode", [2, 0, 1, 3], [1, 1, 1, 1], [3, 4, 5, 6], lambda c: ())
    step("score", [3], [6], [7, 8, 9, 10, 11, 12], lambda c: ())
    for s in list(cache.seq_ids):
        cache.remove_sequence(s)
    assert cache.pages_in_use == 0
    return outs


def assert_all_close(ours: list[np.ndarray], ref: list[np.ndarray]) -> None:
    """Equal up to float32 summation order: within 1e-5 of the logits' magnitude."""
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_lowered_model_is_well_formed_and_interprets_like_the_extern(tiny):
    config, mod, weights = tiny
    lowered = lower_kv_cache(mod)
    assert [name for name, f in lowered.items() if name.startswith(KERNEL_NAME)] == [KERNEL_NAME]
    assert_roundtrip(lowered)
    ours = run_steps(config, weights, lambda fn, *a: interpreter.run(lowered, fn, *a))
    ref = run_steps(config, weights, lambda fn, *a: interpreter.run(mod, fn, *a))
    assert_all_close(ours, ref)


@pytest.mark.slow
def test_lowered_model_on_the_vm_equals_the_extern_pipeline(tiny):
    from llm_deploy.compiler.passes.legalize import legalize
    from llm_deploy.compiler.pipeline import build

    config, mod, weights = tiny
    kernels = build(mod, pipeline=[lower_kv_cache, legalize]).vm()
    externs = build(mod, pipeline=[bind_kv_cache, legalize]).vm()
    ours = run_steps(config, weights, lambda fn, *a: kernels[fn](*a))
    ref = run_steps(config, weights, lambda fn, *a: externs[fn](*a))
    assert_all_close(ours, ref)
    # the step must hold the tokens the model is given: a match_cast says so at run time
    cache = PagedKVCache(config.num_hidden_layers, config.num_key_value_heads, config.head_dim, num_pages=4)
    cache.add_sequence(0)
    cache.begin_forward([0], [5])
    with pytest.raises(MatchError, match=r"kv_step.*expected shape \(b,\), got \(5,\)"):
        kernels["decode"](np.zeros(4, np.int32), cache, *weights)


@pytest.mark.slow
def test_a_build_with_float16_pools_runs_close_to_float32(tmp_path, tiny_runner_factory):
    """build_model records kv_dtype; the kernels then read and write float16 pools."""
    from llm_deploy.build import build_model
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    out = build_model("llama-tiny", output=tmp_path / "f16", progress=False, kv_dtype="float16")
    runs = {}
    for kv_dtype, runner in (
        ("float32", tiny_runner_factory()),
        ("float16", ModelRunner(load_artifact(out))),
    ):
        assert runner.cache.k_pools[0].dtype == np.dtype(kv_dtype)
        runner.add_sequence(0)
        runner.add_sequence(1)
        first = runner.prefill([0, 1], [[5, 9, 12, 80, 33, 7, 1, 200], [44, 45, 46]])
        runs[kv_dtype] = [first, runner.decode([0, 1], [int(first[0].argmax()), int(first[1].argmax())])]
    for a, b in zip(runs["float16"], runs["float32"]):
        assert np.abs(a - b).max() <= 1e-2 * np.abs(b).max()


VALUE_EXTERN = """
@function
def f(cache: Object) -> Tensor[ndim(2), "float32"]:
    with dataflow():
        raw: Tensor[ndim(2), "float32"] = call_extern_value(extern("test.table"), (cache, prim(3)), out_sinfo=Tensor[ndim(2), "float32"])
        t: Tensor[(m, 2), "float32"] = match_cast(raw, Tensor[(m, 2), "float32"])
        output(t)
    return t
"""


def test_call_extern_value_returns_the_externs_value_on_the_vm_and_the_interpreter(monkeypatch):
    from llm_deploy.compiler.externs import EXTERNS, ExternDef
    from llm_deploy.compiler.vm_codegen import lower_to_vm
    from llm_deploy.runtime.vm import VirtualMachine, VMError

    mod = assert_roundtrip(parse(VALUE_EXTERN))
    table = {"rows": np.arange(6, dtype=np.float32).reshape(3, 2)}

    def lookup(cache, rows):  # not DPS: the result is the library's own array
        return cache["rows"][: int(rows)]

    program, constants = lower_to_vm(mod)
    assert [i["op"] for i in program["functions"]["f"]["instrs"]][:2] == ["prim", "call_extern_value"]
    vm = VirtualMachine(program, {}, {"test.table": lookup}, constants)
    out = vm["f"](table)
    assert np.shares_memory(out, table["rows"]) and out.shape == (3, 2)
    with pytest.raises(MatchError, match=r"match_cast t: expected shape \(m, 2\), got \(3, 3\)"):
        vm["f"]({"rows": np.zeros((5, 3), np.float32)})
    with pytest.raises(VMError, match="extern function 'test.table' is not registered"):
        VirtualMachine(program, {}, {}, constants)["f"](table)

    monkeypatch.setitem(EXTERNS, "test.table", ExternDef("test.table", lookup))
    np.testing.assert_array_equal(interpreter.run(mod, "f", table), table["rows"])
