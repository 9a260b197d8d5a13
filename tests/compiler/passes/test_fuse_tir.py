"""fuse_tir: each primitive group becomes one tensor program, its intermediates inlined into
their readers (injective producers) or into their producer's store (elementwise epilogues)."""

import numpy as np
import pytest

from llm_deploy.compiler import tir
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.passes.dce import dce
from llm_deploy.compiler.passes.fuse_ops import fuse_ops
from llm_deploy.compiler.passes.fuse_tir import fuse_tir
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.passes.rewrite_reshape import rewrite_reshape
from llm_deploy.compiler.pattern import global_allocs
from tests.compiler.llama_layer import LayerConfig, build_decoder_layer, random_weights
from tests.compiler.passes.fusion_cases import module
from tests.compiler.passes.harness import check_pass

T6 = 'Tensor[(n, 6), "float32"]'
T8 = 'Tensor[(n, 8), "float32"]'
W = 'Tensor[(6, 8), "float32"]'


def _group(name: str, params: str, ret: str, bindings: str, main_params: str, args: str) -> str:
    return f"""
    @function
    def main({main_params}) -> {ret}:
        with dataflow():
            y: {ret} = {name}({args})
            output(y)
        return y

    @function
    def {name}({params}) -> {ret}:
        attrs(primitive=True)
        with dataflow():{bindings}
            output(gv)
        return gv
"""


def _after(name: str, ret: str, main_params: str, args: str, prim: str) -> str:
    return f"""
@module
class Module:
    @function
    def main({main_params}) -> {ret}:
        with dataflow():
            y: {ret} = call_tir({name}, ({args}), out_sinfo={ret})
            output(y)
        return y
{prim}"""


def test_matmul_with_a_residual_add_epilogue():
    before = module(
        _group(
            "fused_linear_add",
            f"p0: {T8}, p1: {W}, p2: {T6}",
            T6,
            f"""
            lv0: {T6} = call_tir(linear, (p0, p1), out_sinfo={T6})
            gv: {T6} = call_tir(add, (lv0, p2), out_sinfo={T6})""",
            f"x: {T8}, w: {W}, r: {T6}",
            "x, w, r",
        ),
        "linear",
        "add",
    )
    expected = _after(
        "fused_linear_add",
        T6,
        f"x: {T8}, w: {W}, r: {T6}",
        "x, w, r",
        """
    @prim_func
    def fused_linear_add(A: Buffer[(n, 8), "float32"], B: Buffer[(6, 8), "float32"], B_1: Buffer[(n, 6), "float32"], Out: Buffer[(n, 6), "float32"]):
        for i0 in range(n):
            for i1 in range(6):
                Out_acc = alloc((1,), "float32", "local")
                Out_acc[0] = float32(0.0)
                for k in range(8):
                    Out_acc[0] = Out_acc[0] + A[i0, k] * B[i1, k]
                Out[i0, i1] = Out_acc[0] + B_1[i0, i1]
""",
    )
    check_pass(fuse_tir, before, expected)


def test_swiglu_gate_silu_times_up_in_the_matmul_store():
    before = module(
        _group(
            "fused_linear_silu_multiply",
            f"p0: {T8}, p1: {W}, p2: {T6}",
            T6,
            f"""
            lv0: {T6} = call_tir(linear, (p0, p1), out_sinfo={T6})
            lv1: {T6} = call_tir(silu, (lv0,), out_sinfo={T6})
            gv: {T6} = call_tir(multiply, (lv1, p2), out_sinfo={T6})""",
            f"x: {T8}, w: {W}, u: {T6}",
            "x, w, u",
        ),
        "linear",
        "silu",
        "multiply",
    )
    expected = _after(
        "fused_linear_silu_multiply",
        T6,
        f"x: {T8}, w: {W}, u: {T6}",
        "x, w, u",
        """
    @prim_func
    def fused_linear_silu_multiply(A: Buffer[(n, 8), "float32"], B: Buffer[(6, 8), "float32"], B_1: Buffer[(n, 6), "float32"], Out: Buffer[(n, 6), "float32"]):
        for i0 in range(n):
            for i1 in range(6):
                Out_acc = alloc((1,), "float32", "local")
                Out_acc[0] = float32(0.0)
                for k in range(8):
                    Out_acc[0] = Out_acc[0] + A[i0, k] * B[i1, k]
                Out[i0, i1] = Out_acc[0] * sigmoid(Out_acc[0]) * B_1[i0, i1]
""",
    )
    check_pass(fuse_tir, before, expected)


