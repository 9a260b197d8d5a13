"""BlockBuilder: normalization, naming, dataflow rules, match_cast, If, cross-function calls, errors."""

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.builder import BlockBuilder, BuildError
from llm_deploy.compiler.expr import (
    BindingBlock,
    Call,
    Constant,
    DataflowBlock,
    DataflowVar,
    Function,
    GlobalVar,
    If,
    MatchCast,
    SeqExpr,
    Tuple,
    Var,
    VarBinding,
    is_leaf,
)
from llm_deploy.compiler.ops import ShapeError
from llm_deploy.compiler.struct_info import ObjectInfo, TensorInfo, TupleInfo, tensor
from llm_deploy.compiler.wellformed import check

n, m, k = S.var("n"), S.var("m"), S.var("k")


def bindings(func: Function) -> list:
    return [b for block in func.body.blocks for b in block.bindings]


def single_function(build, params, name="main", **kwargs) -> Function:
    """Build one function whose body is `build(bb, *params)`; check the module too."""
    bb = BlockBuilder()
    with bb.function(name, params, **kwargs):
        bb.emit_func_output(build(bb, *params))
    mod = bb.get()
    check(mod)
    return mod[name]


# -- normalization and naming


def test_nested_calls_get_their_own_bindings_in_evaluation_order():
    x = Var("x", tensor((n, 4)))

    def build(bb, x):
        return bb.emit(ops.add(ops.exp(x), ops.negative(x)), "y")

    func = single_function(build, [x])
    bs = bindings(func)
    assert [type(b.value.op).__name__ for b in bs] == ["Op", "Op", "Op"]
    assert [b.value.op.name for b in bs] == ["exp", "negative", "add"]
    # Every call argument is a leaf, and the outer call reads the inner bindings' vars.
    assert all(is_leaf(a) for b in bs for a in b.value.args)
    assert bs[2].value.args == (bs[0].var, bs[1].var)
    assert func.body.body == bs[2].var and bs[2].var.name == "y"
    assert bs[2].var.info == tensor((n, 4))


def test_tuple_operands_are_normalized_field_by_field():
    x = Var("x", tensor((n, 4)))

    def build(bb, x):
        return bb.emit(Tuple((ops.exp(x), x)), "t")

    func = single_function(build, [x])
    bs = bindings(func)
    assert len(bs) == 2 and isinstance(bs[1].value, Tuple)
    assert bs[1].value.fields == (bs[0].var, x)
    assert bs[1].var.info == TupleInfo((tensor((n, 4)), tensor((n, 4))))


