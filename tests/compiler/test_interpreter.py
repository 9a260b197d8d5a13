"""The numpy interpreter: symbolic binding, run-time match_cast, control flow, calls, the op table."""

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import (
    Call,
    DataflowBlock,
    Function,
    GetItem,
    GlobalVar,
    SeqExpr,
    ShapeExpr,
    Tuple,
    Var,
    VarBinding,
)
from llm_deploy.compiler.interpreter import (
    IMPLS,
    InterpreterError,
    MatchCastError,
    ShapeTuple,
    StructInfoMismatch,
    SymbolBindingError,
    run,
)
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops.elementwise import BINARY, COMPARE, UNARY
from llm_deploy.compiler.struct_info import PrimInfo, ShapeInfo, TensorInfo, TupleInfo, tensor

n, m = S.var("n"), S.var("m")


def build(params, body, name="f", **kw):
    """A one-function module: body(bb, *params) emits bindings and returns the output."""
    bb = BlockBuilder()
    with bb.function(name, params, **kw):
        out = body(bb, *params)
        bb.emit_func_output(out)
    return bb.get()


# -- the elementwise table against numpy

NP_BINARY = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": np.divide,
    "power": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
}
NP_UNARY = {
    "negative": np.negative,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "abs": np.abs,
    "cos": np.cos,
    "sin": np.sin,
}


def test_every_op_has_an_implementation():
    from llm_deploy.compiler.ops import OPS

    missing = sorted(set(OPS) - set(IMPLS) - {"call_tir", "call_extern", "call_extern_pure"})
    assert missing == []


@pytest.mark.parametrize("name", BINARY + COMPARE)
@pytest.mark.parametrize("symbolic", [False, True])
def test_binary_ops(run_op, rng, name, symbolic):
    a = rng.uniform(0.5, 2, (3, 4)).astype("float32")
    b = rng.uniform(0.5, 2, (4,)).astype("float32")
    got = run_op(getattr(ops, name), a, b, symbolic=symbolic)
    want = NP_BINARY[name](a, b)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_integer_divide_floors(run_op):
    a, b = np.array([7, -7, 6], "int32"), np.array([2, 2, 3], "int32")
    got = run_op(ops.divide, a, b)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [3, -4, 2])


@pytest.mark.parametrize("name", UNARY)
def test_unary_ops(run_op, rng, name):
    a = rng.uniform(0.1, 3, (2, 5)).astype("float32") * np.array([1, -1, 1, -1, 1], "float32")
    if name in ("log", "sqrt", "rsqrt"):
        a = np.abs(a)
    got = run_op(getattr(ops, name), a)
    assert got.dtype == np.float32
    # gelu is the exact (erf) form; the tanh form is within 1e-3 of it.
    np.testing.assert_allclose(got, NP_UNARY[name](a), rtol=1e-5, atol=1e-3 if name == "gelu" else 1e-6)


def test_where_and_astype(run_op, rng):
    c = rng.uniform(size=(3, 1)) > 0.5
    a, b = rng.standard_normal((2, 3, 4)).astype("float32")
    np.testing.assert_array_equal(run_op(ops.where, c, a, b), np.where(c, a, b))
    got = run_op(lambda x: ops.astype(x, "int32"), a * 10)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, (a * 10).astype("int32"))


# -- symbolic binding from the arguments


def add_module():
    x, y = Var("x", tensor((n, 4))), Var("y", tensor((n,)))
    return build([x, y], lambda bb, x, y: bb.emit(ops.add(x, ops.reshape(y, (n, 1)))))


def test_symbolic_vars_bind_from_argument_shapes():
    x, y = np.ones((5, 4), "float32"), np.arange(5, dtype="float32")
    np.testing.assert_array_equal(run(add_module(), "f", x, y), x + y[:, None])


def test_inconsistent_symbolic_var_names_it_and_both_values():
    with pytest.raises(
        SymbolBindingError,
        match=r"parameter y: symbolic var n is 7 at dim 0, but n = 5 from f: parameter x \(dim 0\)",
    ):
        run(add_module(), "f", np.ones((5, 4), "float32"), np.ones(7, "float32"))


