"""Constant folding: pure calls of constants become constants (by the interpreter's own values)."""

from llm_deploy.compiler.parser import parse
from llm_deploy.compiler.passes.fold_constant import fold_constant
from tests.compiler.passes.harness import check_pass

DOUBLE = """
    @prim_func
    def double(A: Buffer[(4,), "float32"], Out: Buffer[(4,), "float32"]):
        for i0 in range(4):
            Out[i0] = A[i0] * float32(2.0)
"""


def test_a_chain_of_constant_calls_folds_into_its_use():
    before = (
        """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            c: Tensor[(4,), "float32"] = call_tir(double, (const([1.0, 2.0, 3.0, 4.0], "float32"),), out_sinfo=Tensor[(4,), "float32"])
            d: Tensor[(4,), "float32"] = negative(c)
            y: Tensor[(n, 4), "float32"] = add(x, d)
            output(y)
        return y
"""
        + DOUBLE
    )
    expected = (
        """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            y: Tensor[(n, 4), "float32"] = add(x, const([-2.0, -4.0, -6.0, -8.0], "float32"))
            output(y)
        return y
"""
        + DOUBLE
    )
    check_pass(fold_constant, before, expected)


def test_a_folded_block_output_keeps_its_binding():
    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            c: Tensor[(4,), "float32"] = add(const([1.0, 2.0, 3.0, 4.0], "float32"), const([1.0, 1.0, 1.0, 1.0], "float32"))
            output(c)
        y: Tensor[(n, 4), "float32"] = add(x, c)
        return y
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            c: Tensor[(4,), "float32"] = const([2.0, 3.0, 4.0, 5.0], "float32")
            output(c)
        y: Tensor[(n, 4), "float32"] = add(x, const([2.0, 3.0, 4.0, 5.0], "float32"))
        return y
"""
    check_pass(fold_constant, before, expected)


def test_symbolic_shapes_library_calls_and_large_results_stay():
    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            z: Tensor[(n, 4), "float32"] = zeros(shape(n, 4), dtype="float32")
            s: Tensor[(2, 2), "float32"] = call_extern_pure(extern("numpy.softmax"), (const([[1.0, 2.0], [3.0, 4.0]], "float32"),), out_sinfo=Tensor[(2, 2), "float32"])
            y: Tensor[(n, 4), "float32"] = add(x, z)
            output(y)
        return y
"""
    check_pass(fold_constant, before, before)
    big = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            z: Tensor[(4, 4), "float32"] = zeros(shape(4, 4), dtype="float32")
            y: Tensor[(n, 4), "float32"] = matmul(x, z)
            output(y)
        return y
"""
    mod = parse(big)
    assert fold_constant(mod, max_elements=15) is mod
    assert "zeros" not in str(fold_constant(mod)["main"])
