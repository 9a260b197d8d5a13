"""fuse_ops: calls of tensor programs grouped by the patterns read from their loops, each group
outlined as a `primitive` graph function; the module computes the same before and after."""

from llm_deploy.compiler.parser import parse
from llm_deploy.compiler.passes.fuse_ops import fuse_ops
from tests.compiler.passes.fusion_cases import module
from tests.compiler.passes.harness import check_pass

T6 = 'Tensor[(n, 6), "float32"]'
T8 = 'Tensor[(n, 8), "float32"]'
W = 'Tensor[(6, 8), "float32"]'


def test_matmul_and_residual_add():
    before = module(
        f"""
    @function
    def main(x: {T8}, w: {W}, r: {T6}) -> {T6}:
        with dataflow():
            lv: {T6} = call_tir(linear, (x, w), out_sinfo={T6})
            y: {T6} = call_tir(add, (lv, r), out_sinfo={T6})
            output(y)
        return y
""",
        "linear",
        "add",
    )
    expected = module(
        f"""
    @function
    def main(x: {T8}, w: {W}, r: {T6}) -> {T6}:
        with dataflow():
            y: {T6} = fused_linear_add(x, w, r)
            output(y)
        return y
""",
        "linear",
        "add",
        extra=f"""
    @function
    def fused_linear_add(p0: {T8}, p1: {W}, p2: {T6}) -> {T6}:
        attrs(primitive=True)
        with dataflow():
            lv0: {T6} = call_tir(linear, (p0, p1), out_sinfo={T6})
            gv: {T6} = call_tir(add, (lv0, p2), out_sinfo={T6})
            output(gv)
        return gv
""",
    )
    check_pass(fuse_ops, before, expected)


def test_swiglu_gate_matmul_silu_and_times_up():
    before = module(
        f"""
    @function
    def main(x: {T8}, wg: {W}, wu: {W}) -> {T6}:
        with dataflow():
            g0: {T6} = call_tir(linear, (x, wg), out_sinfo={T6})
            g: {T6} = call_tir(silu, (g0,), out_sinfo={T6})
            u: {T6} = call_tir(linear, (x, wu), out_sinfo={T6})
            m: {T6} = call_tir(multiply, (g, u), out_sinfo={T6})
            output(m)
        return m
""",
        "linear",
        "silu",
        "multiply",
    )
    expected = module(
        f"""
    @function
    def main(x: {T8}, wg: {W}, wu: {W}) -> {T6}:
        with dataflow():
            u: {T6} = call_tir(linear, (x, wu), out_sinfo={T6})
            m: {T6} = fused_linear_silu_multiply(x, wg, u)
            output(m)
        return m
""",
        "linear",
        "silu",
        "multiply",
        extra=f"""
    @function
    def fused_linear_silu_multiply(p0: {T8}, p1: {W}, p2: {T6}) -> {T6}:
        attrs(primitive=True)
        with dataflow():
            lv0: {T6} = call_tir(linear, (p0, p1), out_sinfo={T6})
            lv1: {T6} = call_tir(silu, (lv0,), out_sinfo={T6})
            gv: {T6} = call_tir(multiply, (lv1, p2), out_sinfo={T6})
            output(gv)
        return gv
""",
    )
    check_pass(fuse_ops, before, expected)


def test_rms_norm_and_scale():
    before = module(
        f"""
    @function
    def main(x: {T8}, w: Tensor[(8,), "float32"], s: Tensor[(8,), "float32"]) -> {T8}:
        with dataflow():
            h: {T8} = call_tir(rms_norm, (x, w), out_sinfo={T8})
            y: {T8} = call_tir(scale, (h, s), out_sinfo={T8})
            output(y)
        return y
""",
        "rms_norm",
        "scale",
    )
    after = check_pass(fuse_ops, before, None)
    assert [f for f in after if f.startswith("fused")] == ["fused_rms_norm_scale"]