def test_rms_norm_and_scale_keep_the_norms_statistics_scratch():
    v8 = 'Tensor[(8,), "float32"]'
    before = module(
        _group(
            "fused_rms_norm_scale",
            f"p0: {T8}, p1: {v8}, p2: {v8}",
            T8,
            f"""
            lv0: {T8} = call_tir(rms_norm, (p0, p1), out_sinfo={T8})
            gv: {T8} = call_tir(scale, (lv0, p2), out_sinfo={T8})""",
            f"x: {T8}, w: {v8}, s: {v8}",
            "x, w, s",
        ),
        "rms_norm",
        "scale",
    )
    expected = _after(
        "fused_rms_norm_scale",
        T8,
        f"x: {T8}, w: {v8}, s: {v8}",
        "x, w, s",
        """
    @prim_func
    def fused_rms_norm_scale(A: Buffer[(n, 8), "float32"], B: Buffer[(8,), "float32"], B_1: Buffer[(8,), "float32"], Out: Buffer[(n, 8), "float32"]):
        ms = alloc((n,), "float32", "global")
        for i0 in range(n):
            ms_acc = alloc((1,), "float32", "local")
            ms_acc[0] = float32(0.0)
            for k in range(8):
                ms_acc[0] = ms_acc[0] + A[i0, k] * A[i0, k]
            ms[i0] = ms_acc[0] / cast("float32", 8)
        for i0_1 in range(n):
            for i1 in range(8):
                Out[i0_1, i1] = A[i0_1, i1] / sqrt(ms[i0_1] + float32(1e-05)) * B[i1] * B_1[i1]
""",
    )
    check_pass(fuse_tir, before, expected)


def test_an_epilogue_reading_a_costly_value_twice_keeps_it_in_a_local():
    v8 = 'Tensor[(8,), "float32"]'
    before = module(
        _group(
            "fused_rms_norm_silu",
            f"p0: {T8}, p1: {v8}",
            T8,
            f"""
            lv0: {T8} = call_tir(rms_norm, (p0, p1), out_sinfo={T8})
            gv: {T8} = call_tir(silu8, (lv0,), out_sinfo={T8})""",
            f"x: {T8}, w: {v8}",
            "x, w",
        ),
        "rms_norm",
        "silu8",
    )
    expected = _after(
        "fused_rms_norm_silu",
        T8,
        f"x: {T8}, w: {v8}",
        "x, w",
        """
    @prim_func
    def fused_rms_norm_silu(A: Buffer[(n, 8), "float32"], B: Buffer[(8,), "float32"], Out: Buffer[(n, 8), "float32"]):
        ms = alloc((n,), "float32", "global")
        for i0 in range(n):
            ms_acc = alloc((1,), "float32", "local")
            ms_acc[0] = float32(0.0)
            for k in range(8):
                ms_acc[0] = ms_acc[0] + A[i0, k] * A[i0, k]
            ms[i0] = ms_acc[0] / cast("float32", 8)
        for i0_1 in range(n):
            for i1 in range(8):
                Out_local = alloc((1,), "float32", "local")
                Out_local[0] = A[i0_1, i1] / sqrt(ms[i0_1] + float32(1e-05)) * B[i1]
                Out[i0_1, i1] = Out_local[0] * sigmoid(Out_local[0])
""",
    )
    check_pass(fuse_tir, before, expected)


