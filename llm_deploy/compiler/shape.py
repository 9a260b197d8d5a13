"""Symbolic integer expressions for shapes, kept in a canonical form, and a bounds analyzer.

Every expression is built through the smart constructors below, so it is always canonical:
a sum of monomials with integer coefficients over *atoms* (symbolic variables, and floor
division, floor modulo, min and max that could not be simplified away). Two expressions that
are equal as polynomials are therefore equal as Python objects: `n + n == 2 * n` holds with `==`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Union

IntLike = Union[int, "PrimExpr"]


class PrimExpr:
    """Base of symbolic integer expressions; arithmetic operators build canonical nodes."""

    __slots__ = ()

    # Operands that are neither ints nor PrimExprs (e.g. tir values) get NotImplemented, so Python
    # asks the other operand's reflected method.
    def __add__(self, other: IntLike) -> PrimExpr:
        return add(self, other) if _is_int_like(other) else NotImplemented

    def __radd__(self, other: IntLike) -> PrimExpr:
        return add(other, self) if _is_int_like(other) else NotImplemented

    def __sub__(self, other: IntLike) -> PrimExpr:
        return sub(self, other) if _is_int_like(other) else NotImplemented

    def __rsub__(self, other: IntLike) -> PrimExpr:
        return sub(other, self) if _is_int_like(other) else NotImplemented

    def __mul__(self, other: IntLike) -> PrimExpr:
        return mul(self, other) if _is_int_like(other) else NotImplemented

    def __rmul__(self, other: IntLike) -> PrimExpr:
        return mul(other, self) if _is_int_like(other) else NotImplemented

    def __floordiv__(self, other: IntLike) -> PrimExpr:
        return floordiv(self, other) if _is_int_like(other) else NotImplemented

    def __rfloordiv__(self, other: IntLike) -> PrimExpr:
        return floordiv(other, self) if _is_int_like(other) else NotImplemented

    def __mod__(self, other: IntLike) -> PrimExpr:
        return floormod(self, other) if _is_int_like(other) else NotImplemented

    def __rmod__(self, other: IntLike) -> PrimExpr:
        return floormod(other, self) if _is_int_like(other) else NotImplemented

    def __neg__(self) -> PrimExpr:
        return mul(self, -1)

    def __str__(self) -> str:
        return to_str(self)


def _is_int_like(v: object) -> bool:
    if isinstance(v, PrimExpr):
        return True
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    try:
        import numpy as np

        return isinstance(v, np.integer)
    except ImportError:  # pragma: no cover
        return False


@dataclass(frozen=True, slots=True, eq=False)
class IntImm(PrimExpr):
    value: int

    def __repr__(self) -> str:
        return str(self.value)

    # A constant equals the plain int it holds (and hashes like it), so `expr == 0` reads naturally.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, IntImm):
            return self.value == other.value
        if isinstance(other, int) and not isinstance(other, bool):
            return self.value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)


@dataclass(frozen=True, slots=True)
class SymVar(PrimExpr):
    """A named symbolic dimension. Variables are identified by name within a function."""

    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class FloorDiv(PrimExpr):
    a: PrimExpr
    b: PrimExpr

    def __repr__(self) -> str:
        return to_str(self)


@dataclass(frozen=True, slots=True)
class FloorMod(PrimExpr):
    a: PrimExpr
    b: PrimExpr

    def __repr__(self) -> str:
        return to_str(self)


@dataclass(frozen=True, slots=True)
class Min(PrimExpr):
    a: PrimExpr
    b: PrimExpr

    def __repr__(self) -> str:
        return to_str(self)


@dataclass(frozen=True, slots=True)
class Max(PrimExpr):
    a: PrimExpr
    b: PrimExpr

    def __repr__(self) -> str:
        return to_str(self)


# A monomial is a sorted tuple of (atom, power); the empty monomial is the constant 1.
Monomial = tuple[tuple[PrimExpr, int], ...]


@dataclass(frozen=True, slots=True)
class Sum(PrimExpr):
    """sum(coeff * monomial) + const, terms sorted, no zero coefficients, never a lone atom."""

    terms: tuple[tuple[Monomial, int], ...]
    const: int = 0

    def __repr__(self) -> str:
        return to_str(self)


ATOMS = (SymVar, FloorDiv, FloorMod, Min, Max)


# ---------------------------------------------------------------------------------------------
# Polynomial view: every canonical expression is read as {monomial: coeff}.


def _atom_key(atom: PrimExpr) -> tuple:
    order = {SymVar: 0, FloorDiv: 1, FloorMod: 2, Min: 3, Max: 4}
    return (order[type(atom)], to_str(atom))


def _mono_key(mono: Monomial) -> tuple:
    return (-sum(p for _, p in mono), tuple((_atom_key(a), p) for a, p in mono))


def _poly(e: PrimExpr) -> dict[Monomial, int]:
    if isinstance(e, IntImm):
        return {(): e.value} if e.value else {}
    if isinstance(e, Sum):
        poly = dict(e.terms)
        if e.const:
            poly[()] = e.const
        return poly
    if isinstance(e, ATOMS):
        return {((e, 1),): 1}
    raise TypeError(f"not a symbolic integer expression: {e!r}")


def _from_poly(poly: dict[Monomial, int]) -> PrimExpr:
    poly = _fold_divmod({m: c for m, c in poly.items() if c})
    const = poly.pop((), 0)
    if not poly:
        return IntImm(const)
    if const == 0 and len(poly) == 1:
        ((mono, coeff),) = poly.items()
        if coeff == 1 and len(mono) == 1 and mono[0][1] == 1:
            return mono[0][0]
    terms = tuple(sorted(poly.items(), key=lambda mc: _mono_key(mc[0])))
    return Sum(terms, const)


def _lone_atom(mono: Monomial) -> PrimExpr | None:
    return mono[0][0] if len(mono) == 1 and mono[0][1] == 1 else None


def _const_divisor(atom: PrimExpr | None, kind: type) -> int | None:
    if isinstance(atom, kind) and isinstance(atom.b, IntImm) and atom.b.value > 0:
        return atom.b.value
    return None


def _fold_divmod(poly: dict[Monomial, int]) -> dict[Monomial, int]:
    """Fold k*d*(x // d) + k*(y % d) into k*x where x - y is a multiple of d.

    Exact: with x == y + d*q, d*(x // d) + y % d == d*(y // d) + d*q + y % d == y + d*q == x.
    Only same-sign pairs fold, and as much as the smaller one allows, so one of the two atoms
    always disappears and the result does not depend on the order terms were added in.
    """
    changed = True
    while changed:
        changed = False
        for mono_m, c_m in poly.items():
            d = _const_divisor(_lone_atom(mono_m), FloorMod)
            if d is None:
                continue
            y = _poly(mono_m[0][0].a)
            for mono_q, c_q in poly.items():
                if _const_divisor(_lone_atom(mono_q), FloorDiv) != d or c_q % d or (c_q > 0) != (c_m > 0):
                    continue
                x = _poly(mono_q[0][0].a)
                if any((x.get(k, 0) - y.get(k, 0)) % d for k in x.keys() | y.keys()):
                    continue
                k = min(c_q // d, c_m) if c_m > 0 else max(c_q // d, c_m)
                poly[mono_m] -= k
                poly[mono_q] -= k * d
                for mono, c in x.items():
                    poly[mono] = poly.get(mono, 0) + k * c
                poly = {mono: c for mono, c in poly.items() if c}
                changed = True
                break
            if changed:
                break
    return poly


def _mono_mul(a: Monomial, b: Monomial) -> Monomial:
    powers: dict[PrimExpr, int] = dict(a)
    for atom, p in b:
        powers[atom] = powers.get(atom, 0) + p
    return tuple(sorted(powers.items(), key=lambda ap: _atom_key(ap[0])))


def _mono_div(a: Monomial, b: Monomial) -> Monomial | None:
    """a / b if b divides a exactly, else None."""
    powers: dict[PrimExpr, int] = dict(a)
    for atom, p in b:
        if powers.get(atom, 0) < p:
            return None
        powers[atom] -= p
    return tuple(sorted(((k, v) for k, v in powers.items() if v), key=lambda ap: _atom_key(ap[0])))


# ---------------------------------------------------------------------------------------------
# Smart constructors: the only way expressions are built, so results are always canonical.


def const(value: IntLike) -> PrimExpr:
    if isinstance(value, PrimExpr):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                return IntImm(int(value))
        except ImportError:  # pragma: no cover
            pass
        raise TypeError(f"expected an int or a symbolic expression, got {value!r}")
    return IntImm(value)


def var(name: str) -> SymVar:
    return SymVar(name)


def add(a: IntLike, b: IntLike) -> PrimExpr:
    pa, pb = _poly(const(a)), _poly(const(b))
    for m, c in pb.items():
        pa[m] = pa.get(m, 0) + c
    return _from_poly(pa)


def sub(a: IntLike, b: IntLike) -> PrimExpr:
    return add(a, mul(b, -1))


def mul(a: IntLike, b: IntLike) -> PrimExpr:
    pa, pb = _poly(const(a)), _poly(const(b))
    out: dict[Monomial, int] = {}
    for ma, ca in pa.items():
        for mb, cb in pb.items():
            m = _mono_mul(ma, mb)
            out[m] = out.get(m, 0) + ca * cb
    return _from_poly(out)


def _trunc_div(c: int, d: int) -> int:
    return -(-c // d) if c < 0 else c // d


def _split_quotient(poly: dict[Monomial, int], d: int) -> tuple[dict, dict]:
    """poly == d * quotient + rest, with |coefficients| of rest below d and its constant in [0, d).

    Coefficients are split toward zero (7n -> 4n + 3n, -7n -> -4n - 3n) so that both parts move
    the same way as n grows, which keeps interval bounds of `quotient + rest // d` tight; the
    constant is split by floor so that `(n - 1) // 4 + 1` and `(n + 3) // 4` meet.
    """
    quotient, rest = {}, {}
    for m, c in poly.items():
        q = c // d if m == () else _trunc_div(c, d)
        if q:
            quotient[m] = q
        if c - q * d:
            rest[m] = c - q * d
    return quotient, rest


def _poly_gcd(poly: dict[Monomial, int], d: int) -> int:
    g = d
    for c in poly.values():
        g = math.gcd(g, c)
    return g


def _scaled(poly: dict[Monomial, int], num: int, den: int = 1) -> dict[Monomial, int]:
    return {m: c * num // den for m, c in poly.items()}


def floordiv(a: IntLike, b: IntLike) -> PrimExpr:
    a, b = const(a), const(b)
    if isinstance(b, IntImm):
        d = b.value
        if d == 0:
            raise ZeroDivisionError(f"symbolic floor division by zero: {a} // 0")
        if isinstance(a, IntImm):
            return IntImm(a.value // d)
        if d < 0:
            # a // -d == (-a) // d
            return floordiv(mul(a, -1), -d)
        if d == 1:
            return a
        # (d*q + r) // d == q + r // d, exact for floor division since q is an integer.
        quotient, rest = _split_quotient(_poly(a), d)
        q = _from_poly(quotient)
        # (g*r) // (g*k) == r // k
        g = _poly_gcd(rest, d)
        rest, d = _scaled(rest, 1, g), d // g
        r = _from_poly(rest)
        if isinstance(r, IntImm):
            return add(q, r.value // d)
        if d == 1:
            return add(q, r)
        # (x // c) // d == x // (c*d) for positive c, d.
        c = _const_divisor(r, FloorDiv)
        if c is not None:
            return add(q, floordiv(r.a, c * d))
        return add(q, FloorDiv(r, IntImm(d)))
    # Symbolic divisor: cancel a monomial that divides every term, (m*q) // m == q for m != 0.
    pb = _poly(b)
    if len(pb) == 1:
        ((mono_b, coeff_b),) = pb.items()
        if coeff_b == 1 and mono_b:
            pa = _poly(a)
            quotient = {}
            for m, c in pa.items():
                q = _mono_div(m, mono_b)
                if q is None:
                    break
                quotient[q] = c
            else:
                return _from_poly(quotient)
    if a == b:
        return IntImm(1)
    return FloorDiv(a, b)


def floormod(a: IntLike, b: IntLike) -> PrimExpr:
    a, b = const(a), const(b)
    if isinstance(b, IntImm):
        d = b.value
        if d == 0:
            raise ZeroDivisionError(f"symbolic floor modulo by zero: {a} % 0")
        if isinstance(a, IntImm):
            return IntImm(a.value % d)
        if d < 0:
            # a % -d == -((-a) % d)
            return mul(floormod(mul(a, -1), -d), -1)
        if d == 1:
            return IntImm(0)
        # (d*q + r) % d == r % d; coefficients and the constant reduce into [0, d):
        # (5n + 7) % 4 == (n + 3) % 4.
        rest = {m: c % d for m, c in _poly(a).items() if c % d}
        # (g*r) % (g*k) == g * (r % k)
        g = _poly_gcd(rest, d)
        rest, d = _scaled(rest, 1, g), d // g
        r = _from_poly(rest)
        if isinstance(r, IntImm):
            return IntImm(g * (r.value % d))
        if d == 1:
            return IntImm(0)
        c = _const_divisor(r, FloorMod)
        if c is not None:
            if c <= d:
                # 0 <= x % c < c <= d, so the outer modulo is a no-op.
                return mul(r, g)
            if c % d == 0:
                # (x % (k*d)) % d == x % d
                return mul(floormod(r.a, d), g)
        return mul(FloorMod(r, IntImm(d)), g)
    if sub(a, mul(floordiv(a, b), b)) == IntImm(0):
        return IntImm(0)
    return FloorMod(a, b)


def _min_max(a: IntLike, b: IntLike, node: type, keep_first: Callable[[int], bool]) -> PrimExpr:
    """min/max of the operands of nested nodes of the same kind, flattened into a canonical chain.

    Operands are deduplicated, an operand a constant away from another is dropped (min(n, n + 1)
    is n), and the rest sorted by text and nested to the left: min(min(a, b), c).
    """
    operands: list[PrimExpr] = []

    def collect(e: PrimExpr) -> None:
        if isinstance(e, node):
            collect(e.a)
            collect(e.b)
        else:
            operands.append(e)

    collect(const(a))
    collect(const(b))
    kept: list[PrimExpr] = []
    for x in operands:
        for i, y in enumerate(kept):
            diff = sub(x, y)
            if isinstance(diff, IntImm):
                if keep_first(diff.value):
                    kept[i] = x
                break
        else:
            kept.append(x)
    kept.sort(key=to_str)
    out = kept[0]
    for x in kept[1:]:
        out = node(out, x)
    return out


def minimum(a: IntLike, b: IntLike) -> PrimExpr:
    return _min_max(a, b, Min, lambda diff: diff < 0)


def maximum(a: IntLike, b: IntLike) -> PrimExpr:
    return _min_max(a, b, Max, lambda diff: diff > 0)


# ---------------------------------------------------------------------------------------------
# Traversal: substitution, evaluation, free variables, printing.


def substitute(e: IntLike, mapping: Mapping[str, IntLike]) -> PrimExpr:
    """Replace variables by name and re-canonicalize."""
    e = const(e)
    match e:
        case IntImm():
            return e
        case SymVar(name):
            return const(mapping[name]) if name in mapping else e
        case FloorDiv(a, b):
            return floordiv(substitute(a, mapping), substitute(b, mapping))
        case FloorMod(a, b):
            return floormod(substitute(a, mapping), substitute(b, mapping))
        case Min(a, b):
            return minimum(substitute(a, mapping), substitute(b, mapping))
        case Max(a, b):
            return maximum(substitute(a, mapping), substitute(b, mapping))
        case Sum(terms, c):
            out: PrimExpr = IntImm(c)
            for mono, coeff in terms:
                t: PrimExpr = IntImm(coeff)
                for atom, p in mono:
                    a = substitute(atom, mapping)
                    for _ in range(p):
                        t = mul(t, a)
                out = add(out, t)
            return out
    raise TypeError(f"not a symbolic integer expression: {e!r}")


def evaluate(e: IntLike, values: Mapping[str, int]) -> int:
    """The integer value of `e` given every free variable's value."""
    result = substitute(e, values)
    if not isinstance(result, IntImm):
        missing = sorted(free_vars(result))
        raise KeyError(f"cannot evaluate {e}: no value for {', '.join(missing)}")
    return result.value


def free_vars(e: IntLike) -> set[str]:
    e = const(e)
    match e:
        case IntImm():
            return set()
        case SymVar(name):
            return {name}
        case FloorDiv(a, b) | FloorMod(a, b) | Min(a, b) | Max(a, b):
            return free_vars(a) | free_vars(b)
        case Sum(terms, _):
            out: set[str] = set()
            for mono, _ in terms:
                for atom, _ in mono:
                    out |= free_vars(atom)
            return out
    raise TypeError(f"not a symbolic integer expression: {e!r}")


def _operand_str(e: PrimExpr, divisor: bool) -> str:
    """An operand of // or %: sums always need parentheses; a divisor that is itself // or %
    does too, since `n // (m // 2)` and `n // m // 2` differ."""
    s = to_str(e)
    wrap = isinstance(e, Sum) or (divisor and isinstance(e, (FloorDiv, FloorMod)))
    return f"({s})" if wrap else s


def to_str(e: IntLike) -> str:
    """Text form, valid Python: `2 * n + m // 4`, `min(n, 16)`."""
    e = const(e)
    match e:
        case IntImm(v):
            return str(v)
        case SymVar(name):
            return name
        case FloorDiv(a, b):
            return f"{_operand_str(a, False)} // {_operand_str(b, True)}"
        case FloorMod(a, b):
            return f"{_operand_str(a, False)} % {_operand_str(b, True)}"
        case Min(a, b):
            return f"min({to_str(a)}, {to_str(b)})"
        case Max(a, b):
            return f"max({to_str(a)}, {to_str(b)})"
        case Sum(terms, c):
            parts: list[str] = []
            for mono, coeff in terms:
                factors = []
                for atom, p in mono:
                    s = to_str(atom)
                    if isinstance(atom, (FloorDiv, FloorMod)):
                        s = f"({s})"
                    factors.extend([s] * p)
                body = " * ".join(factors)
                if coeff == 1:
                    term = body
                elif coeff == -1:
                    term = f"-{body}"
                else:
                    term = f"{coeff} * {body}"
                parts.append(term)
            if c:
                parts.append(str(c))
            text = parts[0]
            for p in parts[1:]:
                text += f" - {p[1:]}" if p.startswith("-") else f" + {p}"
            return text
    raise TypeError(f"not a symbolic integer expression: {e!r}")


# ---------------------------------------------------------------------------------------------
# Bounds analysis.

INF = math.inf

# How many case splits and relaxations a proof may chain; each step removes one min, max,
# floor division or floor modulo from the expression, so shapes need only a few.
PROOF_DEPTH = 6


@dataclass(frozen=True)
class Interval:
    lo: float  # an int, or -inf
    hi: float  # an int, or +inf

    def __add__(self, o: Interval) -> Interval:
        return Interval(self.lo + o.lo, self.hi + o.hi)

    def scale(self, c: int) -> Interval:
        a, b = _safe_mul(self.lo, c), _safe_mul(self.hi, c)
        return Interval(min(a, b), max(a, b))

    def __mul__(self, o: Interval) -> Interval:
        products = [_safe_mul(x, y) for x in (self.lo, self.hi) for y in (o.lo, o.hi)]
        return Interval(min(products), max(products))

    def __neg__(self) -> Interval:
        return Interval(-self.hi, -self.lo)


def _safe_mul(x: float, y: float) -> float:
    if x == 0 or y == 0:
        return 0
    return x * y


def _div_corner(x: float, y: float) -> float:
    """x // y for y >= 1, where x and y may be infinite (the limit as they grow)."""
    if math.isinf(x):
        return x
    if math.isinf(y):
        return 0 if x >= 0 else -1
    return x // y


def _div_interval(ia: Interval, ib: Interval) -> Interval:
    """Bounds of a // b. For b >= 1, a // b grows with a and moves monotonically with b for a
    fixed a, so the extremes lie on the corners; b <= -1 reduces to it via a // b == (-a) // (-b)."""
    if ib.lo >= 1:
        corners = [_div_corner(x, y) for x in (ia.lo, ia.hi) for y in (ib.lo, ib.hi)]
        return Interval(min(corners), max(corners))
    if ib.hi <= -1:
        return _div_interval(-ia, -ib)
    return Interval(-INF, INF)


def _mod_interval(ia: Interval, ib: Interval) -> Interval:
    if ib.lo >= 1:
        if ia.lo >= 0 and ia.hi < ib.lo:
            return ia  # a % b == a
        hi = ib.hi - 1
        return Interval(0, min(hi, ia.hi) if ia.lo >= 0 else hi)
    if ib.hi <= -1:
        return Interval(ib.lo + 1, 0)
    return Interval(-INF, INF)


@dataclass
class Analyzer:
    """Knows `lo <= var <= hi` for symbolic variables and proves facts symbolically.

    Proofs run on the canonical form with interval arithmetic, splitting cases on min and max
    and bounding floor division (d*(x // d) lies in [x - d + 1, x]); a fact that cannot be
    shown is reported as not proven (never guessed by sampling values). Every `can_prove_*`
    answer of True is a theorem for all values within the bounds.
    """

    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    def bind(self, name: str, lo: float = -INF, hi: float = INF) -> Analyzer:
        old_lo, old_hi = self.bounds.get(name, (-INF, INF))
        self.bounds[name] = (max(old_lo, lo), min(old_hi, hi))
        return self

    def interval(self, e: IntLike) -> Interval:
        e = const(e)
        match e:
            case IntImm(v):
                return Interval(v, v)
            case SymVar(name):
                lo, hi = self.bounds.get(name, (-INF, INF))
                return Interval(lo, hi)
            case Sum(terms, c):
                out = Interval(c, c)
                for mono, coeff in terms:
                    out = out + self._mono_interval(mono).scale(coeff)
                return out
            case FloorDiv(a, b):
                return _div_interval(self.interval(a), self.interval(b))
            case FloorMod(a, b):
                return _mod_interval(self.interval(a), self.interval(b))
            case Min(a, b):
                ia, ib = self.interval(a), self.interval(b)
                return Interval(min(ia.lo, ib.lo), min(ia.hi, ib.hi))
            case Max(a, b):
                ia, ib = self.interval(a), self.interval(b)
                return Interval(max(ia.lo, ib.lo), max(ia.hi, ib.hi))
        raise TypeError(f"not a symbolic integer expression: {e!r}")

    def _mono_interval(self, mono: Monomial) -> Interval:
        out = Interval(1, 1)
        for atom, p in mono:
            ia = self.interval(atom)
            if p % 2 == 0 and p > 0:
                # Even powers are non-negative whatever the sign of the base.
                lo = 0 if ia.lo <= 0 <= ia.hi else _pow(min(abs(ia.lo), abs(ia.hi)), p)
                hi = max(_pow(abs(ia.lo), p), _pow(abs(ia.hi), p))
                out = out * Interval(lo, hi)
            else:
                for _ in range(p):
                    out = out * ia
        return out

    def simplify(self, e: IntLike) -> PrimExpr:
        """Canonical form, then bound-driven rewrites: min/max decided, x // d and x % d folded
        when the bounds of x leave one quotient."""
        e = const(e)
        match e:
            case IntImm() | SymVar():
                return e
            case Min(a, b):
                a, b = self.simplify(a), self.simplify(b)
                if self.can_prove_le(a, b):
                    return a
                if self.can_prove_le(b, a):
                    return b
                return minimum(a, b)
            case Max(a, b):
                a, b = self.simplify(a), self.simplify(b)
                if self.can_prove_le(a, b):
                    return b
                if self.can_prove_le(b, a):
                    return a
                return maximum(a, b)
            case FloorDiv(a, b) | FloorMod(a, b):
                a, b = self.simplify(a), self.simplify(b)
                q = self._single_quotient(a, b)
                if isinstance(e, FloorDiv):
                    return floordiv(a, b) if q is None else IntImm(q)
                # a % b == a - b * (a // b)
                return floormod(a, b) if q is None else sub(a, mul(b, q))
            case Sum(terms, c):
                out: PrimExpr = IntImm(c)
                for mono, coeff in terms:
                    t: PrimExpr = IntImm(coeff)
                    for atom, p in mono:
                        s = self.simplify(atom)
                        for _ in range(p):
                            t = mul(t, s)
                    out = add(out, t)
                return out
        raise TypeError(f"not a symbolic integer expression: {e!r}")

    def _single_quotient(self, a: PrimExpr, b: PrimExpr) -> int | None:
        """The value of a // b when the bounds allow only one, else None."""
        ia, ib = self.interval(a), self.interval(b)
        if ib.lo >= 1 and ia.lo >= 0 and ia.hi < ib.lo:
            return 0
        if isinstance(b, IntImm) and b.value > 0 and not (math.isinf(ia.lo) or math.isinf(ia.hi)):
            lo, hi = int(ia.lo) // b.value, int(ia.hi) // b.value
            if lo == hi:
                return lo
        return None

    def can_prove_nonneg(self, e: IntLike) -> bool:
        return self._nonneg(e, PROOF_DEPTH)

    def _nonneg(self, e: IntLike, depth: int) -> bool:
        e = self.simplify(e)
        if self.interval(e).lo >= 0:
            return True
        if depth == 0:
            return False
        poly = _poly(e)
        for mono, c in poly.items():
            atom = _lone_atom(mono)
            if atom is None:
                continue
            rest = _from_poly({m: k for m, k in poly.items() if m != mono})
            # Case split: c*min(a, b) is min(c*a, c*b) for c > 0, so both cases must hold; it
            # is max(c*a, c*b) for c < 0, so either suffices (and the other way round for max).
            if isinstance(atom, (Min, Max)):
                a, b = add(rest, mul(atom.a, c)), add(rest, mul(atom.b, c))
                either = (c < 0) == isinstance(atom, Min)
                if either:
                    return self._nonneg(a, depth - 1) or self._nonneg(b, depth - 1)
                return self._nonneg(a, depth - 1) and self._nonneg(b, depth - 1)
            d = _const_divisor(atom, FloorDiv)
            if d is not None:
                # x - d + 1 <= d*(x // d) <= x, so d*e >= relaxed, with x // d replaced by the
                # side that keeps the inequality. As e is an integer, d*e >= -(d - 1) already
                # gives e > -1, that is e >= 0.
                bound = sub(atom.a, d - 1) if c > 0 else atom.a
                relaxed = add(mul(rest, d), mul(bound, c))
                return self._nonneg(add(relaxed, d - 1), depth - 1)
            d = _const_divisor(atom, FloorMod)
            if d is not None:
                # x % d == x - d*(x // d), exactly; the floor division is relaxed next.
                expanded = sub(atom.a, mul(floordiv(atom.a, d), d))
                return self._nonneg(add(rest, mul(expanded, c)), depth - 1)
        return False

    def can_prove_equal(self, a: IntLike, b: IntLike) -> bool:
        diff = self.simplify(sub(a, b))
        if diff == IntImm(0):
            return True
        i = self.interval(diff)
        if i.lo == 0 and i.hi == 0:
            return True
        return self.can_prove_nonneg(diff) and self.can_prove_nonneg(mul(diff, -1))

    def can_prove_le(self, a: IntLike, b: IntLike) -> bool:
        return self.can_prove_nonneg(sub(b, a))

    def can_prove_lt(self, a: IntLike, b: IntLike) -> bool:
        return self.can_prove_nonneg(sub(sub(b, a), 1))

    def can_prove_ge(self, a: IntLike, b: IntLike) -> bool:
        return self.can_prove_le(b, a)

    def can_prove_ne(self, a: IntLike, b: IntLike) -> bool:
        return self.can_prove_lt(a, b) or self.can_prove_lt(b, a)

    def upper_bound(self, e: IntLike) -> int | None:
        """The least upper bound interval arithmetic finds, or None when unbounded."""
        hi = self.interval(self.simplify(e)).hi
        return None if math.isinf(hi) else int(hi)

    def lower_bound(self, e: IntLike) -> int | None:
        lo = self.interval(self.simplify(e)).lo
        return None if math.isinf(lo) else int(lo)


def _pow(x: float, p: int) -> float:
    return x**p if not math.isinf(x) else INF


def as_prim(values: Iterable[IntLike]) -> tuple[PrimExpr, ...]:
    return tuple(const(v) for v in values)
