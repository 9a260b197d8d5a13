"""Common subexpression elimination: equal pure values are computed once, within their scope."""

from llm_deploy.compiler.passes.cse import cse
from tests.compiler.passes.harness import check_pass

EXP = """
    @prim_func
    def exp(A: Buffer[(n, 4), "float32"], Out: Buffer[(n, 4), "float32"]):
        for i0 in range(n):
            for i1 in range(4):
                Out[i0, i1] = exp(A[i0, i1])
"""


def test_a_repeated_call_is_computed_once():
    before = (
        """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(4,), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), out_sinfo=Tensor[(n, 4), "float32"])
            b: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), out_sinfo=Tensor[(n, 4), "float32"])
            c: Tensor[(n, 4), "float32"] = add(a, y)
            d: Tensor[(n, 4), "float32"] = add(b, y)
            e: Tensor[(n, 4), "float32"] = multiply(c, d)
            output(e)
        return e
"""
        + EXP
    )
    expected = (
        """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(4,), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), out_sinfo=Tensor[(n, 4), "float32"])
            c: Tensor[(n, 4), "float32"] = add(a, y)
            e: Tensor[(n, 4), "float32"] = multiply(c, c)
            output(e)
        return e
"""
        + EXP
    )
    check_pass(cse, before, expected)


def test_different_attributes_impure_calls_and_other_blocks_are_not_shared():
    before = """
@module
class Module:
    @function(pure=False)
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = softmax(x, axis=0)
            b: Tensor[(n, 4), "float32"] = softmax(x, axis=1)
            t: Tensor[(n, 4), "float32"] = exp(x)
            c: Tensor[(n, 4), "float32"] = add(a, b)
            output(c)
        e1: Tensor[(n, 4), "float32"] = call_extern(extern("numpy.softmax"), (c,), out_sinfo=Tensor[(n, 4), "float32"])
        e2: Tensor[(n, 4), "float32"] = call_extern(extern("numpy.softmax"), (c,), out_sinfo=Tensor[(n, 4), "float32"])
        with dataflow():
            t2: Tensor[(n, 4), "float32"] = exp(x)
            f: Tensor[(n, 4), "float32"] = add(e1, e2)
            g: Tensor[(n, 4), "float32"] = add(f, t2)
            output(g)
        return g
"""
    check_pass(cse, before, before)


def test_a_block_output_equal_to_a_dataflow_var_becomes_an_alias():
    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = exp(x)
            b: Tensor[(n, 4), "float32"] = exp(x)
            output(b)
        return b
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = exp(x)
            b: Tensor[(n, 4), "float32"] = a
            output(b)
        return b
"""
    check_pass(cse, before, expected)
