"""Kernels for the LLVM target tests, each with its arguments and a numpy reference.

All of them are compiled once per session into one module (compile time stays ~seconds) and
run for several values of the symbolic dim `n`, each with the same compiled code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.tir import Allocate, Buffer, For, IfThenElse, Let, PrimFunc, Store, seq

n, m = S.var("n"), S.var("m")
i, j, k, l = S.var("i"), S.var("j"), S.var("k"), S.var("l")

NS = (1, 7, 64, 300)
FLOATS = ("float32", "float16")
INTS = ("int8", "int16", "int32", "int64", "uint8", "uint32")
FULL_INTS = ("int32", "int64", "uint32")  # every op; the narrow types get the common ones


@dataclass(frozen=True)
class Case:
    func: PrimFunc
    make_args: Callable[[np.random.Generator, int], list]  # inputs, zeroed outputs, scalars
    outputs: tuple[int, ...]  # which args the kernel writes
    reference: Callable[..., list[np.ndarray]] | None = None  # numpy, from the args
    interpret: bool = True  # the tir interpreter can run it too
    rtol: float = 1e-5
    atol: float = 1e-6


# ---------------------------------------------------------------------------------------------
# Scalar ops, one vectorized loop over n each: groups of lanes plus a scalar tail, so both the
# vector and the scalar code of every op run.


def _vec_map(dtype_in: tuple[str, ...], dtype_out: str, fn: Callable[..., T.Value]) -> PrimFunc:
    ins = [Buffer(f"A{x}", (n,), d) for x, d in enumerate(dtype_in)]
    out = Buffer("C", (n,), dtype_out)
    return PrimFunc((*ins, out), For(i, n, Store(out, (i,), fn(*(b[i] for b in ins))), kind="vectorized"))


def _values(rng: np.random.Generator, dtype: str, size: int, lo: float, hi: float) -> np.ndarray:
    if dtype == "bool":
        return rng.random(size) < 0.5
    if np.dtype(dtype).kind == "f":
        return rng.uniform(lo, hi, size).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(lo, info.min + 1), min(hi, info.max) + 1, size).astype(dtype)


def _trunc_div(a, b):
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q).astype(a.dtype)


BINARY_REF = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "floordiv": np.floor_divide,
    "floormod": np.mod, "min": np.minimum, "max": np.maximum, "pow": np.power,
    "lt": np.less, "le": np.less_equal, "eq": np.equal, "ne": np.not_equal, "gt": np.greater,
    "ge": np.greater_equal, "and": np.logical_and, "or": np.logical_or, "shl": np.left_shift,
    "shr": np.right_shift, "bitand": np.bitwise_and, "bitor": np.bitwise_or, "bitxor": np.bitwise_xor,
}  # fmt: skip
FLOAT_OPS = (
    "add",
    "sub",
    "mul",
    "div",
    "floordiv",
    "floormod",
    "min",
    "max",
    "pow",
    "lt",
    "le",
    "eq",
    "ne",
    "gt",
    "ge",
    "and",
    "or",
)
HALF_OPS = ("add", "sub", "mul", "div", "floordiv", "floormod", "min", "max", "pow", "lt", "ne")
INT_OPS = ("add", "sub", "mul", "div", "floordiv", "floormod", "min", "max", "pow", "lt", "le", "eq", "ne", "gt", "ge", "and", "or", "shl", "shr", "bitand", "bitor", "bitxor")  # fmt: skip
NARROW_INT_OPS = ("add", "mul", "div", "floordiv", "floormod", "max", "lt", "shl", "shr")
BOOL_OPS = ("and", "or", "eq", "ne", "bitand", "bitor", "bitxor")


def _binary_operands(rng, op, dtype, size):
    if dtype == "bool":
        return _values(rng, dtype, size, 0, 1), _values(rng, dtype, size, 0, 1)
    is_float = np.dtype(dtype).kind == "f"
    signed = np.dtype(dtype).kind != "u"
    if op == "pow":
        a = (
            _values(rng, dtype, size, 0.5, 3)
            if is_float
            else _values(rng, dtype, size, -5 if signed else 0, 5)
        )
        return a, _values(rng, dtype, size, -2, 2) if is_float else _values(rng, dtype, size, 0, 3)
    a = _values(rng, dtype, size, -100 if signed else 0, 100 if signed else 200)
    if op in ("shl", "shr"):
        return a, _values(rng, dtype, size, 0, np.dtype(dtype).itemsize * 8 - 2)
    b = _values(rng, dtype, size, 1, 9)
    if signed:
        b = (b * rng.choice(np.array([-1, 1], dtype), size)).astype(dtype)
    if op in ("eq", "ne", "le", "ge", "min", "max"):
        b[::3] = a[::3]
    return a, b


def _binary_ref(op, dtype):
    def ref(a, b, c):
        with np.errstate(all="ignore"):
            if op == "div":
                return [(a / b if np.dtype(dtype).kind == "f" else _trunc_div(a, b)).astype(c.dtype)]
            return [BINARY_REF[op](a, b).astype(c.dtype)]

    return ref


def binary_case(op: str, dtype: str) -> Case:
    out = "bool" if op in T.COMPARE_OPS else dtype
    func = _vec_map((dtype, dtype), out, lambda a, b: T.binary(op, a, b))

    def make(rng, size):
        a, b = _binary_operands(rng, op, dtype, size)
        return [a, b, np.zeros(size, out)]

    tol = 2e-3 if dtype == "float16" else 2e-6
    # On non-bool operands `and`/`or` are logical (tir: logic gives bool); the interpreter
    # applies numpy's bitwise & and | there, so only numpy judges those.
    logic_on_numbers = op in ("and", "or") and dtype != "bool"
    return Case(func, make, (2,), _binary_ref(op, dtype), interpret=not logic_on_numbers, rtol=tol, atol=tol)


INTRINSIC_RANGES = {
    "exp": (-5, 5), "log": (0.1, 10), "sqrt": (0.1, 10), "rsqrt": (0.1, 10), "tanh": (-5, 5),
    "sigmoid": (-8, 8), "abs": (-5, 5), "neg": (-5, 5), "floor": (-5, 5), "ceil": (-5, 5),
    "cos": (-5, 5), "sin": (-5, 5), "erf": (-3, 3), "not": (-1, 1), "round": (-5, 5),
}  # fmt: skip
INT_INTRINSICS = ("abs", "neg", "not")


def _erf(x):
    import math

    return np.vectorize(math.erf, otypes=[np.float64])(x)


INTRINSIC_REF = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x), "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "abs": np.abs, "neg": np.negative, "floor": np.floor,
    "ceil": np.ceil, "cos": np.cos, "sin": np.sin, "erf": _erf, "not": np.logical_not, "round": np.round,
}  # fmt: skip


def intrinsic_case(name: str, dtype: str) -> Case:
    out = "bool" if name == "not" else dtype
    func = _vec_map((dtype,), out, lambda a: T.intrin(name, a))
    lo, hi = INTRINSIC_RANGES[name]
    is_float = np.dtype(dtype).kind == "f"

    def make(rng, size):
        a = _values(rng, dtype, size, lo, hi) if is_float else _values(rng, dtype, size, -100, 100)
        if name == "round":
            a[::4] = np.arange(-2, -2 + len(a[::4])) % 7 - 3 + 0.5  # ties round to even
        if name == "not":
            a[::3] = 0
        return [a, np.zeros(size, out)]

    def ref(a, c):
        x = a.astype(np.float64) if is_float else a
        return [INTRINSIC_REF[name](x).astype(c.dtype)]

    tol = 2e-3 if dtype == "float16" else 3e-6
    return Case(func, make, (1,), ref, rtol=tol, atol=tol)


CASTS = [
    ("float32", "float16", -60000, 60000), ("float16", "float32", -1000, 1000),
    ("float32", "int32", -1e6, 1e6), ("float32", "uint8", 0, 255), ("float32", "int64", -1e9, 1e9),
    ("int32", "float32", -(2**24), 2**24), ("uint32", "float32", 0, 2**31), ("int8", "int32", -128, 127),
    ("int32", "int8", -1000, 1000), ("uint8", "int32", 0, 255), ("int64", "int32", -(2**40), 2**40),
    ("int32", "int64", -(2**31), 2**31 - 1), ("uint32", "int64", 0, 2**32 - 1), ("int32", "uint32", -1000, 1000),
    ("bool", "float32", 0, 1), ("float32", "bool", -2, 2), ("int32", "bool", -2, 2), ("bool", "int32", 0, 1),
    ("float16", "int32", -1000, 1000), ("int16", "float16", -2000, 2000), ("uint8", "float16", 0, 255),
    ("float16", "uint8", 0, 255), ("int8", "uint8", -128, 127), ("uint8", "int8", 0, 255),
]  # fmt: skip


def cast_case(src: str, dst: str, lo: float, hi: float) -> Case:
    func = _vec_map((src,), dst, lambda a: T.cast(dst, a))

    def make(rng, size):
        a = _values(rng, src, size, lo, hi)
        if dst == "bool" and src != "bool":
            a[::3] = 0
        return [a, np.zeros(size, dst)]

    return Case(func, make, (1,), lambda a, c: [a.astype(dst)], rtol=0, atol=0)


def op_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for d in FLOATS:
        for op in FLOAT_OPS if d == "float32" else HALF_OPS:
            cases[f"bin_{op}_{d}"] = binary_case(op, d)
        for name in INTRINSIC_RANGES:
            cases[f"intrin_{name}_{d}"] = intrinsic_case(name, d)
    for d in INTS:
        for op in INT_OPS if d in FULL_INTS else NARROW_INT_OPS:
            cases[f"bin_{op}_{d}"] = binary_case(op, d)
        for name in INT_INTRINSICS:
            cases[f"intrin_{name}_{d}"] = intrinsic_case(name, d)
    for op in BOOL_OPS:
        cases[f"bin_{op}_bool"] = binary_case(op, "bool")
    cases["intrin_not_bool"] = intrinsic_case("not", "bool")
    for src, dst, lo, hi in CASTS:
        cases[f"cast_{src}_{dst}"] = cast_case(src, dst, lo, hi)
    return cases


# ---------------------------------------------------------------------------------------------
# Loop structure, memory access patterns, scopes.


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype("float32")


def _zeros(*shape, dtype="float32"):
    return np.zeros(shape, dtype)


def _ew2d() -> Case:
    # parallel rows, vectorized columns: 20 = 2 groups of 8 lanes + a tail of 4
    A, B, C = Buffer("A", (n, 20)), Buffer("B", (n, 20)), Buffer("C", (n, 20))
    body = For(
        i,
        n,
        For(j, 20, Store(C, (i, j), T.intrin("exp", A[i, j]) + B[i, j] * 2.0), kind="vectorized"),
        kind="parallel",
    )
    return Case(
        PrimFunc((A, B, C), body),
        lambda rng, s: [_f32(rng, s, 20), _f32(rng, s, 20), _zeros(s, 20)],
        (2,),
        lambda a, b, c: [np.exp(a) + b * 2],
    )


def _matmul() -> Case:
    # C[i, j] = sum_k A[i, k] * B[k, j]: i parallel, j vectorized over the symbolic m, k serial
    K = 24
    A, B, C = Buffer("A", (n, K)), Buffer("B", (K, m)), Buffer("C", (n, m))
    body = For(
        i,
        n,
        seq(
            For(j, m, Store(C, (i, j), T.Imm(0.0, "float32")), kind="vectorized"),
            For(k, K, For(j, m, Store(C, (i, j), C[i, j] + A[i, k] * B[k, j]), kind="vectorized")),
        ),
        kind="parallel",
    )
    return Case(
        PrimFunc((A, B, C), body),
        lambda rng, s: [_f32(rng, s, K), _f32(rng, K, 37), _zeros(s, 37)],
        (2,),
        lambda a, b, c: [a @ b],
        rtol=1e-5,
        atol=1e-5,
    )


def _rowsum_vector_acc() -> Case:
    # a vector accumulator of 8 lanes in a local buffer, then a horizontal sum, unrolled
    M = 64
    A, out = Buffer("A", (n, M)), Buffer("out", (n,))
    acc = Buffer("acc", (8,), "float32", "local")
    body = For(
        i,
        n,
        Allocate(
            acc,
            seq(
                For(l, 8, Store(acc, (l,), T.Imm(0.0, "float32")), kind="vectorized"),
                For(k, M // 8, For(l, 8, Store(acc, (l,), acc[l] + A[i, k * 8 + l]), kind="vectorized")),
                Store(out, (i,), T.Imm(0.0, "float32")),
                For(l, 8, Store(out, (i,), out[i] + acc[l]), kind="unrolled"),
            ),
        ),
        kind="parallel",
    )
    return Case(
        PrimFunc((A, out), body),
        lambda rng, s: [_f32(rng, s, M), _zeros(s)],
        (1,),
        lambda a, o: [a.sum(axis=1)],
        atol=1e-5,
    )


def _take() -> Case:
    # embedding lookup: a token id loaded from int32 is let-bound as an index; rows copy contiguously
    V, D = 50, 24
    ids, W, out = Buffer("ids", (n,), "int32"), Buffer("W", (V, D)), Buffer("out", (n, D))
    t = S.var("t")
    body = For(
        i, n, Let(t, ids[i], For(j, D, Store(out, (i, j), W[t, j]), kind="vectorized")), kind="parallel"
    )
    return Case(
        PrimFunc((ids, W, out), body),
        lambda rng, s: [rng.integers(0, V, s).astype("int32"), _f32(rng, V, D), _zeros(s, D)],
        (2,),
        lambda ids_, w, o: [w[ids_]],
    )


def _transpose_gather() -> Case:
    # out[i, j] = A[j, i], vectorized over j: the load has a symbolic stride (a gather)
    A, out = Buffer("A", (n, m)), Buffer("out", (m, n))
    body = For(i, m, For(j, n, Store(out, (i, j), A[j, i]), kind="vectorized"), kind="parallel")
    return Case(
        PrimFunc((A, out), body), lambda rng, s: [_f32(rng, s, 5), _zeros(5, s)], (1,), lambda a, o: [a.T]
    )


def _transpose_scatter() -> Case:
    # out[j, i] = A[i, j], vectorized over j: the store has a symbolic stride (a scatter)
    A, out = Buffer("A", (m, n)), Buffer("out", (n, m))
    body = For(i, m, For(j, n, Store(out, (j, i), A[i, j]), kind="vectorized"))
    return Case(
        PrimFunc((A, out), body), lambda rng, s: [_f32(rng, 3, s), _zeros(s, 3)], (1,), lambda a, o: [a.T]
    )


def _strided() -> Case:
    # constant stride 2 (gather), and a dim that is an expression (2 * n), checked at call time
    A, ev, od = Buffer("A", (2 * n,)), Buffer("even", (n,)), Buffer("odd", (n,))
    body = For(i, n, seq(Store(ev, (i,), A[2 * i]), Store(od, (i,), A[2 * i + 1])), kind="vectorized")
    return Case(
        PrimFunc((ev, A, od), body),
        lambda rng, s: [_zeros(s), _f32(rng, 2 * s), _zeros(s)],
        (0, 2),
        lambda e, a, o: [a[0::2], a[1::2]],
    )


def _guarded_select() -> Case:
    # select(i < m, A[i], -1): lanes past the end of A must not read it (masked loads)
    A, out = Buffer("A", (m,)), Buffer("out", (n,))
    body = For(
        i,
        n,
        Store(out, (i,), T.select(T.Binary("lt", i, m), A[i], T.Imm(-1.0, "float32"))),
        kind="vectorized",
    )

    def ref(a, o):
        r = np.full(o.shape, -1.0, "float32")
        r[: min(len(a), len(o))] = a[: len(o)]
        return [r]

    return Case(
        PrimFunc((A, out), body),
        lambda rng, s: [_f32(rng, s // 2 + 1), _zeros(s)],
        (1,),
        ref,
        interpret=False,
    )


def _select_vector() -> Case:
    A, B, out = Buffer("A", (n,)), Buffer("B", (n,)), Buffer("out", (n,))
    body = For(i, n, Store(out, (i,), T.select(A[i] > 0.0, A[i], B[i] * 2.0)), kind="vectorized")
    return Case(
        PrimFunc((A, B, out), body),
        lambda rng, s: [_f32(rng, s), _f32(rng, s), _zeros(s)],
        (2,),
        lambda a, b, o: [np.where(a > 0, a, b * 2)],
    )


def _varying_if() -> Case:
    # an if on i % 3 inside a vectorized loop: the loop stays scalar (a note says why)
    A, out = Buffer("A", (n,)), Buffer("out", (n,))
    body = For(
        i,
        n,
        IfThenElse(T.binary("eq", i % 3, 0), Store(out, (i,), A[i]), Store(out, (i,), -A[i])),
        kind="vectorized",
    )
    return Case(
        PrimFunc((A, out), body),
        lambda rng, s: [_f32(rng, s), _zeros(s)],
        (1,),
        lambda a, o: [np.where(np.arange(len(a)) % 3 == 0, a, -a)],
    )


def _index_math() -> Case:
    # floor division / modulo / min / max on signed let-bound values, as int64 results
    ids = Buffer("ids", (n,), "int32")
    outs = [Buffer(f"o{x}", (n,), "int64") for x in range(5)]
    t = S.var("t")
    stores = seq(
        Store(outs[0], (i,), t // 4),
        Store(outs[1], (i,), t % 4),
        Store(outs[2], (i,), S.minimum(t, 3)),
        Store(outs[3], (i,), S.maximum(t, -3)),
        Store(outs[4], (i,), (t * 3 - 7) // 5 + (-t) % 7),
    )
    body = For(i, n, Let(t, ids[i], stores))

    def ref(x, *_):
        x = x.astype(np.int64)
        return [x // 4, x % 4, np.minimum(x, 3), np.maximum(x, -3), (x * 3 - 7) // 5 + (-x) % 7]

    return Case(
        PrimFunc((ids, *outs), body),
        lambda rng, s: (
            [rng.integers(-50, 50, s).astype("int32")] + [_zeros(s, dtype="int64") for _ in range(5)]
        ),
        (1, 2, 3, 4, 5),
        ref,
        rtol=0,
        atol=0,
    )


def _divmod_flatten() -> Case:
    # out[i] = A[i // 4, i % 4]: the flat offset folds back to i (a contiguous vector load)
    A, out = Buffer("A", (n, 4)), Buffer("out", (4 * n,))
    body = For(i, 4 * n, Store(out, (i,), A[i // 4, i % 4] * 2.0), kind="vectorized")
    return Case(
        PrimFunc((A, out), body),
        lambda rng, s: [_f32(rng, s, 4), _zeros(4 * s)],
        (1,),
        lambda a, o: [a.reshape(-1) * 2],
    )


def _heap_scratch() -> Case:
    # a scratch buffer of symbolic size (malloc'ed), read back in reverse
    A, out = Buffer("A", (n,)), Buffer("out", (n,))
    tmp = Buffer("tmp", (n,), "float32", "local")
    body = Allocate(
        tmp,
        seq(
            For(i, n, Store(tmp, (i,), A[i] * 2.0), kind="vectorized"),
            For(i, n, Store(out, (i,), tmp[n - 1 - i])),
        ),
    )
    return Case(
        PrimFunc((A, out), body), lambda rng, s: [_f32(rng, s), _zeros(s)], (1,), lambda a, o: [a[::-1] * 2]
    )


def _unrolled() -> Case:
    A, out = Buffer("A", (n, 4)), Buffer("out", (n, 4))
    body = For(i, n, For(j, 4, Store(out, (i, j), A[i, j] + T.cast("float32", j)), kind="unrolled"))
    return Case(
        PrimFunc((A, out), body),
        lambda rng, s: [_f32(rng, s, 4), _zeros(s, 4)],
        (1,),
        lambda a, o: [a + np.arange(4, dtype="float32")],
    )


def _scalar_param() -> Case:
    off = S.var("off")
    A, out = Buffer("A", (m,)), Buffer("out", (n,))
    body = For(i, n, Store(out, (i,), A[i + off]), kind="vectorized")
    return Case(
        PrimFunc((A, out, off), body),
        lambda rng, s: [_f32(rng, s + 5), _zeros(s), 3],
        (1,),
        lambda a, o, off_: [a[off_ : off_ + len(o)]],
    )


def _scalar_extent() -> Case:
    # a vectorized loop over a scalar count that may be negative (then it runs zero times)
    count = S.var("count")
    out = Buffer("out", (n,))
    body = For(i, count, Store(out, (i,), T.Imm(1.0, "float32")), kind="vectorized")

    def ref(o, c):
        r = np.zeros_like(o)
        r[: max(c, 0)] = 1
        return [r]

    return Case(PrimFunc((out, count), body), lambda rng, s: [_zeros(s), s - 3], (0,), ref)


def _concat() -> Case:
    # out has dim n + m: bound from A and B, checked against out at call time
    A, B, out = Buffer("A", (n,)), Buffer("B", (m,)), Buffer("out", (n + m,))
    body = For(i, n + m, IfThenElse(T.Binary("lt", i, n), Store(out, (i,), A[i]), Store(out, (i,), B[i - n])))
    return Case(
        PrimFunc((A, B, out), body),
        lambda rng, s: [_f32(rng, s), _f32(rng, 4), _zeros(s + 4)],
        (2,),
        lambda a, b, o: [np.concatenate([a, b])],
    )


def _nested_parallel() -> Case:
    out = Buffer("out", (n, 8))
    body = For(
        i, n, For(j, 8, Store(out, (i, j), T.cast("float32", i * 8 + j)), kind="parallel"), kind="parallel"
    )
    return Case(
        PrimFunc((out,), body),
        lambda rng, s: [_zeros(s, 8)],
        (0,),
        lambda o: [np.arange(o.size, dtype="float32").reshape(o.shape)],
    )


def _half_vector() -> Case:
    # float16 in and out, float32 math in between
    A, out = Buffer("A", (n,), "float16"), Buffer("out", (n,), "float16")
    value = T.cast("float16", T.intrin("exp", T.cast("float32", A[i])) * 0.5)
    body = For(i, n, Store(out, (i,), value), kind="vectorized")
    return Case(
        PrimFunc((A, out), body),
        lambda rng, s: [_f32(rng, s).astype("float16"), _zeros(s, dtype="float16")],
        (1,),
        lambda a, o: [(np.exp(a.astype("float32")) * 0.5).astype("float16")],
        rtol=1e-3,
        atol=1e-3,
    )


def _zero_dim() -> Case:
    A, out = Buffer("A", (n,)), Buffer("out", ())
    body = seq(Store(out, (), T.Imm(0.0, "float32")), For(i, n, Store(out, (), out[()] + A[i])))
    return Case(
        PrimFunc((A, out), body),
        lambda rng, s: [_f32(rng, s), _zeros()],
        (1,),
        lambda a, o: [np.array(a.sum())],
        atol=1e-5,
    )


# ---------------------------------------------------------------------------------------------
# Kernels written with te (serial loop nests, as legalization produces them).


def _te_softmax() -> Case:
    X = te.placeholder((n, m), "float32", "X")
    k1, k2 = te.reduce_axis(m, "k"), te.reduce_axis(m, "k")
    mx = te.compute((n,), lambda i: te.max(X[i, k1], axis=k1), "mx")
    den = te.compute((n,), lambda i: te.sum(T.intrin("exp", X[i, k2] - mx[i]), axis=k2), "den")
    Y = te.compute((n, m), lambda i, j: T.intrin("exp", X[i, j] - mx[i]) / den[i], "Y")

    def ref(x, y):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return [e / e.sum(axis=1, keepdims=True)]

    return Case(te.create_prim_func([X, Y]), lambda rng, s: [_f32(rng, s, 33), _zeros(s, 33)], (1,), ref)


def _te_rmsnorm_matmul() -> Case:
    X = te.placeholder((n, 16), "float32", "X")
    W = te.placeholder((16, 12), "float32", "W")
    g = te.placeholder((16,), "float32", "g")
    k1, k2 = te.reduce_axis(16, "k"), te.reduce_axis(16, "k")
    ss = te.compute((n,), lambda i: te.sum(X[i, k1] * X[i, k1], axis=k1), "ss")
    normed = te.compute(
        (n, 16), lambda i, j: X[i, j] * T.intrin("rsqrt", ss[i] / 16.0 + 1e-5) * g[j], "normed"
    )
    Y = te.compute((n, 12), lambda i, j: te.sum(normed[i, k2] * W[k2, j], axis=k2), "Y")

    def ref(x, w, g_, y):
        nx = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5) * g_
        return [nx @ w]

    return Case(
        te.create_prim_func([X, W, g, Y]),
        lambda rng, s: [_f32(rng, s, 16), _f32(rng, 16, 12), _f32(rng, 16), _zeros(s, 12)],
        (3,),
        ref,
        atol=1e-5,
    )


def _te_argmax_concat() -> Case:
    X = te.placeholder((n, 10), "float32", "X")
    B = te.placeholder((m,), "int64", "B")
    k1 = te.reduce_axis(10, "k")
    am = te.compute((n,), lambda i: te.argmax(X[i, k1], axis=k1), "am")
    out = te.compute(
        (n + m,),
        lambda i: te.if_then_else(T.Binary("lt", i, n), am[S.minimum(i, n - 1)], B[S.maximum(i - n, 0)]),
        "out",
    )
    return Case(
        te.create_prim_func([X, B, out]),
        lambda rng, s: [
            _f32(rng, s, 10),
            rng.integers(0, 9, 3).astype("int64"),
            _zeros(s + 3, dtype="int64"),
        ],
        (2,),
        lambda x, b, o: [np.concatenate([x.argmax(axis=1), b])],
        rtol=0,
        atol=0,
    )


def _te_take_rows() -> Case:
    ids = te.placeholder((n,), "int32", "ids")
    W = te.placeholder((30, 8), "float16", "W")
    out = te.compute((n, 8), lambda i, j: T.cast("float32", W[ids[i], j]), "out")
    return Case(
        te.create_prim_func([ids, W, out]),
        lambda rng, s: [
            rng.integers(0, 30, s).astype("int32"),
            _f32(rng, 30, 8).astype("float16"),
            _zeros(s, 8),
        ],
        (2,),
        lambda ids_, w, o: [w[ids_].astype("float32")],
    )


def structure_cases() -> dict[str, Case]:
    makers = [
        _ew2d, _matmul, _rowsum_vector_acc, _take, _transpose_gather, _transpose_scatter, _strided,
        _guarded_select, _select_vector, _varying_if, _index_math, _divmod_flatten, _heap_scratch,
        _unrolled, _scalar_param, _scalar_extent, _concat, _nested_parallel, _half_vector, _zero_dim, _te_softmax,
        _te_rmsnorm_matmul, _te_argmax_concat, _te_take_rows,
    ]  # fmt: skip
    return {f.__name__.lstrip("_"): f() for f in makers}


def heavy_parallel() -> PrimFunc:
    """out[i] = sum_{k < K} sin(0.001 * k + i): `K` (a scalar param) sets how long each row takes."""
    K = S.var("K")
    out = Buffer("out", (n,))
    acc = Buffer("acc", (1,), "float32", "local")
    x = T.cast("float32", k) * 0.001 + T.cast("float32", i)
    body = For(
        i,
        n,
        Allocate(
            acc,
            seq(
                Store(acc, (0,), T.Imm(0.0, "float32")),
                For(k, K, Store(acc, (0,), acc[0] + T.intrin("sin", x))),
                Store(out, (i,), acc[0]),
            ),
        ),
        kind="parallel",
    )
    return PrimFunc((out, K), body)


CASES: dict[str, Case] = {**op_cases(), **structure_cases()}
