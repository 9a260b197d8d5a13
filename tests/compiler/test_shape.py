"""Symbolic shape arithmetic: canonical form, proofs, bounds.

Tables are written as Python text over the variables n, m, k: `expr(text)` builds it with the
canonicalizing constructors, and `py_eval(text, values)` evaluates the same text with plain
Python ints, the oracle that owes nothing to our canonicalizer.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.shape import Analyzer, PrimExpr

VARS = ("n", "m", "k")
INF = math.inf


def expr(text: str) -> PrimExpr:
    namespace = {name: S.var(name) for name in VARS} | {"min": S.minimum, "max": S.maximum}
    return S.const(eval(text, {"__builtins__": {}}, namespace))


def py_eval(text: str, values: dict[str, int]) -> int:
    return eval(text, {"__builtins__": {}}, {"min": min, "max": max, **values})


def analyzer(bounds: dict[str, tuple[float, float]] | None) -> Analyzer:
    a = Analyzer()
    for name, (lo, hi) in (bounds or {}).items():
        a.bind(name, lo, hi)
    return a


# ---------------------------------------------------------------------------------------------
# Identities: both sides reach the same canonical node (through the analyzer's simplify when
# the identity needs bounds).

IDENTITIES = [
    # (lhs, rhs, bounds or None)
    ("n + n", "2 * n", None),
    ("2 * n + n", "3 * n", None),
    ("n - n", "0", None),
    ("0 * n + 5", "5", None),
    ("-(-n)", "n", None),
    ("(n + 3) - 3", "n", None),
    ("n * m - m * n", "0", None),
    ("(n + m) - (m + n)", "0", None),
    ("n * (m + 1)", "n * m + n", None),
    ("3 * (n + 2) - 6", "3 * n", None),
    ("(n + 1) * (n - 1)", "n * n - 1", None),
    ("(n + m) * (n + m)", "n * n + 2 * n * m + m * m", None),
    ("(4 * n) // 4", "n", None),
    ("(n * 4) // 2", "2 * n", None),
    ("(4 * n + 8) // 4", "n + 2", None),
    ("(4 * n + 5) // 4", "n + 1", None),
    ("(n + 4) // 4", "n // 4 + 1", None),
    ("(6 * n) // 4", "n + n // 2", None),
    ("(n - 1) // 4 + 1", "(n + 3) // 4", None),
    ("(n // 2) // 3", "n // 6", None),
    ("n // 1", "n", None),
    ("n // -2", "(-n) // 2", None),
    ("n // n", "1", None),
    ("(n * m) // m", "n", None),
    ("(n * m + m) // m", "n + 1", None),
    ("(8 * n) % 4", "0", None),
    ("(4 * n + 7) % 4", "3", None),
    ("(5 * n + 7) % 4", "(n + 3) % 4", None),
    ("(2 * n) % 4", "2 * (n % 2)", None),
    ("(n % 8) % 4", "n % 4", None),
    ("(n % 4) % 8", "n % 4", None),
    ("n % 1", "0", None),
    ("(n * m) % m", "0", None),
    ("4 * (n // 4) + n % 4", "n", None),
    ("(n // 4) * 4 + n % 4 + m", "n + m", None),
    ("min(n, n + 1)", "n", {"n": (0, INF)}),
    ("max(n, n - 2)", "n", None),
    ("min(n, m)", "min(m, n)", None),
    ("max(max(n, m), k)", "max(n, max(k, m))", None),
    ("min(min(n, 4), m)", "min(n, min(m, 4))", None),
    ("min(n, min(n, m))", "min(n, m)", None),
    ("min(n, 4096)", "n", {"n": (1, 4096)}),
    ("max(n, 1)", "n", {"n": (1, 4096)}),
    ("max(n, m)", "m", {"n": (1, 16), "m": (16, 4096)}),
    ("min(4 * n, 4 * n + m)", "4 * n", {"m": (0, INF)}),
    ("min(n // 2, n)", "n // 2", {"n": (0, INF)}),
    ("n % 8", "n", {"n": (0, 7)}),
    ("n // 8", "0", {"n": (0, 7)}),
    ("(n + 8) // 8", "1", {"n": (0, 7)}),
    ("n % 8", "n - 8", {"n": (8, 15)}),
    ("(n % 4) // 4", "0", {}),
]


@pytest.mark.parametrize("lhs, rhs, bounds", IDENTITIES, ids=[f"{a} == {b}" for a, b, _ in IDENTITIES])
def test_identity_is_structurally_equal(lhs: str, rhs: str, bounds: dict | None) -> None:
    if bounds is None:
        left, right = expr(lhs), expr(rhs)
    else:
        a = analyzer(bounds)
        left, right = a.simplify(expr(lhs)), a.simplify(expr(rhs))
    assert left == right, f"{lhs} -> {left}, {rhs} -> {right}"
    assert hash(left) == hash(right)
    assert analyzer(bounds).can_prove_equal(expr(lhs), expr(rhs))


# ---------------------------------------------------------------------------------------------
# Non-identities: false somewhere within the bounds (the counterexample is checked with Python
# ints), so the analyzer must not prove them.

NON_IDENTITIES = [
    # (claim, relation, bounds, counterexample)
    (("(n // 2) * 2", "n"), "eq", None, {"n": 3}),
    (("n - 1", None), "nonneg", None, {"n": 0}),
    (("n - 1", None), "nonneg", {"n": (-INF, 4096)}, {"n": 0}),
    (("n * m", "n"), "eq", None, {"n": 1, "m": 2}),
    (("n % 4", "n"), "eq", None, {"n": 5}),
    (("min(n, m)", "n"), "eq", None, {"n": 2, "m": 1}),
    (("max(n, 0)", "n"), "eq", None, {"n": -1}),
    (("(n + m) // 2", "n // 2 + m // 2"), "eq", None, {"n": 1, "m": 1}),
    (("(n // m) * m", "n"), "eq", {"m": (1, INF)}, {"n": 3, "m": 2}),
    (("(n - 1) // 4", "n // 4"), "eq", {"n": (1, 4096)}, {"n": 4}),
    (("n + 1", "n"), "le", None, {"n": 0}),
    (("n", "m"), "le", {"n": (1, 4096), "m": (1, 4096)}, {"n": 2, "m": 1}),
    (("2 * n", "n + 4096"), "lt", {"n": (1, 4096)}, {"n": 4096}),
    (("n * 4", "16383"), "le", {"n": (1, 4096)}, {"n": 4096}),
    (("n % 4", "2"), "le", {"n": (0, INF)}, {"n": 3}),
    (("n * n", "n * m"), "le", {"n": (1, 8), "m": (1, 8)}, {"n": 2, "m": 1}),
    (("n // 2", "n // 3"), "eq", {"n": (0, 100)}, {"n": 2}),
    (("min(n, 16)", "16"), "eq", {"n": (1, 4096)}, {"n": 1}),
]


def _holds(relation: str, lhs: str, rhs: str | None, values: dict[str, int]) -> bool:
    a = py_eval(lhs, values)
    b = None if rhs is None else py_eval(rhs, values)
    return {"eq": lambda: a == b, "le": lambda: a <= b, "lt": lambda: a < b, "nonneg": lambda: a >= 0}[
        relation
    ]()


def _proves(an: Analyzer, relation: str, lhs: str, rhs: str | None) -> bool:
    if relation == "nonneg":
        return an.can_prove_nonneg(expr(lhs))
    prove = {"eq": an.can_prove_equal, "le": an.can_prove_le, "lt": an.can_prove_lt}[relation]
    return prove(expr(lhs), expr(rhs))


@pytest.mark.parametrize(
    "claim, relation, bounds, counterexample",
    NON_IDENTITIES,
    ids=[f"{c[0]} {r} {c[1]}" for c, r, _, _ in NON_IDENTITIES],
)
def test_non_identity_is_not_proven(claim, relation: str, bounds, counterexample: dict) -> None:
    lhs, rhs = claim
    for name, value in counterexample.items():
        lo, hi = (bounds or {}).get(name, (-INF, INF))
        assert lo <= value <= hi, "the counterexample must lie within the bounds"
    assert not _holds(relation, lhs, rhs, counterexample), "the table's claim must be false"
    an = analyzer(bounds)
    assert not _proves(an, relation, lhs, rhs)
    if relation == "eq":
        assert an.simplify(expr(lhs)) != an.simplify(expr(rhs))


# Facts the analyzer must prove: case splits on min/max, floor division and modulo bounds.

PROVABLE = [
    # (lhs, relation, rhs, bounds)
    ("min(n, 16)", "le", "n", None),
    ("n", "le", "max(n, m)", None),
    ("min(n, m)", "le", "max(n, m)", None),
    ("4 * (n // 4)", "le", "n", None),
    ("n - 4", "lt", "4 * (n // 4)", None),
    ("n", "le", "4 * ((n + 3) // 4)", None),
    ("n % 4", "le", "n", {"n": (0, INF)}),
    ("n // 2", "lt", "n", {"n": (1, INF)}),
    ("(n + 3) // 4", "le", "n", {"n": (1, INF)}),
    ("(n * m) // 4", "le", "n * m", {"n": (0, INF), "m": (0, INF)}),
    ("n * 4", "le", "16384", {"n": (1, 4096)}),
    ("min(n, 16)", "eq", "16", {"n": (16, 4096)}),
    ("n % 4", "lt", "4", None),
    ("n", "ne", "n + 1", None),
    ("n - 1", "nonneg", None, {"n": (1, 4096)}),
]


@pytest.mark.parametrize(
    "lhs, relation, rhs, bounds", PROVABLE, ids=[f"{p[0]} {p[1]} {p[2]}" for p in PROVABLE]
)
def test_provable(lhs: str, relation: str, rhs: str | None, bounds: dict | None) -> None:
    an = analyzer(bounds)
    if relation == "nonneg":
        assert an.can_prove_nonneg(expr(lhs))
    else:
        prove = {
            "eq": an.can_prove_equal,
            "le": an.can_prove_le,
            "lt": an.can_prove_lt,
            "ne": an.can_prove_ne,
        }
        assert prove[relation](expr(lhs), expr(rhs))


# ---------------------------------------------------------------------------------------------
# Upper and lower bounds used by memory planning.

BOUNDS = [
    # (expr, bounds, expected upper, expected lower)
    ("n * 4", {"n": (1, 4096)}, 16384, 4),
    ("n + m", {"n": (1, 4096), "m": (1, 4096)}, 8192, 2),
    ("n * m", {"n": (1, 4096), "m": (1, 4096)}, 16777216, 1),
    ("n * m * 576 * 4", {"n": (1, 2048), "m": (1, 4)}, 18874368, 2304),
    ("(n + 3) // 4", {"n": (1, 4096)}, 1024, 1),
    ("n % 8", {"n": (0, 4096)}, 7, 0),
    ("n % 8", {"n": (0, 5)}, 5, 0),
    ("min(n, 512)", {"n": (1, 4096)}, 512, 1),
    ("max(n, m)", {"n": (1, 4096), "m": (1, 100)}, 4096, 1),
    ("n - m", {"n": (1, 4096), "m": (1, 10)}, 4095, -9),
    ("(n * (n + 1)) // 2", {"n": (1, 64)}, 2080, 1),
    ("n // m", {"n": (0, 4096), "m": (2, 8)}, 2048, 0),
    ("2 * n - 1", {"n": (1, 4096)}, 8191, 1),
    ("-n", {"n": (1, 4096)}, -1, -4096),
    ("n * (m % 4)", {"n": (1, 4096)}, 12288, 0),
    ("(n // 2) * 2", {"n": (1, 4096)}, 4096, 0),
    ("n * n", {"n": (-3, 2)}, 9, 0),
    ("min(n, 16) * m", {"n": (1, 4096), "m": (1, 8)}, 128, 1),
    ("n", {"n": (1, INF)}, None, 1),
    ("n * m", {"n": (1, 4096)}, None, None),
    ("n // m", {"n": (0, 100), "m": (-INF, INF)}, None, None),
]


@pytest.mark.parametrize("text, bounds, upper, lower", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_bounds(text: str, bounds: dict, upper: int | None, lower: int | None) -> None:
    an = analyzer(bounds)
    assert an.upper_bound(expr(text)) == upper
    assert an.lower_bound(expr(text)) == lower


# ---------------------------------------------------------------------------------------------
# Substitution, evaluation, free variables, text.


def test_substitute_evaluate_free_vars() -> None:
    e = expr("n * m + (n + 3) // 4 - min(k, 2)")
    assert S.free_vars(e) == {"n", "m", "k"}
    assert S.substitute(e, {"m": 2}) == expr("2 * n + (n + 3) // 4 - min(k, 2)")
    assert S.substitute(e, {"n": expr("4 * k")}) == expr("4 * k * m + k - min(k, 2)")
    assert S.evaluate(e, {"n": 5, "m": 3, "k": 7}) == 15 + 2 - 2
    with pytest.raises(KeyError, match="k"):
        S.evaluate(e, {"n": 5, "m": 3})
    assert S.free_vars(S.const(3)) == set()


@pytest.mark.parametrize(
    "text, printed",
    [
        ("n + n", "2 * n"),
        ("n // (m // 2)", "n // (m // 2)"),
        ("(n // m) // 2", "n // m // 2"),
        ("n % (m % 3)", "n % (m % 3)"),
        ("(n + 1) // 4", "(n + 1) // 4"),
        ("2 * (n // 4) - 1", "2 * (n // 4) - 1"),
        ("min(n, 16)", "min(16, n)"),
    ],
)
def test_to_str(text: str, printed: str) -> None:
    assert S.to_str(expr(text)) == printed
    assert expr(printed) == expr(text)


def test_errors() -> None:
    with pytest.raises(ZeroDivisionError):
        S.floordiv(S.var("n"), 0)
    with pytest.raises(ZeroDivisionError):
        S.floormod(S.var("n"), 0)
    with pytest.raises(TypeError, match="expected an int"):
        S.const(1.5)
    with pytest.raises(TypeError, match="expected an int"):
        S.const(True)


# ---------------------------------------------------------------------------------------------
# Property tests on random expressions. A tree is a tuple (op, *operands) or a leaf (a
# variable name or an int); `_text` renders it as Python so that `py_eval` is the oracle.

leaves = st.one_of(st.sampled_from(VARS), st.integers(-6, 6))


def _extend(children):
    binary = st.tuples(st.sampled_from(["+", "-", "*", "min", "max"]), children, children)
    by_const = st.tuples(st.sampled_from(["//", "%"]), children, st.integers(1, 8))
    return st.one_of(binary, by_const)


trees = st.recursive(leaves, _extend, max_leaves=8)


def _text(t) -> str:
    match t:
        case str() | int():
            return f"({t})"
        case ("min" | "max" as op, a, b):
            return f"{op}({_text(a)}, {_text(b)})"
        case (op, a, b):
            return f"({_text(a)} {op} {_text(b)})"
    raise AssertionError(t)


def _build(t) -> PrimExpr:
    match t:
        case str():
            return S.var(t)
        case int():
            return S.const(t)
        case (op, a, b):
            fn = {
                "+": S.add,
                "-": S.sub,
                "*": S.mul,
                "//": S.floordiv,
                "%": S.floormod,
                "min": S.minimum,
                "max": S.maximum,
            }[op]
            return fn(_build(a), _build(b))
    raise AssertionError(t)


@st.composite
def bounded(draw):
    """Bounds for every variable (some sides open) and points within them: every corner of the
    box where a side is finite, and random points."""
    bounds = {}
    for name in VARS:
        lo = draw(st.one_of(st.just(-INF), st.integers(-20, 20)))
        hi = draw(
            st.one_of(st.just(INF), st.integers(0, 40).map(lambda w, lo=lo: (0 if lo == -INF else lo) + w))
        )
        bounds[name] = (lo, hi)
    ranges = {
        n: (
            lo if lo > -INF else (hi if hi < INF else 0) - 60,
            hi if hi < INF else (lo if lo > -INF else 0) + 60,
        )
        for n, (lo, hi) in bounds.items()
    }
    corners = [
        dict(zip(VARS, c)) for c in itertools.product(*(sorted({lo, hi}) for lo, hi in ranges.values()))
    ]
    points = draw(
        st.lists(
            st.fixed_dictionaries({n: st.integers(lo, hi) for n, (lo, hi) in ranges.items()}),
            min_size=4,
            max_size=8,
        )
    )
    return bounds, corners + points


points = st.lists(st.fixed_dictionaries({n: st.integers(-40, 40) for n in VARS}), min_size=4, max_size=8)

SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(trees, points)
def test_canonical_form_evaluates_like_the_original(tree, values) -> None:
    e = _build(tree)
    for v in values:
        assert S.evaluate(e, v) == py_eval(_text(tree), v), (_text(tree), str(e), v)


@SETTINGS
@given(trees, points)
def test_text_round_trips(tree, values) -> None:
    e = _build(tree)
    assert expr(S.to_str(e)) == e
    for v in values:
        assert py_eval(S.to_str(e), v) == py_eval(_text(tree), v)


@SETTINGS
@given(trees, bounded())
def test_simplify_and_bounds_hold_within_bounds(tree, box) -> None:
    bounds, values = box
    an = analyzer(bounds)
    e = _build(tree)
    simplified = an.simplify(e)
    upper, lower = an.upper_bound(e), an.lower_bound(e)
    for v in values:
        truth = py_eval(_text(tree), v)
        assert S.evaluate(simplified, v) == truth, (_text(tree), str(simplified), bounds, v)
        assert upper is None or truth <= upper, (_text(tree), bounds, v)
        assert lower is None or truth >= lower, (_text(tree), bounds, v)


def _related(draw_tree):
    """Pairs (a, b) where b is often provably related to a, so that proofs are exercised."""
    return st.one_of(
        st.tuples(draw_tree, draw_tree),
        st.builds(lambda a, t: (a, ("max", a, t)), draw_tree, draw_tree),
        st.builds(lambda a, t: (("min", a, t), a), draw_tree, draw_tree),
        st.builds(lambda a, c: (a, ("+", a, c)), draw_tree, st.integers(-3, 3)),
        st.builds(lambda a, d: (("*", ("//", a, d), d), a), draw_tree, st.integers(1, 8)),
        st.builds(lambda a, d: (("%", a, d), a), draw_tree, st.integers(1, 8)),
    )


@SETTINGS
@given(_related(trees), bounded())
def test_every_proven_fact_holds_within_bounds(pair, box) -> None:
    bounds, values = box
    an = analyzer(bounds)
    ta, tb = pair
    a, b = _build(ta), _build(tb)
    facts = {
        "le": an.can_prove_le(a, b),
        "lt": an.can_prove_lt(a, b),
        "ge": an.can_prove_ge(a, b),
        "eq": an.can_prove_equal(a, b),
        "ne": an.can_prove_ne(a, b),
        "nonneg": an.can_prove_nonneg(a),
    }
    for v in values:
        x, y = py_eval(_text(ta), v), py_eval(_text(tb), v)
        truth = {"le": x <= y, "lt": x < y, "ge": x >= y, "eq": x == y, "ne": x != y, "nonneg": x >= 0}
        for name, proven in facts.items():
            assert not proven or truth[name], (name, _text(ta), _text(tb), bounds, v)