def test_names_are_unique_within_a_function_and_avoid_parameters():
    x = Var("x", tensor((4,)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        a = bb.emit(ops.exp(x), "y")
        b = bb.emit(ops.exp(a), "y")
        c = bb.emit(ops.exp(b), "x")
        d = bb.emit(ops.exp(c))
        e = bb.emit(ops.exp(d))
        bb.emit_func_output(e)
    assert [v.name for v in (a, b, c, d, e)] == ["y", "y1", "x1", "lv", "lv1"]
    check(bb.get())


def test_fresh_names_skip_names_taken_through_other_hints():
    x = Var("x", tensor((4,)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        taken = [bb.emit(ops.exp(x), hint) for hint in ("v2", "v", "v", "v", "v1")]
        bb.emit_func_output(taken[-1])
    assert [v.name for v in taken] == ["v2", "v", "v1", "v3", "v11"]


def test_functions_are_named_uniquely_in_the_module_and_identical_ones_shared():
    x = Var("x", tensor((4,)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(ops.exp(x)))
    func = bb.get()["main"]
    other = Function(func.params, SeqExpr((), x), func.ret_info)
    assert bb.add_func(func, "main") == GlobalVar("main")
    assert bb.add_func(other, "main") == GlobalVar("main1")
    assert set(bb.get()) == {"main", "main1"}


def test_duplicate_parameter_names_are_rejected():
    x = Var("x", tensor((4,)))
    bb = BlockBuilder()
    with pytest.raises(BuildError, match="'x' is used twice"):
        with bb.function("main", [x, x]):
            pass


# -- dataflow blocks


def test_dataflow_vars_stay_inside_and_outputs_escape():
    x = Var("x", tensor((n, 4)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(ops.exp(x))
            out = bb.emit_output(ops.negative(a), "out")
        after = bb.emit(ops.sigmoid(out), "after")
        bb.emit_func_output(after)
    func = bb.get()["main"]
    assert type(a) is DataflowVar and type(out) is Var and type(after) is Var
    df, plain = func.body.blocks
    assert type(df) is DataflowBlock and [b.var for b in df.bindings] == [a, out]
    assert type(plain) is BindingBlock and [b.var for b in plain.bindings] == [after]
    check(bb.get())


def test_dataflow_misuse_is_a_build_error():
    x = Var("x", tensor((4,)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with pytest.raises(BuildError, match="emit_output is only meaningful inside a dataflow block"):
            bb.emit_output(ops.exp(x))
        with bb.dataflow():
            with pytest.raises(BuildError, match="do not nest"):
                with bb.dataflow():
                    pass
            with pytest.raises(BuildError, match="close the dataflow block"):
                bb.emit_func_output(x)
            with pytest.raises(BuildError, match="If cannot appear inside a dataflow block"):
                bb.if_(Var("x", tensor((4,))), lambda bb: x, lambda bb: x)
            v = bb.emit_output(ops.exp(x))
        bb.emit_func_output(v)


def test_returning_a_dataflow_var_is_a_build_error():
    x = Var("x", tensor((4,)))
    bb = BlockBuilder()
    with pytest.raises(BuildError, match="dataflow var lv"):
        with bb.function("main", [x]):
            with bb.dataflow():
                local = bb.emit(ops.exp(x))
            bb.emit_func_output(local)


def test_emitting_outside_a_function_is_a_build_error():
    with pytest.raises(BuildError, match="outside of a function"):
        BlockBuilder().emit(ops.exp(Var("x", tensor((4,)))))


# -- match_cast


def test_match_cast_binds_new_symbolic_vars_that_later_deduction_uses():
    x = Var("x", tensor(ndim=2))
    y = Var("y", tensor(ndim=2))

    def build(bb, x, y):
        with bb.dataflow():
            xm = bb.match_cast(x, tensor((m, 4)), "xm")
            ym = bb.match_cast(y, tensor((m, 4)), "ym")
            unknown = bb.emit(ops.add(xm, y), "unknown")
            known = bb.emit_output(ops.add(xm, ym), "known")
        assert unknown.info == tensor(ndim=2)  # y alone only knows its rank
        return known

    func = single_function(build, [x, y])
    casts = [b for b in bindings(func) if isinstance(b, MatchCast)]
    assert [(b.var.name, b.info) for b in casts] == [("xm", tensor((m, 4))), ("ym", tensor((m, 4)))]
    assert bindings(func)[-1].var.info == tensor((m, 4))
    # m is not a parameter's symbol: the signature forgets it.
    assert func.ret_info == tensor(ndim=2)


def test_match_cast_dims_feed_conflict_detection():
    x = Var("x", tensor(ndim=2))
    z = Var("z", tensor((n, 5)))
    bb = BlockBuilder()
    with bb.function("main", [x, z]):
        xm = bb.match_cast(x, tensor((n, 4)))
        with pytest.raises(ShapeError, match="cannot broadcast"):
            bb.emit(ops.add(xm, z), "clash")
        bb.emit_func_output(xm)


def test_match_cast_with_derived_dims_keeps_the_expression():
    x = Var("x", tensor((n, 4)))
    y = Var("y", tensor(ndim=2))

    def build(bb, x, y):
        ym = bb.match_cast(y, tensor((2 * n, 4)))
        return bb.emit(ops.multiply(ym, ym))

    func = single_function(build, [x, y])
    assert func.ret_info == tensor((2 * n, 4))


def test_match_cast_that_can_never_match_is_a_build_error():
    x = Var("x", tensor((n, 4)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with pytest.raises(BuildError, match="match_cast bad"):
            bb.match_cast(x, tensor((n, 4, 1)), "bad")
        with pytest.raises(BuildError, match="match_cast bad2"):
            bb.match_cast(x, tensor((n, 4), "int32"), "bad2")
        bb.emit_func_output(x)


# -- If


def test_if_erases_branch_local_symbolic_vars():
    x = Var("x", tensor((n, 4)))
    y = Var("y", tensor(ndim=2))
    cond = Var("cond", tensor((), "bool"))

    def build(bb, x, y, cond):
        def then(bb):
            ym = bb.match_cast(y, tensor((k, 4)), "ym")
            return bb.emit(ops.exp(ym), "local")

        def else_(bb):
            return bb.emit(ops.exp(y))

        r = bb.if_(cond, then, else_, "r")
        same = bb.if_(cond, lambda bb: bb.emit(ops.exp(x)), lambda bb: x, "same")
        return Tuple((r, same))

    func = single_function(build, [x, y, cond])
    r_binding, same_binding = bindings(func)
    assert isinstance(r_binding.value, If)
    then_branch = r_binding.value.then_branch
    assert then_branch.body.info == tensor((k, 4))  # inside the branch, k is known
    assert r_binding.var.info == tensor(ndim=2)  # outside it, k has left its scope
    assert same_binding.var.info == tensor((n, 4))  # parameters' symbols survive the join


def test_if_condition_may_be_an_emitted_call():
    x = Var("x", tensor((), "int32"))

    def build(bb, x):
        cond = ops.greater(x, Constant(np.array(0, "int32")))
        return bb.if_(cond, lambda bb: bb.emit(ops.negative(x)), lambda bb: x)

    func = single_function(build, [x])
    first, second = bindings(func)
    assert first.value.op.name == "greater" and second.value.cond == first.var
    assert second.var.info == tensor((), "int32")


# -- calls to other graph functions


def test_calls_to_graph_functions_substitute_the_callees_symbolic_vars():
    a = Var("a", tensor((n, 4)))
    b = Var("b", tensor((k,), "int32"))
    x = Var("x", tensor((m, 4)))
    y = Var("y", tensor((3,), "int32"))
    bb = BlockBuilder()
    with bb.function("callee", [a, b]):
        bb.emit_func_output([bb.emit(ops.exp(a)), b])
    with bb.function("main", [x, y]):
        doubled = bb.match_cast(bb.emit(ops.add(x, x)), tensor((2 * m, 4)), "doubled")
        out = bb.emit(Call(GlobalVar("callee"), (doubled, y)), "out")
        bb.emit_func_output(out)
    assert bb.get()["callee"].ret_info == TupleInfo((tensor((n, 4)), tensor((k,), "int32")))
    assert out.info == TupleInfo((tensor((2 * m, 4)), tensor((3,), "int32")))
    check(bb.get())


def test_a_callee_symbol_no_argument_pins_down_is_forgotten():
    # The caller has its own n; the callee's n is only known through the argument, here unknown.
    a = Var("a", tensor((n, 4)))
    x = Var("x", tensor((n, 4)))
    y = Var("y", tensor(ndim=2))
    bb = BlockBuilder()
    with bb.function("callee", [a]):
        bb.emit_func_output(bb.emit(ops.exp(a)))
    with bb.function("main", [x, y]):
        out = bb.emit(Call(GlobalVar("callee"), (y,)))
        bb.emit_func_output(out)
    assert out.info == tensor(ndim=2)
    check(bb.get())


def test_calls_of_local_functions_substitute_their_symbolic_vars():
    w = S.var("w")
    z = Var("z", tensor((w, 4)))
    local = Function((z,), SeqExpr((), z), tensor((w, 4)))
    x = Var("x", tensor((n, 4)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        f = bb.emit(local, "f")
        out = bb.emit(Call(f, (x,)), "out")
        bb.emit_func_output(out)
    assert f.info == local.info and out.info == tensor((n, 4))
    check(bb.get())


def test_bad_calls_to_graph_functions_are_shape_errors_naming_the_binding():
    a = Var("a", tensor((n, 4)))
    bb = BlockBuilder()
    with bb.function("callee", [a]):
        bb.emit_func_output(a)
    with bb.function("main", [a]):
        with pytest.raises(ShapeError, match=r"takes 1 argument\(s\), got 2\n  in binding wrong"):
            bb.emit(Call(GlobalVar("callee"), (a, a)), "wrong")
        with pytest.raises(ShapeError, match="unknown function 'nowhere'"):
            bb.emit(Call(GlobalVar("nowhere"), (a,)), "missing")
        bb.emit_func_output(a)


# -- errors at build time


def test_conflicting_shapes_raise_a_shape_error_naming_the_binding():
    x = Var("x", tensor((n, 4)))
    z = Var("z", tensor((n, 5)))
    bb = BlockBuilder()
    with bb.function("main", [x, z]):
        with pytest.raises(ShapeError, match=r"add: cannot broadcast .*4 vs 5\)\n  in binding bad ="):
            bb.emit(ops.add(x, z), "bad")
        with pytest.raises(ShapeError, match="operand dtypes differ"):
            bb.emit(ops.add(x, Var("i", tensor((n, 4), "int32"))), "mixed")
        bb.emit_func_output(x)


def test_impure_call_inside_dataflow_is_a_build_error_naming_the_binding():
    x = Var("x", tensor((4,)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            with pytest.raises(BuildError, match=r"binding printed: impure call .*inside a dataflow block"):
                bb.emit(ops.call_extern("print", [x], ObjectInfo()), "printed")
            v = bb.emit_output(ops.exp(x))
        bb.emit_func_output(v)


def test_impure_calls_make_the_function_impure_unless_declared_pure():
    x = Var("x", tensor((4,)))
    bb = BlockBuilder()
    with bb.function("log", [x]):
        bb.emit(ops.call_extern("print", [x], ObjectInfo()), "printed")
        bb.emit_func_output(x)
    assert bb.get()["log"].pure is False
    check(bb.get())

    with pytest.raises(BuildError, match="declared pure but contains impure calls"):
        with bb.function("strict", [x], pure=True):
            bb.emit(ops.call_extern("print", [x], ObjectInfo()))
            bb.emit_func_output(x)

    # A pure extern may live in a dataflow block; calling an impure graph function may not.
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(ops.call_extern("cblas_copy", [x], tensor((4,)), pure=True))
            with pytest.raises(BuildError, match="binding lv1: impure call"):
                bb.emit(Call(GlobalVar("log"), (y,)))
            out = bb.emit_output(ops.exp(y))
        bb.emit_func_output(out)
    assert bb.get()["main"].pure is True
    assert bindings(bb.get()["main"])[0].var.info == tensor((4,))
    check(bb.get())


def test_builder_module_mixes_levels_and_stays_well_formed():
    from llm_deploy.compiler import tir as T

    i, j = S.var("i"), S.var("j")
    A, B, C = (T.Buffer(name, (n, 4)) for name in "ABC")
    add = T.PrimFunc(
        (A, B, C),
        T.For(i, n, T.For(j, 4, T.Store(C, (i, j), A[i, j] + B[i, j]), "vectorized"), "parallel"),
    )
    x = Var("x", tensor((n, 4)))
    bb = BlockBuilder()
    gv = bb.add_func(add, "add")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(ops.call_tir(gv, [x, x], tensor((n, 4))))
            out = bb.emit_output(ops.silu(y))
        bb.emit_func_output(out)
    mod = bb.get()
    check(mod)
    assert isinstance(bindings(mod["main"])[0], VarBinding)
    assert y.info == TensorInfo((n, 4), "float32")