def test_a_transpose_and_a_gather_are_recomputed_where_read():
    xt, tab, ids = 'Tensor[(8, n), "float32"]', 'Tensor[(10, 8), "float32"]', 'Tensor[(n,), "int32"]'
    before = module(
        _group(
            "fused_permute_dims_linear",
            f"p0: {xt}, p1: {W}",
            T6,
            f"""
            lv0: {T8} = call_tir(permute_dims, (p0,), out_sinfo={T8})
            gv: {T6} = call_tir(linear, (lv0, p1), out_sinfo={T6})""",
            f"x: {xt}, w: {W}",
            "x, w",
        ),
        "permute_dims",
        "linear",
    )
    expected = _after(
        "fused_permute_dims_linear",
        T6,
        f"x: {xt}, w: {W}",
        "x, w",
        """
    @prim_func
    def fused_permute_dims_linear(A: Buffer[(8, n), "float32"], B: Buffer[(6, 8), "float32"], Out: Buffer[(n, 6), "float32"]):
        for i0 in range(n):
            for i1 in range(6):
                Out_acc = alloc((1,), "float32", "local")
                Out_acc[0] = float32(0.0)
                for k in range(8):
                    Out_acc[0] = Out_acc[0] + A[k, i0] * B[i1, k]
                Out[i0, i1] = Out_acc[0]
""",
    )
    check_pass(fuse_tir, before, expected)
    before = module(
        _group(
            "fused_take_exp",
            f"p0: {tab}, p1: {ids}",
            T8,
            f"""
            lv0: {T8} = call_tir(take, (p0, p1), out_sinfo={T8})
            gv: {T8} = call_tir(exp, (lv0,), out_sinfo={T8})""",
            f"t: {tab}, i: {ids}",
            "t, i",
        ),
        "take",
        "exp",
    )
    expected = _after(
        "fused_take_exp",
        T8,
        f"t: {tab}, i: {ids}",
        "t, i",
        """
    @prim_func
    def fused_take_exp(A: Buffer[(10, 8), "float32"], B: Buffer[(n,), "int32"], Out: Buffer[(n, 8), "float32"]):
        for i0 in range(n):
            for i1 in range(8):
                idx = cast("int64", B[i0])
                Out[i0, i1] = exp(A[idx, i1])
""",
    )
    check_pass(fuse_tir, before, expected)


def test_a_symbolic_var_of_a_shape_argument_stays_a_scalar_parameter():
    before = module(
        f"""
    @function
    def main(x: {T8}, z: Tensor[(m,), "float32"]) -> {T8}:
        with dataflow():
            y: {T8} = fused_shift_exp(x, shape(m))
            output(y)
        return y

    @function
    def fused_shift_exp(p0: {T8}, s: Shape[(k,)]) -> {T8}:
        attrs(primitive=True)
        with dataflow():
            lv0: {T8} = call_tir(shift, (p0,), shape(k), out_sinfo={T8})
            gv: {T8} = call_tir(exp, (lv0,), out_sinfo={T8})
            output(gv)
        return gv
""",
        "shift",
        "exp",
    )
    expected = f"""
@module
class Module:
    @function
    def main(x: {T8}, z: Tensor[(m,), "float32"]) -> {T8}:
        with dataflow():
            y: {T8} = call_tir(fused_shift_exp, (x,), shape(m), out_sinfo={T8})
            output(y)
        return y

    @prim_func
    def fused_shift_exp(A: Buffer[(n, 8), "float32"], Out: Buffer[(n, 8), "float32"], k: Prim["int64"]):
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = exp(A[i0, i1] + cast("float32", k))
"""
    check_pass(fuse_tir, before, expected)


def test_two_reductions_keep_their_intermediate_as_scratch():
    w66 = 'Tensor[(6, 6), "float32"]'
    before = module(
        _group(
            "fused_linear_linear",
            f"p0: {T8}, p1: {W}, p2: {w66}",
            T6,
            f"""
            lv0: {T6} = call_tir(linear, (p0, p1), out_sinfo={T6})
            gv: {T6} = call_tir(linear66, (lv0, p2), out_sinfo={T6})""",
            f"x: {T8}, w: {W}, v: {w66}",
            "x, w, v",
        ),
        "linear",
        "linear66",
    )
    after = check_pass(fuse_tir, before, None)
    (buf,) = global_allocs(after["fused_linear_linear"].body)
    assert buf.shape == after["fused_linear_linear"].params[-1].shape