def test_compound_param_dims_are_checked_after_all_vars_bind():
    x, y = Var("x", tensor((2 * n,))), Var("y", tensor((n,)))
    mod = build([x, y], lambda bb, x, y: bb.emit(ops.add(ops.reshape(x, (n, 2)), ops.reshape(y, (n, 1)))))
    out = run(mod, "f", np.ones(6, "float32"), np.ones(3, "float32"))
    assert out.shape == (3, 2)
    with pytest.raises(
        StructInfoMismatch,
        match=r"parameter x: expected Tensor\(\(2 \* n,\), float32\), got tensor \(7,\) float32: dim 0 is 7, expected 2 \* n = 6",
    ):
        run(mod, "f", np.ones(7, "float32"), np.ones(3, "float32"))


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.ones((5, 4), "float16"), np.ones(5, "float32")), "dtype float16, expected float32"),
        ((np.ones((5, 4, 1), "float32"), np.ones(5, "float32")), "rank 3, expected 2"),
        ((np.ones((5, 3), "float32"), np.ones(5, "float32")), "dim 1 is 3, expected 4"),
    ],
)
def test_parameter_mismatches(args, message):
    with pytest.raises(StructInfoMismatch, match=message):
        run(add_module(), "f", *args)


def test_argument_count():
    with pytest.raises(InterpreterError, match="f takes 2 argument"):
        run(add_module(), "f", np.ones((5, 4), "float32"))


# -- match_cast


def cast_module():
    """f(x: Tensor(ndim=2)) = y = match_cast(x, (m, 4)); z = reshape(y, (4, m)): m is new at the cast."""
    x = Var("x", TensorInfo(None, "float32", 2))

    def body(bb, x):
        y = bb.match_cast(x, tensor((m, 4)), "y")
        z = bb.emit(ops.permute_dims(y), "z")
        return bb.emit(ops.concat([z, ops.zeros((4, m))], axis=1), "w")

    return build([x], body)


def test_match_cast_binds_a_new_var_for_later_deduction_and_execution():
    mod = cast_module()
    w = mod["f"].body.blocks[0].bindings[-1].var
    assert w.info == tensor((4, 2 * m))  # deduced from m, bound by the match_cast
    x = np.arange(12, dtype="float32").reshape(3, 4)
    np.testing.assert_array_equal(run(mod, "f", x), np.concatenate([x.T, np.zeros((4, 3), "float32")], 1))


def test_match_cast_failure_names_the_var_the_expected_and_the_actual_shape():
    with pytest.raises(
        MatchCastError,
        match=r"f: match_cast y: expected Tensor\(\(m, 4\), float32\), got tensor \(3, 5\) float32: dim 1 is 5, expected 4",
    ):
        run(cast_module(), "f", np.ones((3, 5), "float32"))


def test_match_cast_against_an_already_bound_var():
    x, y = Var("x", tensor((n, 4))), Var("y", TensorInfo(None, "float32", 1))

    def body(bb, x, y):
        y2 = bb.match_cast(y, tensor((n,)), "y2")
        return bb.emit(ops.add(x, ops.reshape(y2, (n, 1))))

    mod = build([x, y], body)
    assert run(mod, "f", np.ones((3, 4), "float32"), np.ones(3, "float32")).shape == (3, 4)
    with pytest.raises(
        MatchCastError, match=r"match_cast y2: symbolic var n is 5 at dim 0, but n = 3 from f: parameter x"
    ):
        run(mod, "f", np.ones((3, 4), "float32"), np.ones(5, "float32"))


def test_match_cast_of_a_shape_value():
    s = Var("s", ShapeInfo())

    def body(bb, s):
        s2 = bb.match_cast(s, ShapeInfo((n, m)), "s2")
        return bb.emit(ops.zeros(s2))

    mod = build([s], body)
    assert run(mod, "f", (2, 3)).shape == (2, 3)
    with pytest.raises(MatchCastError, match="3 values, expected 2"):
        run(mod, "f", (2, 3, 4))


# -- deduction is checked at run time


def test_a_wrong_deduced_info_is_caught():
    x = Var("x", tensor((n, 4)))
    wrong = Var("y", tensor((n, 5)))
    func = Function(
        (x,), SeqExpr((DataflowBlock((VarBinding(wrong, ops.add(x, x)),)),), wrong), tensor((n, 5))
    )
    mod = IRModule({"f": func})
    with pytest.raises(
        StructInfoMismatch, match=r"binding y \(its deduced struct info\): .*dim 1 is 4, expected 5"
    ):
        run(mod, "f", np.ones((2, 4), "float32"))
    # The check is what catches it: without it the value flows on.
    assert run(mod, "f", np.ones((2, 4), "float32"), check_info=False).shape == (2, 4)


