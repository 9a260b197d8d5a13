"""Scalar and vector arithmetic on LLVM values: tir's binary ops, intrinsics and casts.

Every function here works unchanged on `<N x T>` vectors: LLVM's instructions and intrinsics are
lane-wise, which is what lets the vectorizer emit a loop body once on vectors.

Semantics follow numpy where tir leaves a choice: floordiv/floormod round toward -inf (also on
signed ints), `round` is half-to-even, `ne` on floats is true for NaN, integer `div` truncates
(C semantics), and casts from float to int truncate. float32 `exp` is computed inline (within
1 ulp) instead of calling libm once per lane; the other transcendental functions use LLVM's
intrinsics, which become libm calls. Integer division by zero is undefined, as in C.
"""

from __future__ import annotations

from llvmlite import ir

from llm_deploy.targets.llvm.dtypes import DType, const, dtype

_FCMP = {"lt": "<", "le": "<=", "eq": "==", "gt": ">", "ge": ">="}
_ICMP = {"lt": "<", "le": "<=", "eq": "==", "ne": "!=", "gt": ">", "ge": ">="}


def lanes_of(v: ir.Value) -> int:
    return v.type.count if isinstance(v.type, ir.VectorType) else 1


def _suffix(t: ir.Type) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_suffix(t.element)}"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    return {ir.HalfType: "f16", ir.FloatType: "f32", ir.DoubleType: "f64"}[type(t)]