def test_a_group_that_cannot_merge_stays_a_function_call():
    before = module(
        _group(
            "fused_exp_neg",
            f"p0: {T8}",
            T8,
            f"""
            lv0: {T8} = exp(p0)
            gv: {T8} = call_tir(negative, (lv0,), out_sinfo={T8})""",
            f"x: {T8}",
            "x",
        ),
        "negative",
    )
    check_pass(fuse_tir, before, before)


def test_decoder_layer_fused_runs_equal_with_fewer_kernels():
    cfg = LayerConfig()
    mod = rewrite_reshape(legalize(build_decoder_layer(cfg)))
    fused = dce(fuse_tir(fuse_ops(mod)))
    count = lambda m: sum(1 for b in m["decoder_layer"].body.blocks[0].bindings if "call_tir" in str(b.value))  # noqa: E731
    assert count(fused) < count(mod)
    assert all(not k.startswith("fused") or isinstance(f, tir.PrimFunc) for k, f in fused.items())
    rng = np.random.default_rng(0)
    weights = list(random_weights(cfg, seed=0).values())
    for n in (1, 5):
        x = rng.standard_normal((n, cfg.hidden_size)).astype("float32")
        np.testing.assert_allclose(
            run(fused, "decoder_layer", x, *weights),
            run(mod, "decoder_layer", x, *weights),
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.slow
def test_fused_programs_are_scheduled_as_their_anchor_and_stay_equal():
    from llm_deploy.compiler.passes.schedule import default_schedule
    from llm_deploy.compiler.schedule.analysis import classify

    cfg = LayerConfig()
    fused = dce(fuse_tir(fuse_ops(rewrite_reshape(legalize(build_decoder_layer(cfg))))))
    kinds = {k: classify(f).kind for k, f in fused.items() if k.startswith("fused")}
    assert kinds and set(kinds.values()) == {"matmul"}, kinds  # matmul + epilogue is still a matmul
    scheduled = default_schedule(fused)
    weights = list(random_weights(cfg, seed=0).values())
    x = np.random.default_rng(0).standard_normal((7, cfg.hidden_size)).astype("float32")
    np.testing.assert_allclose(
        run(scheduled, "decoder_layer", x, *weights),
        run(fused, "decoder_layer", x, *weights),
        rtol=1e-5,
        atol=1e-5,
    )


def test_rotary_fuses_into_the_cache_append_and_query_load_of_paged_attention():
    from llm_deploy.compiler.interpreter import run as interpret
    from llm_deploy.compiler.passes.canonicalize import canonicalize
    from llm_deploy.compiler.passes.kv_cache import lower_kv_cache
    from llm_deploy.compiler.pattern import walk
    from llm_deploy.models import MODELS, make_tiny_weights
    from llm_deploy.models.llama import build_llama, weight_arrays
    from tests.kv_cache.test_lower_kv_cache import assert_all_close, run_steps

    config = MODELS["llama-tiny"].config
    mod = canonicalize(rewrite_reshape(legalize(lower_kv_cache(build_llama(config, "float32", 64)))))
    fused = dce(fuse_tir(fuse_ops(mod)))
    kernels = [f for k, f in fused.items() if k.startswith("fused_rope_rope_kv_cache_paged_attention")]
    assert len(kernels) == 2  # one over n (prefill, score), one over b (decode)
    for kernel in kernels:
        pool_stores = [s for s in walk(kernel.body) if isinstance(s, tir.Store) and s.buffer.name == "k_pool"]
        assert pool_stores and all("cos(" in str(s.value) for s in pool_stores)  # rope computed as it appends
    assert not any(k.startswith("rope") for k in fused)  # no rope kernel left
    weights = weight_arrays(config, make_tiny_weights(config, seed=0))
    ours = run_steps(config, weights, lambda fn, *a: interpret(fused, fn, *a))
    ref = run_steps(config, weights, lambda fn, *a: interpret(mod, fn, *a))
    assert_all_close(ours, ref)
