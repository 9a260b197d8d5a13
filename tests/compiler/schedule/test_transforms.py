"""Loop transforms: each one as before/expected IR text, each one keeping the program equal
(interpreted and compiled, symbolic extents that the factors do not divide included), and the
illegal ones refused."""

import numpy as np
import pytest

from llm_deploy.compiler import tir
from llm_deploy.compiler.parser import parse_function
from llm_deploy.compiler.schedule import transforms as tr
from llm_deploy.compiler.schedule.ir import ScheduleError, loops, unique_names
from llm_deploy.compiler.testing import assert_structural_equal
from llm_deploy.compiler.tir_interpreter import run
from llm_deploy.targets.llvm.codegen import codegen
from tests.compiler.schedule.helpers import assert_same

EW = """
@prim_func
def main(A: Buffer[(n, 16), "float32"], B: Buffer[(n, 16), "float32"]):
    for i in range(n):
        for j in range(16):
            B[i, j] = A[i, j] * float32(2.0)
"""

ROWSUM = """
@prim_func
def main(A: Buffer[(n, 20), "float32"], B: Buffer[(n,), "float32"]):
    for i in range(n):
        acc = alloc((1,), "float32", "local")
        acc[0] = float32(0.0)
        for k in range(20):
            acc[0] = acc[0] + A[i, k]
        B[i] = acc[0]
"""

LINEAR = """
@prim_func
def main(A: Buffer[(n, 19), "float32"], W: Buffer[(7, 19), "float32"], Out: Buffer[(n, 7), "float32"]):
    for i in range(n):
        for j in range(7):
            acc = alloc((1,), "float32", "local")
            acc[0] = float32(0.0)
            for k in range(19):
                acc[0] = acc[0] + A[i, k] * W[j, k]
            Out[i, j] = acc[0]
"""

ROPE = """
@prim_func
def main(A: Buffer[(n, 3, 8), "float32"], pos: Buffer[(n,), "int32"], F: Buffer[(4,), "float32"], Out: Buffer[(n, 3, 8), "float32"]):
    for i in range(n):
        for h in range(3):
            for d in range(8):
                Out[i, h, d] = A[i, h, d] * cos(cast("float32", pos[i]) * F[d % 4]) + exp(A[i, h, d])
"""

SIZES = (1, 2, 3, 4, 5, 8, 13)


def p(text: str) -> tir.PrimFunc:
    return parse_function(text)


def tir_loops(f: tir.PrimFunc) -> list[tir.For]:
    return list(loops(f.body))


def find(f: tir.PrimFunc, name: str) -> tir.For:
    return next(lp for lp in tir_loops(f) if lp.var.name == name)


def check(before: tir.PrimFunc, after: tir.PrimFunc, expected: str | None = None, **kw) -> None:
    if expected is not None:
        assert_structural_equal(after, p(expected))
    assert_same(before, after, SIZES, **kw)


def test_split_by_a_divisor_needs_no_tail():
    f = p(EW)
    check(f, tr.split(f, "j", 4), """
@prim_func
def main(A: Buffer[(n, 16), "float32"], B: Buffer[(n, 16), "float32"]):
    for i in range(n):
        for j_o in range(4):
            for j_i in range(4):
                B[i, 4 * j_o + j_i] = A[i, 4 * j_o + j_i] * float32(2.0)
""")  # fmt: skip


def test_split_with_a_guard():
    f = p(EW)
    check(f, tr.split(f, "i", 4), """
@prim_func
def main(A: Buffer[(n, 16), "float32"], B: Buffer[(n, 16), "float32"]):
    for i_o in range((n + 3) // 4):
        for i_i in range(4):
            if 4 * i_o + i_i < n:
                for j in range(16):
                    B[4 * i_o + i_i, j] = A[4 * i_o + i_i, j] * float32(2.0)
""")  # fmt: skip


def test_split_with_a_tail_loop_copies_the_body_with_fresh_names():
    f = p(EW)
    check(f, tr.split(f, "i", 4, tail="loop"), """
@prim_func
def main(A: Buffer[(n, 16), "float32"], B: Buffer[(n, 16), "float32"]):
    for i_o in range(n // 4):
        for i_i in range(4):
            for j in range(16):
                B[4 * i_o + i_i, j] = A[4 * i_o + i_i, j] * float32(2.0)
    for i_t in range(n - 4 * (n // 4)):
        for j_1 in range(16):
            B[4 * (n // 4) + i_t, j_1] = A[4 * (n // 4) + i_t, j_1] * float32(2.0)
""")  # fmt: skip


