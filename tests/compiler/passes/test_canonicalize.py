"""Canonicalize bindings: var-to-var renames, casts that cannot fail and items of known tuples go."""

from llm_deploy.compiler.passes.canonicalize import canonicalize
from tests.compiler.passes.harness import check_pass


def test_renames_are_folded_into_their_uses():
    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = exp(x)
            b: Tensor[(n, 4), "float32"] = a
            c: Tensor[(n, 4), "float32"] = b
            d: Tensor[(n, 4), "float32"] = add(c, b)
            output(d)
        return d
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = exp(x)
            d: Tensor[(n, 4), "float32"] = add(a, a)
            output(d)
        return d
"""
    check_pass(canonicalize, before, expected)


def test_a_block_output_renaming_a_dataflow_var_binds_it_directly():
    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = exp(x)
            b: Tensor[(n, 4), "float32"] = negative(a)
            out: Tensor[(n, 4), "float32"] = b
            output(out)
        c: Tensor[(n, 4), "float32"] = out
        return c
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = exp(x)
            out: Tensor[(n, 4), "float32"] = negative(a)
            output(out)
        return out
"""
    check_pass(canonicalize, before, expected)


def test_a_match_cast_that_cannot_fail_is_a_rename_and_one_that_binds_stays():
    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(m,), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            a: Tensor[(n, 4), "float32"] = match_cast(x, Tensor[(n, 4), "float32"])
            s: Tensor[(k,), "float32"] = match_cast(y, Tensor[(k,), "float32"])
            s2: Tensor[(k,), "float32"] = match_cast(s, Tensor[(k,), "float32"])
            t: Tensor[(k,), "float32"] = exp(s2)
            b: Tensor[(n, 4), "float32"] = exp(a)
            output(b)
        return b
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(m,), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            s: Tensor[(k,), "float32"] = match_cast(y, Tensor[(k,), "float32"])
            t: Tensor[(k,), "float32"] = exp(s)
            b: Tensor[(n, 4), "float32"] = exp(x)
            output(b)
        return b
"""
    check_pass(canonicalize, before, expected)


def test_items_of_a_tuple_built_here_are_its_fields():
    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(4,), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            t: Tuple[Tensor[(n, 4), "float32"], Tensor[(4,), "float32"]] = (x, y)
            a: Tensor[(n, 4), "float32"] = t[0]
            b: Tensor[(4,), "float32"] = t[1]
            c: Tensor[(n, 4), "float32"] = add(a, b)
            output(c)
        return c
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(4,), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            t: Tuple[Tensor[(n, 4), "float32"], Tensor[(4,), "float32"]] = (x, y)
            c: Tensor[(n, 4), "float32"] = add(x, y)
            output(c)
        return c
"""
    check_pass(canonicalize, before, expected)