def test_numpy_errors_name_the_binding():
    table, ids = Var("table", tensor((10, 4))), Var("ids", tensor((n,), "int32"))
    mod = build([table, ids], lambda bb, t, i: bb.emit(ops.take(t, i), "rows"))
    with pytest.raises(InterpreterError, match="f: binding rows: .*out of bounds"):
        run(mod, "f", np.ones((10, 4), "float32"), np.array([3, 12], "int32"))


def test_an_op_without_implementation(monkeypatch):
    monkeypatch.delitem(IMPLS, "add")
    with pytest.raises(InterpreterError, match="no numpy implementation of op 'add'"):
        run(add_module(), "f", np.ones((5, 4), "float32"), np.ones(5, "float32"))


# -- values other than tensors, control flow, calls


def test_shape_and_prim_values():
    x, s, k = Var("x", tensor((n,))), Var("s", ShapeInfo(ndim=2)), Var("k", PrimInfo("int64", m))

    def body(bb, x, s, k):
        r = bb.emit(ops.reshape(x, s), "r")  # a shape from a parameter
        a = bb.emit(ops.arange(k, m + n, dtype="float32"), "a")  # symbolic PrimValues
        return Tuple((r, a, ShapeExpr((n * m, 2))))

    mod = build([x, s, k], body)
    r, a, shape = run(mod, "f", np.arange(6, dtype="float32"), [2, 3], 4)
    np.testing.assert_array_equal(r, np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(a, np.arange(4, 10))
    assert isinstance(shape, ShapeTuple) and shape == (24, 2)


def test_tuples_and_get_item():
    t = Var("t", TupleInfo((tensor((n, 2)), tensor((n,)))))

    def body(bb, t):
        a = bb.emit(GetItem(t, 0), "a")
        b = bb.emit(GetItem(t, 1), "b")
        return Tuple((bb.emit(ops.sum(a, 1)), b))

    mod = build([t], body)
    s, b = run(mod, "f", (np.ones((3, 2), "float32"), np.arange(3, dtype="float32")))
    np.testing.assert_array_equal(s, [2, 2, 2])
    np.testing.assert_array_equal(b, [0, 1, 2])


def test_if_runs_the_branch_the_condition_picks():
    c, x = Var("c", tensor((), "bool")), Var("x", tensor((n,)))

    def body(bb, c, x):
        return bb.if_(c, lambda bb: bb.emit(ops.multiply(x, x)), lambda bb: bb.emit(ops.negative(x)), "r")

    mod = build([c, x], body)
    x = np.arange(3, dtype="float32")
    np.testing.assert_array_equal(run(mod, "f", np.array(True), x), x * x)
    np.testing.assert_array_equal(run(mod, "f", np.array(False), x), -x)


def test_calls_between_graph_functions_map_symbolic_vars():
    bb = BlockBuilder()
    a = Var("a", tensor((m, 4)))
    with bb.function("double_rows", [a]):
        out = bb.emit(ops.concat([a, a], 0))
        bb.emit_func_output(out)
    x = Var("x", tensor((n, 4)))
    with bb.function("main", [x]):
        y = bb.emit(Call(GlobalVar("double_rows"), (x,)), "y")
        z = bb.emit(Call(GlobalVar("double_rows"), (y,)), "z")
        bb.emit_func_output(z)
    assert z.info == tensor((4 * n, 4))
    x = np.arange(8, dtype="float32").reshape(2, 4)
    np.testing.assert_array_equal(run(bb.get(), "main", x), np.concatenate([x] * 4))


def test_context_impls_see_the_call_and_the_symbolic_bindings(monkeypatch):
    """The hook call_tir / call_extern use: an impl registered with context=True."""
    from llm_deploy.compiler.interpreter import Impl

    seen = {}

    def fake_library(ctx, name, args):
        seen["name"], seen["symbols"] = name.name, dict(ctx.symbols)
        out = np.empty(ctx.shape_of(ctx.call.sinfo_args[0]), "float32")
        out[...] = args[0].sum()
        return out

    monkeypatch.setitem(IMPLS, "call_extern_pure", Impl(fake_library, context=True))
    x = Var("x", tensor((n, 4)))
    mod = build([x], lambda bb, x: bb.emit(ops.call_extern("lib.total", [x], tensor((n + 1,)), pure=True)))
    out = run(mod, "f", np.ones((3, 4), "float32"))
    np.testing.assert_array_equal(out, np.full(4, 12.0, "float32"))
    assert seen == {"name": "lib.total", "symbols": {"n": 3}}
