"""rewrite_reshape: programs that copy their input in row-major order become reshape views."""

from llm_deploy.compiler.passes.rewrite_reshape import rewrite_reshape
from tests.compiler.passes.harness import check_pass

PROGRAMS = """
    @prim_func
    def split_heads(A: Buffer[(n, 8), "float32"], Out: Buffer[(n, 2, 4), "float32"]):
        for i0 in range(n):
            for i1 in range(2):
                for i2 in range(4):
                    Out[i0, i1, i2] = A[i0 + ((4 * i1 + i2) // 8), (4 * i1 + i2) % 8]

    @prim_func
    def flatten(A: Buffer[(n, 2, 4), "float32"], Out: Buffer[(8 * n,), "float32"]):
        for i0 in range(8 * n):
            Out[i0] = A[i0 // 8, i0 // 4 % 2, i0 % 4]

    @prim_func
    def transpose(A: Buffer[(n, 8), "float32"], Out: Buffer[(8, n), "float32"]):
        for i0 in range(8):
            for i1 in range(n):
                Out[i0, i1] = A[i1, i0]
"""


def test_row_major_copies_become_reshapes_and_a_transpose_stays():
    before = f"""
@module
class Module:
    @function
    def main(x: Tensor[(n, 8), "float32"]) -> Tuple[Tensor[(8 * n,), "float32"], Tensor[(8, n), "float32"]]:
        with dataflow():
            a: Tensor[(n, 2, 4), "float32"] = call_tir(split_heads, (x,), out_sinfo=Tensor[(n, 2, 4), "float32"])
            b: Tensor[(8 * n,), "float32"] = call_tir(flatten, (a,), out_sinfo=Tensor[(8 * n,), "float32"])
            c: Tensor[(8, n), "float32"] = call_tir(transpose, (x,), out_sinfo=Tensor[(8, n), "float32"])
            output(b, c)
        return (b, c)
{PROGRAMS}"""
    expected = f"""
@module
class Module:
    @function
    def main(x: Tensor[(n, 8), "float32"]) -> Tuple[Tensor[(8 * n,), "float32"], Tensor[(8, n), "float32"]]:
        with dataflow():
            a: Tensor[(n, 2, 4), "float32"] = reshape(x, shape(n, 2, 4))
            b: Tensor[(8 * n,), "float32"] = reshape(a, shape(8 * n))
            c: Tensor[(8, n), "float32"] = call_tir(transpose, (x,), out_sinfo=Tensor[(8, n), "float32"])
            output(b, c)
        return (b, c)
{PROGRAMS}"""
    check_pass(rewrite_reshape, before, expected)
