"""Structure info: the base/derived relation, erasure of out-of-scope variables, lca."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.shape import Analyzer
from llm_deploy.compiler.struct_info import (
    FuncInfo,
    ObjectInfo,
    PrimInfo,
    ShapeInfo,
    StructInfo,
    TupleInfo,
    erase,
    free_vars,
    is_base_of,
    lca,
    substitute,
    tensor,
)

n, m = S.var("n"), S.var("m")
OBJ = ObjectInfo()
ANY_TENSOR = tensor(dtype=None)


def f(params, ret, pure: bool = True) -> FuncInfo:
    return FuncInfo(None if params is None else tuple(params), ret, pure)


# ---------------------------------------------------------------------------------------------
# base / derived

BASE_DERIVED = [
    # (base, derived, is_base_of)
    (OBJ, OBJ, True),
    (OBJ, tensor((n, 4)), True),
    (OBJ, f([tensor((n,))], tensor((n,))), True),
    (tensor((n, 4)), OBJ, False),
    (ANY_TENSOR, tensor((n, 4), "float16"), True),
    (tensor(ndim=2), tensor((n, 4)), True),
    (tensor((n, 4)), tensor(ndim=2), False),
    (tensor(), tensor(ndim=2), True),
    (tensor(ndim=2), tensor(), False),
    (tensor(ndim=2), tensor(ndim=3), False),
    (tensor(ndim=2), tensor((n, 4, 1)), False),
    (tensor((n, 4)), tensor((n, 2 * 2)), True),
    (tensor((n * 2,)), tensor((n + n,)), True),
    (tensor((n, 4)), tensor((m, 4)), False),
    (tensor((n, 4)), tensor((n, 4, 1)), False),
    (tensor((n, 4), "float32"), tensor((n, 4), "float16"), False),
    (tensor((n, 4), "float32"), tensor((n, 4), None), False),
    (tensor((n, 4), None), tensor((n, 4), "int8"), True),
    (ShapeInfo(), ShapeInfo((n,)), True),
    (ShapeInfo(ndim=2), ShapeInfo((n, 4)), True),
    (ShapeInfo((n, 4)), ShapeInfo(ndim=2), False),
    (ShapeInfo(ndim=1), ShapeInfo((n, 4)), False),
    (ShapeInfo((n,)), tensor((n,)), False),
    (tensor((n,)), ShapeInfo((n,)), False),
    (PrimInfo("int64"), PrimInfo("int64", n), True),
    (PrimInfo("int64", n), PrimInfo("int64"), False),
    (PrimInfo("int64"), PrimInfo("int32"), False),
    (PrimInfo("int64", n + 1), PrimInfo("int64", 1 + n), True),
    (PrimInfo("int64", n), PrimInfo("int64", m), False),
    (TupleInfo(()), TupleInfo(()), True),
    (TupleInfo((tensor(ndim=2), OBJ)), TupleInfo((tensor((n, 4)), PrimInfo())), True),
    (TupleInfo((tensor((n,)),)), TupleInfo((tensor(ndim=1),)), False),
    (TupleInfo((OBJ, OBJ)), TupleInfo((OBJ, OBJ, OBJ)), False),
    (TupleInfo((OBJ,)), OBJ, False),
    (f(None, tensor(ndim=2)), f([tensor((n,))], tensor((n, 4))), True),
    (f([tensor((n,))], tensor((n, 4))), f(None, tensor((n, 4))), False),
    # Parameters are contravariant: a function that accepts more may stand in for one that accepts less.
    (f([tensor((n,))], ANY_TENSOR), f([tensor(ndim=1)], tensor((n, 4))), True),
    (f([tensor(ndim=1)], ANY_TENSOR), f([tensor((n,))], tensor((n, 4))), False),
    (f([OBJ], OBJ), f([OBJ, OBJ], OBJ), False),
    (f([OBJ], tensor((n,))), f([OBJ], tensor(ndim=1)), False),
    # An impure signature admits pure functions, not the other way round.
    (f([OBJ], OBJ, pure=False), f([OBJ], OBJ, pure=True), True),
    (f([OBJ], OBJ, pure=True), f([OBJ], OBJ, pure=False), False),
    (f(None, OBJ), OBJ, False),
]


@pytest.mark.parametrize(
    "base, derived, expected", BASE_DERIVED, ids=[str(i) for i in range(len(BASE_DERIVED))]
)
def test_is_base_of(base: StructInfo, derived: StructInfo, expected: bool) -> None:
    assert is_base_of(base, derived) is expected
    assert is_base_of(base, base) and is_base_of(derived, derived)
    if expected and base != derived:
        assert not is_base_of(derived, base), "distinct infos are never bases of each other"


def test_is_base_of_uses_the_analyzer() -> None:
    an = Analyzer().bind("n", 8, 8).bind("m", 1, 4096)
    assert is_base_of(tensor((8, 4)), tensor((n, 4)), an)
    assert is_base_of(tensor((n, 4)), tensor((8, 4)), an)
    assert is_base_of(tensor((n, 4)), tensor((4, 4)), an) is False
    assert is_base_of(tensor((m,)), tensor((n,)), an) is False
    assert is_base_of(tensor((8, 4)), tensor((n, 4))) is False


# ---------------------------------------------------------------------------------------------
# Erasure of symbolic variables that leave their scope.

ERASE = [
    # (info, variables still in scope, erased)
    (tensor((n, 4)), {"n"}, tensor((n, 4))),
    (tensor((n, 4)), set(), tensor(ndim=2)),
    (tensor((n, 4), "float16"), set(), tensor(ndim=2, dtype="float16")),
    (tensor((n * m, 4)), {"n"}, tensor(ndim=2)),
    (tensor((4, 8)), set(), tensor((4, 8))),
    (tensor(ndim=3), set(), tensor(ndim=3)),
    (ShapeInfo((n, 4)), set(), ShapeInfo(ndim=2)),
    (ShapeInfo((n,)), {"n"}, ShapeInfo((n,))),
    (PrimInfo("int64", n + 1), set(), PrimInfo("int64")),
    (PrimInfo("int64", S.const(7)), set(), PrimInfo("int64", S.const(7))),
    (TupleInfo((tensor((n,)), tensor((m,)))), {"m"}, TupleInfo((tensor(ndim=1), tensor((m,))))),
    (TupleInfo((TupleInfo((ShapeInfo((n,)),)),)), set(), TupleInfo((TupleInfo((ShapeInfo(ndim=1),)),))),
    # A signature binds the variables of its parameters; only others are erased from the return.
    (f([tensor((n,))], tensor((n * 2,))), set(), f([tensor((n,))], tensor((n * 2,)))),
    (f([tensor((n,))], tensor((n, m))), set(), f([tensor((n,))], tensor(ndim=2))),
    (f([tensor((n,))], tensor((n, m))), {"m"}, f([tensor((n,))], tensor((n, m)))),
    (f(None, tensor((n,))), set(), f(None, tensor(ndim=1))),
    (OBJ, set(), OBJ),
]


@pytest.mark.parametrize("info, keep, expected", ERASE, ids=[str(i) for i in range(len(ERASE))])
def test_erase(info: StructInfo, keep: set[str], expected: StructInfo) -> None:
    erased = erase(info, keep)
    assert erased == expected
    assert is_base_of(erased, info), "erasure only forgets"
    if not isinstance(info, FuncInfo):
        assert free_vars(erased) <= keep


# ---------------------------------------------------------------------------------------------
# Least common ancestor (joining the branches of an If).

LCA = [
    # (a, b, lca)
    (tensor((n, 4)), tensor((n, 4)), tensor((n, 4))),
    (tensor((n, 4)), tensor((m, 4)), tensor(ndim=2)),
    (tensor((n, 4)), tensor((n, 4, 1)), tensor()),
    (tensor((n, 4), "float32"), tensor((n, 4), "float16"), tensor((n, 4), None)),
    (tensor((n, 4), "float32"), tensor((m,), "int8"), ANY_TENSOR),
    (tensor((n, 4)), tensor(ndim=2), tensor(ndim=2)),
    (tensor((n,)), ShapeInfo((n,)), OBJ),
    (ShapeInfo((n,)), ShapeInfo((m,)), ShapeInfo(ndim=1)),
    (ShapeInfo((n,)), ShapeInfo((n, m)), ShapeInfo()),
    (PrimInfo("int64", n), PrimInfo("int64", m), PrimInfo("int64")),
    (PrimInfo("int64", n), PrimInfo("int64", n), PrimInfo("int64", n)),
    (PrimInfo("int64"), PrimInfo("int32"), OBJ),
    (
        TupleInfo((tensor((n,)), PrimInfo())),
        TupleInfo((tensor((m,)), PrimInfo())),
        TupleInfo((tensor(ndim=1), PrimInfo())),
    ),
    (TupleInfo((OBJ,)), TupleInfo((OBJ, OBJ)), OBJ),
    (f([OBJ], tensor((n,))), f([OBJ], tensor((m,))), f([OBJ], tensor(ndim=1))),
    (f([tensor((n,))], OBJ), f([tensor((m,))], OBJ, pure=False), f(None, OBJ, pure=False)),
    (OBJ, tensor((n,)), OBJ),
    (f(None, OBJ), tensor(), OBJ),
]


@pytest.mark.parametrize("a, b, expected", LCA, ids=[str(i) for i in range(len(LCA))])
def test_lca(a: StructInfo, b: StructInfo, expected: StructInfo) -> None:
    assert lca(a, b) == expected
    assert lca(b, a) == expected
    assert is_base_of(expected, a) and is_base_of(expected, b)


def test_lca_uses_the_analyzer() -> None:
    an = Analyzer().bind("n", 8, 8)
    assert lca(tensor((n, 4)), tensor((8, 4)), an) in (tensor((n, 4)), tensor((8, 4)))
    assert lca(tensor((n, 4)), tensor((8, 4))) == tensor(ndim=2)


# ---------------------------------------------------------------------------------------------
# Substitution, free variables, construction.


def test_substitute_and_free_vars() -> None:
    info = TupleInfo((tensor((n, m * 2)), ShapeInfo((n,)), PrimInfo("int64", m + 1), f([tensor((n,))], OBJ)))
    assert free_vars(info) == {"n", "m"}
    assert substitute(info, {"m": 3, "n": S.var("b")}) == TupleInfo(
        (
            tensor((S.var("b"), 6)),
            ShapeInfo((S.var("b"),)),
            PrimInfo("int64", S.const(4)),
            f([tensor((S.var("b"),))], OBJ),
        )
    )
    assert substitute(tensor(ndim=2), {"n": 1}) == tensor(ndim=2)
    assert free_vars(OBJ) == set() and free_vars(tensor(ndim=2)) == set()


def test_construction() -> None:
    assert tensor((n, 4)).ndim == 2 and tensor((n, 4)).shape == (n, S.const(4))
    assert ShapeInfo((1, n)).ndim == 2
    with pytest.raises(ValueError, match="unknown dtype 'f32'"):
        tensor((n,), "f32")


# ---------------------------------------------------------------------------------------------
# Lattice laws on random infos.

dims = st.sampled_from([n, m, S.const(4), n * 2, n + m])
shapes = st.lists(dims, max_size=3).map(tuple)
leaf_infos = st.one_of(
    st.just(OBJ),
    st.builds(
        tensor, st.one_of(st.none(), shapes), st.sampled_from([None, "float32", "int8"]), st.integers(-1, 3)
    ),
    st.builds(ShapeInfo, st.one_of(st.none(), shapes), st.integers(-1, 3)),
    st.builds(PrimInfo, st.sampled_from(["int64", "int32"]), st.one_of(st.none(), dims)),
)


def _extend(children):
    return st.one_of(
        st.lists(children, max_size=3).map(lambda fs: TupleInfo(tuple(fs))),
        st.builds(f, st.one_of(st.none(), st.lists(children, max_size=2)), children, st.booleans()),
    )


infos = st.recursive(leaf_infos, _extend, max_leaves=6)
keeps = st.sets(st.sampled_from(["n", "m"]))


@settings(max_examples=200, deadline=None)
@given(infos, infos, infos, keeps)
def test_lattice_laws(a: StructInfo, b: StructInfo, c: StructInfo, keep: set[str]) -> None:
    assert is_base_of(a, a)
    assert is_base_of(OBJ, a)
    assert is_base_of(erase(a, keep), a)
    join = lca(a, b)
    assert is_base_of(join, a) and is_base_of(join, b)
    if is_base_of(a, b) and is_base_of(b, c):
        assert is_base_of(a, c)
    if is_base_of(c, a) and is_base_of(c, b):
        # The lca is a join: below any other common base (up to the analyzer's precision).
        assert is_base_of(c, join)