class Ops:
    """Emits arithmetic into `builder`; declares each intrinsic or libm function once per module."""

    def __init__(self, module: ir.Module, fast_math: tuple[str, ...] = ()):
        self.module = module
        self.fm = fast_math
        self.b: ir.IRBuilder = None  # type: ignore[assignment]  # set by the function emitter

    # --- declarations -------------------------------------------------------------------------

    def declare(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        return fn

    def intrinsic(self, base: str, *args: ir.Value) -> ir.Value:
        """`llvm.<base>.<type>` overloaded on its first argument's type."""
        t = args[0].type
        fn = self.declare(f"llvm.{base}.{_suffix(t)}", t, [a.type for a in args])
        element = t.element if isinstance(t, ir.VectorType) else t
        return self.b.call(fn, list(args), fastmath=() if isinstance(element, ir.IntType) else self.fm)

    def libm(self, name: str, x: ir.Value) -> ir.Value:
        """A libm function with no LLVM intrinsic (erf), applied lane by lane."""
        t = x.type.element if isinstance(x.type, ir.VectorType) else x.type
        fn = self.declare(name if isinstance(t, ir.DoubleType) else name + "f", t, [t])
        if not isinstance(x.type, ir.VectorType):
            return self.b.call(fn, [x])
        out = ir.Constant(x.type, ir.Undefined)
        for i in range(x.type.count):
            lane = self.b.call(fn, [self.b.extract_element(x, ir.Constant(ir.IntType(32), i))])
            out = self.b.insert_element(out, lane, ir.Constant(ir.IntType(32), i))
        return out

    # --- casts --------------------------------------------------------------------------------

    def to_bool(self, d: DType, x: ir.Value) -> ir.Value:
        if d.kind == "bool":
            return x
        zero = const(d, 0, lanes_of(x))
        if d.is_float:
            return self.b.fcmp_unordered("!=", x, zero)
        return self.b.icmp_unsigned("!=", x, zero)

    def cast(self, src: DType, dst: DType, x: ir.Value) -> ir.Value:
        b, lanes = self.b, lanes_of(x)
        if src == dst:
            return x
        to = dst.reg if lanes == 1 else ir.VectorType(dst.reg, lanes)
        if dst.kind == "bool":
            return self.to_bool(src, x)
        if src.is_float and dst.is_float:
            return b.fpext(x, to) if dst.bits > src.bits else b.fptrunc(x, to)
        if src.is_float:
            return b.fptosi(x, to) if dst.signed else b.fptoui(x, to)
        if dst.is_float:
            return b.sitofp(x, to) if src.signed else b.uitofp(x, to)
        if dst.bits < src.bits:
            return b.trunc(x, to)
        if dst.bits > src.bits:
            return b.sext(x, to) if src.signed else b.zext(x, to)
        return x  # int32 <-> uint32: same bits

    # --- binary ops ---------------------------------------------------------------------------

    def binary(self, op: str, d: DType, x: ir.Value, y: ir.Value) -> ir.Value:
        """`x op y` where both operands already have dtype `d`; comparisons return i1."""
        if op in ("and", "or"):
            x, y = self.to_bool(d, x), self.to_bool(d, y)
            return self.b.and_(x, y) if op == "and" else self.b.or_(x, y)
        if d.is_float:
            return self._float_binary(op, d, x, y)
        if d.kind == "bool" and op not in ("eq", "ne", "bitand", "bitor", "bitxor", "min", "max"):
            raise NotImplementedError(
                f"binary op {op!r} on bool operands; cast them to an integer type first"
            )
        return self._int_binary(op, d, x, y)

    def _float_binary(self, op: str, d: DType, x: ir.Value, y: ir.Value) -> ir.Value:
        b, fm = self.b, self.fm
        if d.bits == 16 and op in ("floordiv", "floormod", "pow"):
            # Several roundings in half would drift; numpy computes these in float32, rounds once.
            f32 = dtype("float32")
            out = self._float_binary(op, f32, self.cast(d, f32, x), self.cast(d, f32, y))
            return self.cast(f32, d, out)
        match op:
            case "add":
                return b.fadd(x, y, flags=fm)
            case "sub":
                return b.fsub(x, y, flags=fm)
            case "mul":
                return b.fmul(x, y, flags=fm)
            case "div":
                return b.fdiv(x, y, flags=fm)
            case "floordiv":
                return self.intrinsic("floor", b.fdiv(x, y, flags=fm))
            case "floormod":
                # x - y * floor(x / y), numpy's sign convention (result has y's sign)
                q = self.intrinsic("floor", b.fdiv(x, y, flags=fm))
                return b.fsub(x, b.fmul(y, q, flags=fm), flags=fm)
            case "min":
                return b.select(b.fcmp_ordered("<", x, y), x, y)
            case "max":
                return b.select(b.fcmp_ordered(">", x, y), x, y)
            case "pow":
                return self.intrinsic("pow", x, y)
            case "ne":
                return b.fcmp_unordered("!=", x, y)
            case _ if op in _FCMP:
                return b.fcmp_ordered(_FCMP[op], x, y)
        raise NotImplementedError(f"binary op {op!r} is not defined on {d.name}")

    def _int_binary(self, op: str, d: DType, x: ir.Value, y: ir.Value) -> ir.Value:
        b, signed = self.b, d.signed
        match op:
            case "add":
                return b.add(x, y)
            case "sub":
                return b.sub(x, y)
            case "mul":
                return b.mul(x, y)
            case "div":
                return b.sdiv(x, y) if signed else b.udiv(x, y)
            case "floordiv":
                return self.floordiv(x, y) if signed else b.udiv(x, y)
            case "floormod":
                return self.floormod(x, y) if signed else b.urem(x, y)
            case "min":
                cmp = b.icmp_signed if signed else b.icmp_unsigned
                return b.select(cmp("<", x, y), x, y)
            case "max":
                cmp = b.icmp_signed if signed else b.icmp_unsigned
                return b.select(cmp(">", x, y), x, y)
            case "pow":
                # Through double: exact while the result fits in 53 bits, which integer pow in
                # kernels (small powers of two, squares) does.
                f64 = dtype("float64")
                r = self.intrinsic("pow", self.cast(d, f64, x), self.cast(d, f64, y))
                return self.cast(f64, d, self.intrinsic("roundeven", r))
            case "shl":
                return b.shl(x, y)
            case "shr":
                return b.ashr(x, y) if signed else b.lshr(x, y)
            case "bitand":
                return b.and_(x, y)
            case "bitor":
                return b.or_(x, y)
            case "bitxor":
                return b.xor(x, y)
            case _ if op in _ICMP:
                cmp = b.icmp_signed if signed else b.icmp_unsigned
                return cmp(_ICMP[op], x, y)
        raise NotImplementedError(f"binary op {op!r} is not defined on {d.name}")

    def floordiv(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """Signed division rounding toward -inf: the C quotient, minus one when the remainder
        is non-zero and has the other sign than the divisor."""
        b = self.b
        q, r = b.sdiv(x, y), b.srem(x, y)
        return b.sub(q, b.zext(self._needs_floor_fix(r, y), q.type))

    def floormod(self, x: ir.Value, y: ir.Value) -> ir.Value:
        b = self.b
        r = b.srem(x, y)
        return b.select(self._needs_floor_fix(r, y), b.add(r, y), r)

    def _needs_floor_fix(self, r: ir.Value, y: ir.Value) -> ir.Value:
        b = self.b
        zero = ir.Constant(r.type, None)
        return b.and_(b.icmp_signed("!=", r, zero), b.icmp_signed("<", b.xor(r, y), zero))

    # --- intrinsics ---------------------------------------------------------------------------

    def intrin(self, name: str, d: DType, x: ir.Value) -> ir.Value:
        b = self.b
        if name == "not":
            x = self.to_bool(d, x)
            return b.xor(x, const(dtype("bool"), True, lanes_of(x)))
        if not d.is_float:
            return self._int_intrin(name, d, x)
        match name:
            case "neg":
                return b.fneg(x, flags=self.fm)
            case "abs":
                return self.intrinsic("fabs", x)
        if d.bits == 16:
            # libm and most LLVM math intrinsics have no half variant worth using: compute in
            # float32 and round once, as numpy does for float16.
            f32 = dtype("float32")
            return self.cast(f32, d, self.intrin(name, f32, self.cast(d, f32, x)))
        one = const(d, 1.0, lanes_of(x))
        match name:
            case "exp" if d.bits == 32:
                return self.exp_f32(x)
            case "cos" | "sin" if d.bits == 32:
                return self.sincos_f32(name, x)
            case "exp" | "log" | "sqrt" | "floor" | "ceil" | "cos" | "sin" | "tanh":
                return self.intrinsic(name, x)
            case "round":
                return self.intrinsic("roundeven", x)
            case "rsqrt":
                return b.fdiv(one, self.intrinsic("sqrt", x), flags=self.fm)
            case "sigmoid":
                neg = b.fneg(x, flags=self.fm)
                e = self.exp_f32(neg) if d.bits == 32 else self.intrinsic("exp", neg)
                return b.fdiv(one, b.fadd(one, e, flags=self.fm), flags=self.fm)
            case "erf":
                return self.libm("erf", x)
        raise NotImplementedError(f"intrinsic {name!r} is not defined on {d.name}")

    def exp_f32(self, x: ir.Value) -> ir.Value:
        """exp in float32 without libm, so vectors stay vectors (llvm.exp.v8f32 becomes eight
        expf calls): Cephes' expf, within 2 ulp of the exact result.

        exp(x) = 2^k * exp(r), k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2] (ln 2 in two
        parts so r stays exact), exp(r) = 1 + r + r^2 * p(r). 2^k is built from exponent bits in
        two halves, so results down to the subnormals and up to overflow come out right.
        """
        b, fm, lanes = self.b, self.fm, lanes_of(x)
        f32, i32 = dtype("float32"), dtype("int32")

        def c(v: float) -> ir.Value:
            return const(f32, v, lanes)

        lo, hi = c(-104.0), c(88.75)  # beyond: exactly 0 and inf after scaling
        xc = b.select(b.fcmp_ordered("<", x, lo), lo, x)
        xc = b.select(b.fcmp_ordered(">", xc, hi), hi, xc)
        k = self.intrinsic("floor", b.fadd(b.fmul(xc, c(1.44269504088896341), flags=fm), c(0.5), flags=fm))
        r = b.fsub(xc, b.fmul(k, c(0.693359375), flags=fm), flags=fm)
        r = b.fsub(r, b.fmul(k, c(-2.12194440e-4), flags=fm), flags=fm)
        poly = (
            1.9875691500e-4,
            1.3981999507e-3,
            8.3334519073e-3,
            4.1665795894e-2,
            1.6666665459e-1,
            5.0000001201e-1,
        )
        p = self._horner_f32(r, poly)
        y = b.fadd(b.fadd(b.fmul(p, b.fmul(r, r, flags=fm), flags=fm), r, flags=fm), c(1.0), flags=fm)
        ki = self.cast(f32, i32, k)
        k1 = b.ashr(ki, const(i32, 1, lanes))
        k2 = b.sub(ki, k1)
        for half in (k1, k2):
            bits = b.shl(b.add(half, const(i32, 127, lanes)), const(i32, 23, lanes))
            y = b.fmul(y, b.bitcast(bits, x.type), flags=fm)
        return b.select(b.fcmp_unordered("uno", x, x), x, y)

    def _horner_f32(self, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
        """c0 x^n + c1 x^(n-1) + ... + cn by Horner's rule in float32 (the polynomials of the
        inlined exp, sin and cos)."""
        lanes = lanes_of(x)
        p = const(dtype("float32"), coeffs[0], lanes)
        for coeff in coeffs[1:]:
            p = self.b.fadd(
                self.b.fmul(p, x, flags=self.fm), const(dtype("float32"), coeff, lanes), flags=self.fm
            )
        return p

    def sincos_f32(self, name: str, x: ir.Value) -> ir.Value:
        """sin or cos in float32 without libm, so vectors stay vectors (rotary embeddings take one
        per lane; llvm.cos.v8f32 becomes eight cosf calls): Cephes' sinf/cosf polynomials on
        [-pi/4, pi/4], within 2 ulp.

        The argument is reduced in float64, x = k pi/2 + r with pi/2 in two parts and fused
        multiply-adds, so r keeps float32's precision for |x| up to ~1e9 (positions times
        frequencies stay far below). sin x is +-sin r or +-cos r by k mod 4; cos x = sin(x + pi/2)
        takes k + 1. inf and nan give nan, as libm does.
        """
        b, fm, lanes = self.b, self.fm, lanes_of(x)
        f32, f64, i64 = dtype("float32"), dtype("float64"), dtype("int64")

        def c(v: float, d: DType = f32) -> ir.Value:
            return const(d, v, lanes)

        xd = self.cast(f32, f64, x)
        k = self.intrinsic("roundeven", b.fmul(xd, c(0.63661977236758134308, f64)))
        r = self.intrinsic("fma", b.fneg(k), c(1.5707963267948966, f64), xd)
        r = self.cast(f64, f32, self.intrinsic("fma", b.fneg(k), c(6.123233995736766e-17, f64), r))
        quadrant = self.cast(f64, i64, k)
        if name == "cos":
            quadrant = b.add(quadrant, const(i64, 1, lanes))
        z = b.fmul(r, r, flags=fm)
        sin_r = self._horner_f32(z, (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1))
        sin_r = b.fadd(b.fmul(b.fmul(sin_r, z, flags=fm), r, flags=fm), r, flags=fm)
        cos_r = self._horner_f32(z, (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2))
        cos_r = b.fadd(
            b.fmul(b.fmul(cos_r, z, flags=fm), z, flags=fm),
            b.fsub(c(1.0), b.fmul(z, c(0.5), flags=fm), flags=fm),
            flags=fm,
        )
        odd = b.icmp_signed("!=", b.and_(quadrant, const(i64, 1, lanes)), const(i64, 0, lanes))
        negate = b.icmp_signed("!=", b.and_(quadrant, const(i64, 2, lanes)), const(i64, 0, lanes))
        y = b.select(odd, cos_r, sin_r)
        y = b.select(negate, b.fneg(y), y)
        finite = b.fcmp_ordered("ord", b.fsub(x, x), b.fsub(x, x))  # false for inf and nan
        return b.select(finite, y, b.fsub(x, x))

    def _int_intrin(self, name: str, d: DType, x: ir.Value) -> ir.Value:
        match name:
            case "neg":
                return self.b.sub(ir.Constant(x.type, None), x)
            case "abs":
                return self.intrinsic("abs", x, ir.Constant(ir.IntType(1), 0)) if d.signed else x
            case "floor" | "ceil" | "round":
                return x
        raise NotImplementedError(f"intrinsic {name!r} needs a float operand, found {d.name}; cast it first")