def test_split_with_a_shorter_last_tile():
    f = p(EW)
    check(f, tr.split(f, "i", 4, tail="min"), """
@prim_func
def main(A: Buffer[(n, 16), "float32"], B: Buffer[(n, 16), "float32"]):
    for i_o in range((n + 3) // 4):
        for i_i in range(min(4, n - 4 * i_o)):
            for j in range(16):
                B[4 * i_o + i_i, j] = A[4 * i_o + i_i, j] * float32(2.0)
""")  # fmt: skip


def test_split_of_a_constant_extent_with_a_tail():
    f = p(EW)
    g = tr.split(f, "j", 5, tail="loop")
    assert [lp.extent.value for lp in tir_loops(g) if lp.var.name in ("j_o", "j_i", "j_t")] == [3, 5, 1]
    check(f, g)
    check(f, tr.split(f, "j", 5))


def test_split_keeps_the_kind_on_the_outer_loop():
    g = tr.split(tr.parallel(p(EW), "i"), "i", 3, tail="min")
    kinds = {lp.var.name: lp.kind for lp in tir_loops(g)}
    assert kinds["i_o"] == "parallel" and kinds["i_i"] == "serial"
    check(p(EW), g)


def test_fuse():
    f = p(EW)
    check(f, tr.fuse(f, "i", "j"), """
@prim_func
def main(A: Buffer[(n, 16), "float32"], B: Buffer[(n, 16), "float32"]):
    for i_j in range(16 * n):
        B[i_j // 16, i_j % 16] = A[i_j // 16, i_j % 16] * float32(2.0)
""")  # fmt: skip
    with pytest.raises(ScheduleError, match="whole body"):
        tr.fuse(f, "j", "i")


def test_reorder():
    f = p(EW)
    check(f, tr.reorder(f, "j", "i"), """
@prim_func
def main(A: Buffer[(n, 16), "float32"], B: Buffer[(n, 16), "float32"]):
    for j in range(16):
        for i in range(n):
            B[i, j] = A[i, j] * float32(2.0)
""")  # fmt: skip


def test_reorder_moves_a_reduction_outside_independent_loops():
    f = p("""
@prim_func
def main(A: Buffer[(n, 8), "float32"], B: Buffer[(n,), "float32"]):
    for i in range(n):
        for k in range(8):
            B[i] = B[i] * float32(0.5) + A[i, k]
""")  # fmt: skip
    check(f, tr.reorder(f, "k", "i"))


def test_reorder_refuses_to_swap_loops_that_both_carry_a_dependence():
    f = p("""
@prim_func
def main(A: Buffer[(n, 8), "float32"], C: Buffer[(1,), "float32"]):
    for i in range(n):
        for j in range(8):
            C[0] = C[0] * float32(0.5) + A[i, j]
""")  # fmt: skip
    with pytest.raises(ScheduleError, match="keep their order"):
        tr.reorder(f, "j", "i")
    with pytest.raises(ScheduleError, match="perfect nest"):
        tr.reorder(p(ROWSUM), "k", "i")


def test_fission_and_its_legality():
    f = p("""
@prim_func
def main(A: Buffer[(n,), "float32"], B: Buffer[(n,), "float32"], C: Buffer[(n,), "float32"]):
    for i in range(n):
        B[i] = A[i] + float32(1.0)
        C[i] = B[i] * float32(2.0)
""")  # fmt: skip
    check(f, tr.fission(f, "i"), """
@prim_func
def main(A: Buffer[(n,), "float32"], B: Buffer[(n,), "float32"], C: Buffer[(n,), "float32"]):
    for i in range(n):
        B[i] = A[i] + float32(1.0)
    for i_1 in range(n):
        C[i_1] = B[i_1] * float32(2.0)
""", outputs=2)  # fmt: skip
    later = p("""
@prim_func
def main(A: Buffer[(n,), "float32"], B: Buffer[(n + 1,), "float32"], C: Buffer[(n,), "float32"]):
    for i in range(n):
        B[i] = A[i] + float32(1.0)
        C[i] = B[i + 1] * float32(2.0)
""")  # fmt: skip
    with pytest.raises(ScheduleError, match="same element of B"):
        tr.fission(later, "i")


