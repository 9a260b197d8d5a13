"""Dead code elimination: unused pure bindings and unreachable functions go; effects stay."""

from llm_deploy.compiler.parser import parse
from llm_deploy.compiler.passes.dce import dce
from tests.compiler.passes.harness import check_pass

EXP = """
    @prim_func
    def exp(A: Buffer[(n, 4), "float32"], Out: Buffer[(n, 4), "float32"]):
        for i0 in range(n):
            for i1 in range(4):
                Out[i0, i1] = exp(A[i0, i1])
"""


def test_unused_pure_bindings_and_unreachable_functions_go():
    before = (
        """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), out_sinfo=Tensor[(n, 4), "float32"])
            unused: Tensor[(n, 4), "float32"] = call_tir(neg, (a,), out_sinfo=Tensor[(n, 4), "float32"])
            also_unused: Tensor[(n, 4), "float32"] = add(unused, x)
            b: Tensor[(n, 4), "float32"] = add(a, x)
            output(b)
        return b
"""
        + EXP
        + """
    @prim_func
    def neg(A: Buffer[(n, 4), "float32"], Out: Buffer[(n, 4), "float32"]):
        for i0 in range(n):
            for i1 in range(4):
                Out[i0, i1] = -A[i0, i1]
"""
    )
    expected = (
        """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), out_sinfo=Tensor[(n, 4), "float32"])
            b: Tensor[(n, 4), "float32"] = add(a, x)
            output(b)
        return b
"""
        + EXP
    )
    check_pass(dce, before, expected)


def test_impure_calls_and_match_casts_stay_and_keep_their_operands():
    before = (
        """
@module
class Module:
    @function(pure=False)
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        a: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), out_sinfo=Tensor[(n, 4), "float32"])
        effect: Tensor[(n, 4), "float32"] = call_extern(extern("numpy.softmax"), (a,), out_sinfo=Tensor[(n, 4), "float32"])
        checked: Tensor[(n, 4), "float32"] = match_cast(x, Tensor[(n, 4), "float32"])
        dead: Tensor[(n, 4), "float32"] = exp(x)
        return x
"""
        + EXP
    )
    expected = (
        """
@module
class Module:
    @function(pure=False)
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        a: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), out_sinfo=Tensor[(n, 4), "float32"])
        effect: Tensor[(n, 4), "float32"] = call_extern(extern("numpy.softmax"), (a,), out_sinfo=Tensor[(n, 4), "float32"])
        checked: Tensor[(n, 4), "float32"] = match_cast(x, Tensor[(n, 4), "float32"])
        return x
"""
        + EXP
    )
    check_pass(dce, before, expected)


def test_if_branches_are_cleaned_and_what_they_read_stays():
    before = """
@module
class Module:
    @function
    def main(c: Tensor[(), "bool"], x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        a: Tensor[(n, 4), "float32"] = exp(x)
        gone: Tensor[(n, 4), "float32"] = negative(x)
        if c:
            d: Tensor[(n, 4), "float32"] = exp(a)
            r1: Tensor[(n, 4), "float32"] = add(a, x)
            r = r1
        else:
            r = x
        return r
"""
    expected = """
@module
class Module:
    @function
    def main(c: Tensor[(), "bool"], x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        a: Tensor[(n, 4), "float32"] = exp(x)
        if c:
            r1: Tensor[(n, 4), "float32"] = add(a, x)
            r = r1
        else:
            r = x
        return r
"""
    check_pass(dce, before, expected)


def test_module_without_entry_points_keeps_its_functions():
    mod = parse("@module\nclass Module:" + EXP)
    assert dce(mod) is mod
