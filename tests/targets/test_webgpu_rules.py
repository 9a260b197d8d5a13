"""The default GPU rules: each scheduled program equals the original under the interpreter (its
loops run one after another) and on the GPU (its loops run at once), for sizes that divide the
workgroups and sizes that do not; and each kind of program gets the rule meant for it."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.tir_interpreter import run as interpret
from llm_deploy.targets.webgpu.codegen import codegen
from llm_deploy.targets.webgpu.gpu_rules import schedule
from llm_deploy.targets.webgpu.walk import walk
from tests.targets.webgpu_util import gpu  # noqa: F401

n = S.var("n")


def _sum_rows(k: int, op: str = "sum") -> T.PrimFunc:
    A = te.placeholder((n, k), "float32", "A")
    r = te.reduce_axis(k, "r")
    B = te.compute((n,), lambda i: getattr(te, op)(A[i, r], axis=r), "B")
    return te.create_prim_func([A, B])


def _argmax(k: int) -> T.PrimFunc:
    A = te.placeholder((n, k), "float32", "A")
    r = te.reduce_axis(k, "r")
    return te.create_prim_func([A, te.compute((n,), lambda i: te.argmax(A[i, r], axis=r), "B")])


def _dequant_matmul() -> T.PrimFunc:
    """A fused dequantize-matmul: 4-bit weights packed 8 to a uint32, a scale per row."""
    A = te.placeholder((n, 64), "float32", "A")
    W = te.placeholder((24, 8), "uint32", "W")
    scale = te.placeholder((24,), "float32", "scale")
    k = te.reduce_axis(64, "k")

    def weight(j, kk):
        nibble = T.binary("bitand", T.binary("shr", W[j, kk // 8], (kk % 8) * 4), T.Imm(15, "uint32"))
        return (T.cast("float32", nibble) - 8.0) * scale[j]

    C = te.compute((n, 24), lambda i, j: te.sum(A[i, k] * weight(j, k), axis=k), "C")
    return te.create_prim_func([A, W, scale, C])


def _dequant_reference(a, w, scale):
    nibbles = (w[:, :, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15  # (24, 8, 8)
    dense = (nibbles.reshape(24, 64).astype(np.float32) - 8) * scale[:, None]
    return a @ dense.T


def _scatter_parallel() -> T.PrimFunc:
    """out[idx[i]] = x[i] over a loop marked parallel (the author promises distinct indices)."""
    x, idx, out = T.Buffer("x", (n,)), T.Buffer("idx", (n,), "int32"), T.Buffer("out", (S.var("m"),))
    i, slot = S.var("i"), S.var("slot")
    body = T.Let(slot, T.cast("int64", idx[i]), T.Store(out, (slot,), x[i] * 2.0))
    return T.PrimFunc((x, idx, out), T.For(i, n, body, "parallel"))


def _prefix_sum() -> T.PrimFunc:
    """A loop carrying a dependence: no independent loop, so one thread runs it."""
    x, out = T.Buffer("x", (n,)), T.Buffer("out", (n,))
    i = S.var("i")
    body = T.Store(out, (i,), x[i] + T.select(T.binary("gt", i, 0), out[S.maximum(i - 1, 0)], 0.0))
    return T.PrimFunc((x, out), T.For(i, n, body))


def _branch_and_scratch() -> T.PrimFunc:
    """Host parts: a scratch buffer of a symbolic size and a branch on the dim."""
    x, out = T.Buffer("x", (n,)), T.Buffer("out", (n,))
    tmp = T.Buffer("tmp", (n,), "float32", "global")
    i, j, k = S.var("i"), S.var("j"), S.var("k")
    fill = T.For(i, n, T.Store(tmp, (i,), x[i] + 1.0))
    small = T.For(j, n, T.Store(out, (j,), tmp[j] * 2.0))
    large = T.For(k, n, T.Store(out, (k,), tmp[k] * 3.0))
    return T.PrimFunc(
        (x, out), T.Allocate(tmp, T.seq(fill, T.IfThenElse(T.binary("lt", n, 10), small, large)))
    )


def _softmax(k: int) -> T.PrimFunc:
    """Three stages over the same rows, passing a max and a sum per row through scratch buffers."""
    A = te.placeholder((n, k), "float32", "A")
    r1, r2 = te.reduce_axis(k, "r1"), te.reduce_axis(k, "r2")
    mx = te.compute((n,), lambda i: te.max(A[i, r1], axis=r1), "row_max")
    sm = te.compute((n,), lambda i: te.sum(T.intrin("exp", A[i, r2] - mx[i]), axis=r2), "row_sum")
    out = te.compute((n, k), lambda i, j: T.intrin("exp", A[i, j] - mx[i]) / sm[i], "Out")
    return te.create_prim_func([A, out])


def _args(f: T.PrimFunc, sizes: dict, rng) -> list[np.ndarray]:
    out = []
    for b in f.buffers:
        shape = tuple(S.evaluate(d, sizes) for d in b.shape)
        if b.name == "idx":
            out.append(rng.permutation(sizes["m"])[: sizes["n"]].astype(b.dtype))
        elif b.dtype == "uint32":
            out.append(rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32))
        elif b.dtype == "float32":
            out.append(rng.standard_normal(shape).astype(np.float32))
        else:
            out.append(rng.integers(-5, 5, shape).astype(b.dtype))
    return out


PROGRAMS = {
    "sum-300": (_sum_rows(300), [{"n": 1}, {"n": 5}]),
    "max-37": (_sum_rows(37, "max"), [{"n": 3}]),
    "prod-40": (_sum_rows(40, "prod"), [{"n": 2}]),
    "argmax-300": (_argmax(300), [{"n": 1}, {"n": 4}]),
    "dequant-matmul": (_dequant_matmul(), [{"n": 1}, {"n": 4}, {"n": 7}, {"n": 40}]),
    "scatter-parallel": (_scatter_parallel(), [{"n": 5, "m": 9}, {"n": 300, "m": 300}]),
    "prefix-sum": (_prefix_sum(), [{"n": 1}, {"n": 50}]),
    "branch-and-scratch": (_branch_and_scratch(), [{"n": 3}, {"n": 20}]),
    "softmax-rows": (_softmax(300), [{"n": 1}, {"n": 5}]),
}


@pytest.fixture(scope="module")
def module(gpu):  # noqa: F811
    return codegen({name: f for name, (f, _) in PROGRAMS.items()})


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_scheduled_program_equals_the_original_serially_and_on_the_gpu(name, module, gpu):  # noqa: F811
    f, sizes_list = PROGRAMS[name]
    g = schedule(f)
    rng = np.random.default_rng(1)
    nout = 1
    for sizes in sizes_list:
        args = _args(f, sizes, rng)
        if name == "argmax-300":  # ties: the first index of the maximum wins, as in numpy
            args[0][:, ::7] = 3.0
        expected = [a.copy() for a in args]
        interpret(f, *expected)
        serial = [a.copy() for a in args]
        interpret(g, *serial)
        dev = [gpu.from_host(a) for a in args]
        module[name](*dev)
        on_gpu = gpu.to_host(dev[-nout:])
        np.testing.assert_allclose(serial[-1], expected[-1], rtol=1e-5, atol=1e-5, err_msg=f"{name} {sizes}")
        np.testing.assert_allclose(on_gpu[-1], expected[-1], rtol=1e-5, atol=1e-5, err_msg=f"{name} {sizes}")
        if name == "dequant-matmul":
            np.testing.assert_allclose(expected[-1], _dequant_reference(*args[:3]), rtol=1e-4, atol=1e-4)


def _loops(f: T.PrimFunc) -> list[T.For]:
    return [s for s in walk(f.body) if isinstance(s, T.For)]


def _kernels_only(s: T.Stmt, where: str) -> None:
    """Only host statements (sequences, scratch allocations, branches) around workgroup loops."""
    match s:
        case T.Seq(stmts):
            for x in stmts:
                _kernels_only(x, where)
        case T.Allocate(_, body):
            _kernels_only(body, where)
        case T.IfThenElse(_, a, b):
            _kernels_only(a, where)
            if b is not None:
                _kernels_only(b, where)
        case _:
            assert isinstance(s, T.For) and s.thread == "blockIdx.x", f"{where}: {s}"


def test_every_statement_of_a_scheduled_program_is_inside_a_workgroup_loop():
    for name, (f, _) in PROGRAMS.items():
        _kernels_only(schedule(f).body, name)


def test_rules_by_the_shape_of_the_program():
    def tags(name):
        return [lp.thread for lp in _loops(schedule(PROGRAMS[name][0]))]

    # reductions: one workgroup per output, a tree through workgroup memory
    g = schedule(PROGRAMS["sum-300"][0])
    assert any(isinstance(s, T.Allocate) and s.buffer.scope == "shared" for s in walk(g.body))
    assert sum(isinstance(s, T.Barrier) for s in walk(g.body)) >= 5
    # matrix products: a host branch on the rows, register tiles for many rows
    g = schedule(PROGRAMS["dequant-matmul"][0])
    assert isinstance(g.body, T.IfThenElse) and str(g.body.cond) == "n <= 4"
    assert any(
        isinstance(s, T.Allocate) and s.buffer.shape == (S.const(4), S.const(4))
        for s in walk(g.body.else_body)
    )
    # a dependence: one thread
    assert [lp.extent for lp in _loops(schedule(PROGRAMS["prefix-sum"][0]))][:2] == [S.const(1), S.const(1)]
    assert tags("scatter-parallel")[:2] == ["blockIdx.x", "threadIdx.x"]


def test_elementwise_rule_as_text():
    """Spatial loops fused and split over 256-thread workgroups, guarded where 256 may not divide
    (the canonical form writes (256 * bx + tx) // 3 as 85 * bx + (bx + tx) // 3)."""
    A, B = T.Buffer("A", (n, 3)), T.Buffer("B", (n, 3))
    i, j = S.var("i"), S.var("j")
    f = T.PrimFunc((A, B), T.For(i, n, T.For(j, 3, T.Store(B, (i, j), A[i, j] * 2.0))))
    expected = """
@prim_func
def main(A: Buffer[(n, 3), "float32"], B: Buffer[(n, 3), "float32"]):
    for bx in thread((3 * n + 255) // 256, "blockIdx.x"):
        for tx in thread(256, "threadIdx.x"):
            if (256 * bx + tx) < (3 * n):
                B[85 * bx + ((bx + tx) // 3), (bx + tx) % 3] = A[85 * bx + ((bx + tx) // 3), (bx + tx) % 3] * float32(2.0)
"""
    assert str(schedule(f)).strip() == expected.strip()


def test_a_scheduled_program_is_left_as_it_is():
    g = schedule(PROGRAMS["sum-300"][0])
    assert codegen({"g": g}).specs[0]["shaders"] == codegen({"f": PROGRAMS["sum-300"][0]}).specs[0]["shaders"]


def test_stages_over_the_same_rows_become_one_workgroup_per_row():
    """A softmax's three stages: one kernel, its max and sum per row in workgroup memory (the
    scratch buffers of the row values are gone), barriers between the stages."""
    f = PROGRAMS["softmax-rows"][0]
    assert sum(isinstance(s, T.Allocate) and s.buffer.scope == "global" for s in walk(f.body)) == 2
    g = schedule(f)
    assert [lp.extent for lp in _loops(g) if lp.thread == "blockIdx.x"] == [n]
    assert not any(isinstance(s, T.Allocate) and s.buffer.scope == "global" for s in walk(g.body))
    rows = [
        s.buffer.name for s in walk(g.body) if isinstance(s, T.Allocate) and s.buffer.shape == (S.const(1),)
    ]
    assert {"row_max_row", "row_sum_row"} <= set(rows)
