"""Programs are classified by their loops and accesses, never by name: the model's kernels,
and the same shapes under other names and layouts."""

import pytest

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te
from llm_deploy.compiler.parser import parse_function
from llm_deploy.compiler.schedule import classify, unique_names

n = S.var("n")


def linear(rows, K=16, N=12, name="Out"):
    X = te.placeholder((rows, K), "float32", "A")
    W = te.placeholder((N, K), "float32", "B")
    k = te.reduce_axis(K, "k")
    return te.create_prim_func([X, W, te.compute((rows, N), lambda i, j: te.sum(X[i, k] * W[j, k], k), name)])


def matmul_nn(rows, K=16, N=12):
    X = te.placeholder((rows, K), "float32", "A")
    B = te.placeholder((K, N), "float32", "B")
    k = te.reduce_axis(K, "k")
    return te.create_prim_func([X, B, te.compute((rows, N), lambda i, j: te.sum(X[i, k] * B[k, j], k), "C")])


def row_sum():
    X = te.placeholder((n, 16), "float32", "A")
    k = te.reduce_axis(16, "k")
    return te.create_prim_func([X, te.compute((n,), lambda i: te.sum(X[i, k], k), "S")])


def softmax_like():
    X = te.placeholder((n, 16), "float32", "A")
    k = te.reduce_axis(16, "k")
    mx = te.compute((n,), lambda i: te.max(X[i, k], k), "mx")
    k2 = te.reduce_axis(16, "k2")
    den = te.compute((n,), lambda i: te.sum(te.tir.intrin("exp", X[i, k2] - mx[i]), k2), "den")
    out = te.compute((n, 16), lambda i, j: te.tir.intrin("exp", X[i, j] - mx[i]) / den[i], "Out")
    return te.create_prim_func([X, out])


def gather():
    T_ = te.placeholder((50, 16), "float32", "A")
    ids = te.placeholder((n,), "int32", "B")
    return te.create_prim_func([T_, ids, te.compute((n, 16), lambda i, j: T_[ids[i], j], "Out")])


@pytest.mark.parametrize(
    "make, kind, nests",
    [
        (lambda: linear(n), "matmul", ["matmul"]),
        (lambda: linear(n, name="anything"), "matmul", ["matmul"]),
        (lambda: linear(1), "matvec", ["matvec"]),
        (lambda: linear(64), "matmul", ["matmul"]),
        (lambda: matmul_nn(n), "matmul", ["matmul"]),
        (row_sum, "reduction", ["reduction"]),
        (softmax_like, "reduction", ["reduction", "reduction", "injective"]),
        (gather, "injective", ["injective"]),
    ],
)
def test_classify(make, kind, nests):
    info = classify(unique_names(make()))
    assert info.kind == kind
    assert [x.kind for x in info.nests] == nests


def test_matmul_details_name_rows_columns_reduction_and_layout():
    (dot,) = classify(unique_names(linear(n))).nests
    assert (dot.matmul.rows, dot.matmul.cols, dot.matmul.k, dot.matmul.layout) == ("i", "j", "k", "dot")
    assert (dot.matmul.x, dot.matmul.w) == ("A", "B")
    (outer,) = classify(unique_names(matmul_nn(n))).nests
    assert outer.matmul.layout == "outer"


def test_weights_first_still_finds_the_rows():
    """W[j, k] * X[i, k] written the other way round: X is the operand with the symbolic dim."""
    f = parse_function("""
@prim_func
def main(W: Buffer[(12, 16), "float32"], X: Buffer[(n, 16), "float32"], Out: Buffer[(n, 12), "float32"]):
    for a in range(n):
        for b in range(12):
            acc = alloc((1,), "float32", "local")
            acc[0] = float32(0.0)
            for k in range(16):
                acc[0] = acc[0] + W[b, k] * X[a, k]
            Out[a, b] = acc[0]
""")  # fmt: skip
    (nest,) = classify(f).nests
    assert (nest.kind, nest.matmul.rows, nest.matmul.cols, nest.matmul.w) == ("matmul", "a", "b", "W")


def test_unknown_shapes_of_loops_are_opaque():
    f = parse_function("""
@prim_func
def main(A: Buffer[(n,), "float32"], B: Buffer[(n,), "float32"]):
    for i in range(n):
        B[i] = A[i]
        for j in range(i):
            B[i] = B[i] + A[j]
""")  # fmt: skip
    assert classify(f).kind == "opaque"