def test_expand_alloc_gives_each_iteration_its_slice():
    f = p(LINEAR)
    g = tr.expand_alloc(tr.split(f, "j", 4, tail="loop"), "acc", "j_o")
    check(f, g)
    assert_structural_equal(tr.expand_alloc(f, "acc", "i"), p("""
@prim_func
def main(A: Buffer[(n, 19), "float32"], W: Buffer[(7, 19), "float32"], Out: Buffer[(n, 7), "float32"]):
    for i in range(n):
        acc = alloc((7, 1), "float32", "local")
        for j in range(7):
            acc[j, 0] = float32(0.0)
            for k in range(19):
                acc[j, 0] = acc[j, 0] + A[i, k] * W[j, k]
            Out[i, j] = acc[j, 0]
"""))  # fmt: skip
    with pytest.raises(ScheduleError, match="symbolic extent"):
        tr.expand_alloc(tr.reorder(f, "j", "i"), "acc", "j")


def test_rfactor_accumulates_in_lanes_with_a_tail():
    f = p(ROWSUM)
    check(f, tr.rfactor(f, "k", 8), """
@prim_func
def main(A: Buffer[(n, 20), "float32"], B: Buffer[(n,), "float32"]):
    for i in range(n):
        acc = alloc((1,), "float32", "local")
        acc[0] = float32(0.0)
        with alloc((1, 8), "float32", "local") as acc_v:
            for k_r0 in vectorized(8):
                acc_v[0, k_r0] = float32(0.0)
            for k_o in range(2):
                for k_v in vectorized(8):
                    acc_v[0, k_v] = acc_v[0, k_v] + A[i, 8 * k_o + k_v]
            for k_t in range(4):
                acc_v[0, k_t] = acc_v[0, k_t] + A[i, 16 + k_t]
            for k_h4 in vectorized(4):
                acc_v[0, k_h4] = acc_v[0, k_h4] + acc_v[0, k_h4 + 4]
            for k_h2 in vectorized(2):
                acc_v[0, k_h2] = acc_v[0, k_h2] + acc_v[0, k_h2 + 2]
            for k_h1 in vectorized(1):
                acc_v[0, k_h1] = acc_v[0, k_h1] + acc_v[0, k_h1 + 1]
            acc[0] = acc[0] + acc_v[0, 0]
        B[i] = acc[0]
""")  # fmt: skip


@pytest.mark.parametrize("op", ["max", "min"])
def test_rfactor_of_max_and_min_over_a_symbolic_extent_is_exact(op):
    f = p(f"""
@prim_func
def main(A: Buffer[(n, m), "float32"], B: Buffer[(n,), "float32"]):
    for i in range(n):
        acc = alloc((1,), "float32", "local")
        acc[0] = A[i, 0]
        for k in range(m):
            acc[0] = {op}(acc[0], A[i, k])
        B[i] = acc[0]
""")  # fmt: skip
    g = tr.rfactor(f, "k", 4)
    assert_same(f, g, [{"n": 2, "m": v} for v in (1, 3, 4, 5, 9, 16)], rtol=0)


def test_rfactor_of_a_register_block():
    f = p(LINEAR)
    g = tr.split(f, "j", 4, tail="loop")
    g = tr.unroll(tr.expand_alloc(g, "acc", "j_o"), "j_i")
    g = tr.fission(g, "j_i")
    g = tr.reorder(g, "k", "j_i_1")
    g = tr.rfactor(g, "k", 8)
    check(f, g, rtol=1e-5)
    with pytest.raises(ScheduleError, match="one update"):
        tr.rfactor(f, "j", 8)
    with pytest.raises(ScheduleError, match="at least 2"):
        tr.rfactor(f, "k", 1)


def test_cache_invariant_computes_costly_values_once_per_outer_iteration():
    f = p(ROPE)
    check(f, tr.cache_invariant(f, "h"), """
@prim_func
def main(A: Buffer[(n, 3, 8), "float32"], pos: Buffer[(n,), "int32"], F: Buffer[(4,), "float32"], Out: Buffer[(n, 3, 8), "float32"]):
    for i in range(n):
        h_c = alloc((8,), "float32", "local")
        for d_1 in range(8):
            h_c[d_1] = cos(cast("float32", pos[i]) * F[d_1 % 4])
        for h in range(3):
            for d in range(8):
                Out[i, h, d] = A[i, h, d] * h_c[d] + exp(A[i, h, d])
""", gens={"pos": _positions})  # fmt: skip
    with pytest.raises(ScheduleError, match="no costly value"):
        tr.cache_invariant(f, "d")


