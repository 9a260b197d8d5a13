"""The tir interpreter: every node's semantics against numpy, both execution paths, errors."""

import numpy as np
import pytest

from llm_deploy.compiler import tir
from llm_deploy.compiler.shape import var
from llm_deploy.compiler.tir import (
    Allocate,
    Barrier,
    Buffer,
    For,
    IfThenElse,
    Imm,
    Let,
    PrimFunc,
    Store,
    binary,
    cast,
    intrin,
    select,
    seq,
)
from llm_deploy.compiler.tir_interpreter import TIRRuntimeError, prim_func_source, run

n, m = var("n"), var("m")
i, j, k = var("i"), var("j"), var("k")
rng = np.random.default_rng(0)

BOTH = pytest.mark.parametrize("vectorize", [True, False], ids=["vector", "scalar"])


def elementwise(op, dtype_a, dtype_b, out_dtype):
    A, B, C = Buffer("A", (n,), dtype_a), Buffer("B", (n,), dtype_b), Buffer("C", (n,), out_dtype)
    return PrimFunc((A, B, C), For(i, n, Store(C, (i,), binary(op, A[i], B[i]))))


def _trunc_div(a, b):
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q).astype(a.dtype)


# op -> (numpy reference, dtype, output dtype)
BINARY_CASES = {
    "add": (np.add, "float32", None),
    "sub": (np.subtract, "float32", None),
    "mul": (np.multiply, "float32", None),
    "div": (np.true_divide, "float32", None),
    "min": (np.minimum, "float32", None),
    "max": (np.maximum, "float32", None),
    "pow": (np.power, "float32", None),
    "lt": (np.less, "float32", "bool"),
    "le": (np.less_equal, "float32", "bool"),
    "eq": (np.equal, "int32", "bool"),
    "ne": (np.not_equal, "int32", "bool"),
    "gt": (np.greater, "float32", "bool"),
    "ge": (np.greater_equal, "float32", "bool"),
    "and": (np.logical_and, "bool", None),
    "or": (np.logical_or, "bool", None),
    "floordiv": (np.floor_divide, "int32", None),
    "floormod": (np.mod, "int32", None),
    "shl": (np.left_shift, "int32", None),
    "shr": (np.right_shift, "int32", None),
    "bitand": (np.bitwise_and, "int32", None),
    "bitor": (np.bitwise_or, "int32", None),
    "bitxor": (np.bitwise_xor, "int32", None),
}


def _operands(op, dtype, size):
    if dtype == "bool":
        return rng.random(size) < 0.5, rng.random(size) < 0.5
    if dtype == "int32":
        a = rng.integers(-50, 50, size).astype(dtype)
        b = rng.integers(1, 7, size).astype(dtype) * rng.choice([-1, 1], size).astype(dtype)
        if op in ("shl", "shr"):
            b = np.abs(b)
        if op == "eq":
            b[::2] = a[::2]
        return a, b
    a = rng.standard_normal(size).astype(dtype)
    b = rng.standard_normal(size).astype(dtype)
    if op == "pow":
        a = np.abs(a) + 0.5
    return a, b


@BOTH
@pytest.mark.parametrize("op", sorted(BINARY_CASES))
def test_binary_ops_match_numpy(op, vectorize):
    ref, dtype, out_dtype = BINARY_CASES[op]
    a, b = _operands(op, dtype, 9)
    out = np.empty(9, out_dtype or dtype)
    run(elementwise(op, dtype, dtype, out_dtype or dtype), a, b, out, vectorize=vectorize)
    np.testing.assert_allclose(out, ref(a, b), rtol=1e-6)


@BOTH
def test_integer_div_truncates_toward_zero(vectorize):
    a = np.array([7, -7, 7, -7, 0], "int32")
    b = np.array([2, 2, -2, -2, 3], "int32")
    out = np.empty(5, "int32")
    run(elementwise("div", "int32", "int32", "int32"), a, b, out, vectorize=vectorize)
    assert out.tolist() == [3, -3, -3, 3, 0] == _trunc_div(a, b).tolist()