def test_data_movement_into_a_matmul_and_a_gather_into_an_elementwise_op():
    before = module(
        f"""
    @function
    def main(xt: Tensor[(8, n), "float32"], w: {W}, table: Tensor[(10, 8), "float32"], ids: Tensor[(n,), "int32"]) -> Tuple[{T6}, {T8}]:
        with dataflow():
            t: {T8} = call_tir(permute_dims, (xt,), out_sinfo={T8})
            y: {T6} = call_tir(linear, (t, w), out_sinfo={T6})
            e: {T8} = call_tir(take, (table, ids), out_sinfo={T8})
            z: {T8} = call_tir(exp, (e,), out_sinfo={T8})
            output(y, z)
        return (y, z)
""",
        "permute_dims",
        "linear",
        "take",
        "exp",
    )
    expected = module(
        f"""
    @function
    def main(xt: Tensor[(8, n), "float32"], w: {W}, table: Tensor[(10, 8), "float32"], ids: Tensor[(n,), "int32"]) -> Tuple[{T6}, {T8}]:
        with dataflow():
            y: {T6} = fused_permute_dims_linear(xt, w)
            z: {T8} = fused_take_exp(table, ids)
            output(y, z)
        return (y, z)
""",
        "permute_dims",
        "linear",
        "take",
        "exp",
        extra=f"""
    @function
    def fused_permute_dims_linear(p0: Tensor[(8, n), "float32"], p1: {W}) -> {T6}:
        attrs(primitive=True)
        with dataflow():
            lv0: {T8} = call_tir(permute_dims, (p0,), out_sinfo={T8})
            gv: {T6} = call_tir(linear, (lv0, p1), out_sinfo={T6})
            output(gv)
        return gv

    @function
    def fused_take_exp(p0: Tensor[(10, 8), "float32"], p1: Tensor[(n,), "int32"]) -> {T8}:
        attrs(primitive=True)
        with dataflow():
            lv0: {T8} = call_tir(take, (p0, p1), out_sinfo={T8})
            gv: {T8} = call_tir(exp, (lv0,), out_sinfo={T8})
            output(gv)
        return gv
""",
    )
    check_pass(fuse_ops, before, expected)


def test_an_elementwise_chain_is_one_group():
    before = module(
        f"""
    @function
    def main(x: {T8}, y: {T8}) -> {T8}:
        with dataflow():
            a: {T8} = call_tir(exp, (x,), out_sinfo={T8})
            b: {T8} = call_tir(add8, (a, y), out_sinfo={T8})
            c: {T8} = call_tir(negative, (b,), out_sinfo={T8})
            output(c)
        return c
""",
        "exp",
        "add8",
        "negative",
    )
    after = check_pass(fuse_ops, before, None)
    (group,) = [f for f in after if f.startswith("fused")]
    assert group == "fused_exp_add_negative"  # trailing digits of program names dropped
    assert len(after["main"].body.blocks[0].bindings) == 1


def test_shared_values_block_outputs_and_costly_recomputation_stay_apart():
    before = module(
        f"""
    @function
    def main(x: {T8}, w: {W}) -> Tuple[{T6}, {T8}, {T8}]:
        with dataflow():
            e: {T8} = call_tir(exp, (x,), out_sinfo={T8})
            y: {T6} = call_tir(linear, (e, w), out_sinfo={T6})
            a: {T8} = call_tir(add8, (x, x), out_sinfo={T8})
            b: {T8} = call_tir(negative, (a,), out_sinfo={T8})
            c: {T8} = call_tir(exp, (a,), out_sinfo={T8})
            o: {T8} = call_tir(negative, (x,), out_sinfo={T8})
            output(o, y, b)
        d: {T8} = call_tir(exp, (o,), out_sinfo={T8})
        return (y, b, d)
""",
        "exp",
        "linear",
        "add8",
        "negative",
    )
    check_pass(fuse_ops, before, before)


def test_a_symbolic_var_only_a_shape_argument_carries_becomes_a_shape_parameter():
    before = module(
        f"""
    @function
    def main(x: {T8}, z: Tensor[(m,), "float32"]) -> {T8}:
        with dataflow():
            a: {T8} = call_tir(shift, (x,), shape(m), out_sinfo={T8})
            b: {T8} = call_tir(exp, (a,), out_sinfo={T8})
            output(b)
        return b
""",
        "shift",
        "exp",
    )
    expected = module(
        f"""
    @function
    def main(x: {T8}, z: Tensor[(m,), "float32"]) -> {T8}:
        with dataflow():
            b: {T8} = fused_shift_exp(x, shape(m))
            output(b)
        return b
""",
        "shift",
        "exp",
        extra=f"""
    @function
    def fused_shift_exp(p0: {T8}, s: Shape[(m,)]) -> {T8}:
        attrs(primitive=True)
        with dataflow():
            lv0: {T8} = call_tir(shift, (p0,), shape(m), out_sinfo={T8})
            gv: {T8} = call_tir(exp, (lv0,), out_sinfo={T8})
            output(gv)
        return gv
""",
    )
    check_pass(fuse_ops, before, expected)


def test_equal_groups_share_one_function():
    before = module(
        f"""
    @function
    def main(x: {T8}, w: {W}, r: {T6}) -> Tuple[{T6}, {T6}]:
        with dataflow():
            lv: {T6} = call_tir(linear, (x, w), out_sinfo={T6})
            y: {T6} = call_tir(add, (lv, r), out_sinfo={T6})
            lv2: {T6} = call_tir(linear, (x, w), out_sinfo={T6})
            y2: {T6} = call_tir(add, (lv2, r), out_sinfo={T6})
            output(y, y2)
        return (y, y2)
""",
        "linear",
        "add",
    )
    after = check_pass(fuse_ops, before, None)
    assert [f for f in after if f.startswith("fused")] == ["fused_linear_add"]
    assert str(after["main"]).count("fused_linear_add(") == 2
    assert parse(str(after)) == after