def test_kinds_and_their_legality():
    f = p(ROWSUM)
    g = tr.parallel(f, "i")
    check(f, g)
    assert find(g, "i").kind == "parallel"
    with pytest.raises(ScheduleError, match="same element of acc"):
        tr.parallel(f, "k")
    with pytest.raises(ScheduleError, match="same element of acc"):
        tr.vectorize(f, "k")
    assert find(tr.unroll(f, "k"), "k").kind == "unrolled"
    bound = tr.bind(f, "i", "blockIdx.x")
    assert (find(bound, "i").kind, find(bound, "i").thread) == ("thread", "blockIdx.x")
    assert_same(f, bound, SIZES)  # the interpreter runs thread loops serially
    with pytest.raises(ScheduleError, match="unknown thread tag"):
        tr.bind(f, "i", "warp")
    with pytest.raises(ScheduleError, match="no loop over 'x'"):
        tr.parallel(f, "x")


def test_simplify_indices_makes_a_reshape_read_contiguous():
    f = p("""
@prim_func
def main(A: Buffer[(n, 576), "float32"], Out: Buffer[(n, 9, 64), "float32"]):
    for i0 in range(n):
        for i1 in range(9):
            for i2 in range(64):
                Out[i0, i1, i2] = A[i0 + (64 * i1 + i2) // 576, (64 * i1 + i2) % 576]
""")  # fmt: skip
    check(f, tr.simplify_indices(f), """
@prim_func
def main(A: Buffer[(n, 576), "float32"], Out: Buffer[(n, 9, 64), "float32"]):
    for i0 in range(n):
        for i1 in range(9):
            for i2 in range(64):
                Out[i0, i1, i2] = A[i0, 64 * i1 + i2]
""")  # fmt: skip


def test_unique_names_renames_the_loops_of_later_nests():
    f = p("""
@prim_func
def main(A: Buffer[(n,), "float32"], B: Buffer[(n,), "float32"], C: Buffer[(n,), "float32"]):
    for i in range(n):
        B[i] = A[i]
    for i in range(n):
        C[i] = B[i]
""")  # fmt: skip
    g = unique_names(f)
    assert [lp.var.name for lp in tir_loops(g)] == ["i", "i_1"]
    assert_same(f, g, SIZES, outputs=2)
    assert unique_names(g) == g


# Compiled for the CPU in one module: what every transform produces runs equal there too
# (guards, tail loops, shorter last tiles, min extents, lanes with a scalar tail).
COMPILED = {
    "split_guard": (EW, lambda f: tr.split(f, "i", 4)),
    "split_loop": (EW, lambda f: tr.split(f, "i", 4, tail="loop")),
    "split_min": (EW, lambda f: tr.parallel(tr.split(f, "i", 3, tail="min"), "i_o")),
    "split_const": (EW, lambda f: tr.vectorize(tr.split(f, "j", 5, tail="loop"), "j_i")),
    "fuse": (EW, lambda f: tr.parallel(tr.fuse(f, "i", "j"), "i_j")),
    "reorder": (EW, lambda f: tr.vectorize(tr.reorder(f, "j", "i"), "i")),
    "rfactor": (ROWSUM, lambda f: tr.parallel(tr.rfactor(f, "k", 8), "i")),
    "rfactor_block": (LINEAR, lambda f: _gemm_block(f)),
    "unroll": (EW, lambda f: tr.unroll(f, "j")),
    "cache_invariant": (ROPE, lambda f: tr.vectorize(tr.cache_invariant(f, "h"), "d")),
}


def _gemm_block(f: tir.PrimFunc) -> tir.PrimFunc:
    g = tr.split(f, "j", 4, tail="loop")
    g = tr.unroll(tr.expand_alloc(g, "acc", "j_o"), "j_i")
    g = tr.reorder(tr.fission(g, "j_i"), "k", "j_i_1")
    return tr.parallel(tr.rfactor(g, "k", 8), "i")


def test_compiled():
    befores = {name: p(text) for name, (text, _) in COMPILED.items()}
    afters = {name: fn(befores[name]) for name, (_, fn) in COMPILED.items()}
    km = codegen(afters)
    for name in COMPILED:
        gens = {"pos": _positions} if name == "cache_invariant" else None
        assert_same(befores[name], afters[name], SIZES, kernel=km[name], gens=gens)


def _positions(rng, shape, dtype):
    return rng.integers(0, 50, shape).astype(dtype)


def test_numpy_reference_of_the_linear_text():
    """The LINEAR text is what its name says (so the equalities above test a real GEMM)."""
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((5, 19)).astype("float32"), rng.standard_normal((7, 19)).astype("float32")
    out = np.zeros((5, 7), "float32")
    run(p(LINEAR), a, w, out)
    np.testing.assert_allclose(out, a @ w.T, rtol=1e-5, atol=1e-5)