INTRIN_CASES = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "abs": np.abs,
    "neg": np.negative,
    "floor": np.floor,
    "ceil": np.ceil,
    "cos": np.cos,
    "sin": np.sin,
    "erf": lambda x: np.vectorize(__import__("math").erf)(x),
    "round": np.round,
}


@BOTH
@pytest.mark.parametrize("name", sorted(INTRIN_CASES))
def test_intrinsics_keep_float32(name, vectorize):
    A, B = Buffer("A", (n, 3)), Buffer("B", (n, 3))
    func = PrimFunc((A, B), For(i, n, For(j, 3, Store(B, (i, j), intrin(name, A[i, j])))))
    a = (rng.random((4, 3)) * 3 + 0.1).astype("float32")
    a[0, :] = [0.5, 1.5, 2.5]  # round: half to even
    b = np.empty_like(a)
    run(func, a, b, vectorize=vectorize)
    np.testing.assert_allclose(b, INTRIN_CASES[name](a.astype("float64")), rtol=2e-6, atol=1e-7)


@BOTH
def test_not_cast_select_imm(vectorize):
    A = Buffer("A", (n,), "int32")
    B = Buffer("B", (n,), "bool")
    C = Buffer("C", (n,), "float32")
    is_odd = binary("eq", binary("floormod", A[i], 2), Imm(1, "int32"))
    body = For(
        i,
        n,
        seq(
            Store(B, (i,), intrin("not", is_odd)),
            Store(C, (i,), select(is_odd, cast("float32", A[i]) * 0.5, Imm(-1.0, "float32"))),
        ),
    )
    a = np.arange(-3, 4, dtype="int32")
    b, c = np.empty(7, bool), np.empty(7, "float32")
    run(PrimFunc((A, B, C), body), a, b, c, vectorize=vectorize)
    assert b.tolist() == (a % 2 == 0).tolist()
    np.testing.assert_array_equal(c, np.where(a % 2 == 1, a * 0.5, -1.0).astype("float32"))


def test_let_gathers_by_loaded_index_and_if_then_else():
    # Out[t, j] = W[ids[t], j] if ids[t] < 3 else 0 -- a let-bound row index, an if/else
    ids = Buffer("ids", (n,), "int32")
    W = Buffer("W", (m, 4))
    Out = Buffer("Out", (n, 4))
    row = var("row")
    body = For(
        i,
        n,
        For(
            j,
            4,
            Let(
                row,
                cast("int64", ids[i]),
                IfThenElse(
                    binary("lt", row, 3),
                    Store(Out, (i, j), W[row, j]),
                    Store(Out, (i, j), Imm(0.0, "float32")),
                ),
            ),
        ),
    )
    w = rng.standard_normal((5, 4)).astype("float32")
    idv = np.array([4, 0, 2, 3, 1], "int32")
    out = np.empty((5, 4), "float32")
    run(PrimFunc((ids, W, Out), body), idv, w, out)
    expected = np.where((idv < 3)[:, None], w[idv], 0)
    np.testing.assert_array_equal(out, expected)


@BOTH
def test_reduction_with_local_accumulator_allocate_barrier_and_loop_kinds(vectorize):
    # row sums of a (n, m) matrix; the loops' kinds (parallel, unrolled...) all run serially
    A, Out = Buffer("A", (n, m)), Buffer("Out", (n,))
    acc = Buffer("acc", (1,), "float32", "local")
    body = For(
        i,
        n,
        Allocate(
            acc,
            seq(
                Store(acc, (0,), Imm(0.0, "float32")),
                For(k, m, Store(acc, (0,), acc[0] + A[i, k]), kind="unrolled"),
                Barrier(),
                Store(Out, (i,), acc[0]),
            ),
        ),
        kind="parallel",
    )
    a = rng.standard_normal((3, 6)).astype("float32")
    out = np.empty(3, "float32")
    run(PrimFunc((A, Out), body), a, out, vectorize=vectorize)
    np.testing.assert_allclose(out, a.sum(axis=1), rtol=1e-5)


@BOTH
def test_thread_and_vectorized_loops_run_serially_with_symbolic_index_math(vectorize):
    # Out[i * m + j] = A[i, j]: a flattening copy; floordiv / floormod / min / max in indices
    A, Out, Mx = Buffer("A", (n, m)), Buffer("Out", (n * m,)), Buffer("Mx", (n, m), "int64")
    body = seq(
        For(i, n, For(j, m, Store(Out, (i * m + j,), A[i, j]), kind="vectorized"), "thread", "blockIdx.x"),
        For(i, n, For(j, m, Store(Mx, (i, j), (i * m + j) // 3 + (i * m + j) % 3))),
    )
    a = rng.standard_normal((2, 5)).astype("float32")
    out, mx = np.empty(10, "float32"), np.empty((2, 5), "int64")
    run(PrimFunc((A, Out, Mx), body), a, out, mx, vectorize=vectorize)
    np.testing.assert_array_equal(out, a.reshape(-1))
    flat = np.arange(10).reshape(2, 5)
    np.testing.assert_array_equal(mx, flat // 3 + flat % 3)


def test_scalar_params_come_after_buffers():
    # Out[i] = A[i + off]: `off` is not a dim of any buffer, so it is a scalar param
    off = var("off")
    A, Out = Buffer("A", (n,)), Buffer("Out", (m,))
    func = PrimFunc((A, Out, off), For(i, m, Store(Out, (i,), A[i + off])))
    a = np.arange(8, dtype="float32")
    out = np.empty(3, "float32")
    run(func, a, out, 4)
    assert out.tolist() == [4, 5, 6]


def test_vector_nest_is_used_and_gives_the_same_result():
    A, B = Buffer("A", (n, 4)), Buffer("B", (n, 4))
    func = PrimFunc((A, B), For(i, n, For(j, 4, Store(B, (i, j), intrin("exp", A[i, j]) * 2.0))))
    assert "np.arange" in prim_func_source(func) and "np.arange" not in prim_func_source(
        func, vectorize=False
    )
    a = rng.standard_normal((3, 4)).astype("float32")
    b1, b2 = np.empty_like(a), np.empty_like(a)
    run(func, a, b1)
    run(func, a, b2, vectorize=False)
    np.testing.assert_array_equal(b1, b2)


# -- errors name what was expected and found


def _copy_func():
    A, B = Buffer("A", (n, 4)), Buffer("B", (n, 4))
    return PrimFunc((A, B), For(i, n, For(j, 4, Store(B, (i, j), A[i, j]))))


@pytest.mark.parametrize(
    "args,message",
    [
        (
            (np.zeros((3, 4), "float32"), np.zeros((2, 4), "float32")),
            r"buffer B: expected shape \(3, 4\), got \(2, 4\)",
        ),
        (
            (np.zeros((3, 4), "float32"), np.zeros((3, 4), "float64")),
            "buffer B: expected dtype float32, got float64",
        ),
        ((np.zeros((3, 4), "float32"), np.zeros(4, "float32")), "buffer B: expected rank 2"),
        ((np.zeros((3, 4), "float32"),), r"takes 2 buffer\(s\) and 0 scalar\(s\), got 1"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(TIRRuntimeError, match=message):
        run(_copy_func(), *args)


@BOTH
def test_negative_index_is_an_error_not_a_wraparound(vectorize):
    A, B = Buffer("A", (n,)), Buffer("B", (n,))
    func = PrimFunc((A, B), For(i, n, Store(B, (i,), A[i - 1])))
    with pytest.raises(TIRRuntimeError, match="negative index -1 in A axis 0"):
        run(func, np.zeros(3, "float32"), np.zeros(3, "float32"), vectorize=vectorize)


@BOTH
def test_index_past_the_end_is_an_error(vectorize):
    A, B = Buffer("A", (n,)), Buffer("B", (n,))
    func = PrimFunc((A, B), For(i, n, Store(B, (i,), A[i + 1])))
    with pytest.raises(TIRRuntimeError, match="out of bounds"):
        run(func, np.zeros(3, "float32"), np.zeros(3, "float32"), vectorize=vectorize)


def test_undefined_symbolic_var_is_reported():
    A = Buffer("A", (n,))
    func = PrimFunc((A,), For(i, m, Store(A, (i,), Imm(0.0, "float32"))))
    with pytest.raises(TIRRuntimeError, match="symbolic var m is used but"):
        run(func, np.zeros(3, "float32"))


def test_select_evaluates_both_operands_like_compiled_code():
    # select(i < n - 1, A[i + 1], 0) reads A[n] on the last iteration: an error, as in compiled code
    A, B = Buffer("A", (n,)), Buffer("B", (n,))
    func = PrimFunc(
        (A, B), For(i, n, Store(B, (i,), select(binary("lt", i, n - 1), A[i + 1], Imm(0.0, "float32"))))
    )
    with pytest.raises(TIRRuntimeError):
        run(func, np.zeros(3, "float32"), np.zeros(3, "float32"), vectorize=False)


def test_allocated_float_buffers_start_nan_so_uninitialized_reads_show():
    A, Out = Buffer("A", (4,)), Buffer("Out", (4,))
    tmp = Buffer("tmp", (4,), "float32", "global")
    func = PrimFunc((A, Out), Allocate(tmp, For(i, 4, Store(Out, (i,), tmp[i] + A[i]))))
    out = np.zeros(4, "float32")
    run(func, np.ones(4, "float32"), out)
    assert np.isnan(out).all()


def test_dtype_of_mixed_operands_is_the_first_operands():
    # int32 + int64 index value: tir types the result int32 (dtype_of(a)); the interpreter agrees
    A, Out = Buffer("A", (n,), "int32"), Buffer("Out", (n,), "int32")
    value = binary("add", A[i], i)
    assert tir.dtype_of(value) == "int32"
    func = PrimFunc((A, Out), For(i, n, Store(Out, (i,), value)))
    out = np.empty(3, "int32")
    run(func, np.array([10, 20, 30], "int32"), out, vectorize=False)
    assert out.tolist() == [10, 21, 32]


@pytest.mark.parametrize("op,init", [("add", 0.0), ("mul", 1.0), ("max", -np.inf), ("min", np.inf)])
def test_fold_loops_run_as_numpy_with_the_serial_result_bit_for_bit(op, init):
    # acc = acc op A[i, k] over a symbolic extent folds in numpy, in loop order (not pairwise)
    A, Out = Buffer("A", (n, m)), Buffer("Out", (n,))
    acc = Buffer("acc", (1,), "float32", "local")
    body = For(
        i,
        n,
        Allocate(
            acc,
            seq(
                Store(acc, (0,), Imm(init, "float32")),
                For(k, m, Store(acc, (0,), binary(op, acc[0], A[i, k] * 1.01))),
                Store(Out, (i,), acc[0]),
            ),
        ),
    )
    func = PrimFunc((A, Out), body)
    assert "_fold(" in prim_func_source(func) and "_fold(" not in prim_func_source(func, vectorize=False)
    a = (rng.random((3, 1000)) + 0.5).astype("float32")
    if op == "mul":
        a = (1 + (a - 1) * 1e-3).astype("float32")
    fast, slow = np.empty(3, "float32"), np.empty(3, "float32")
    run(func, a, fast)
    run(func, a, slow, vectorize=False)
    np.testing.assert_array_equal(fast, slow)
    empty = np.empty((2, 0), "float32")
    out = np.empty(2, "float32")
    run(func, empty, out)
    assert out.tolist() == [init, init]
