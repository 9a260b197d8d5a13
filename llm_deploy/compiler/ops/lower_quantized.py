"""Kernels of the quantized ops: dequantize as they read, scheduled for the CPU here.

Each packing gives one thing: the float32 value of weight element (j, k) with k = L*g + l, where
`l` is the lane of a vectorized loop of L lanes and `g` the loop around it (`DEQUANT` below).
Index arithmetic is written so that `l` appears only as `+ l` in the innermost dim: every load
is then a contiguous vector load or a scalar broadcast, never a gather.

dequantize_linear, Out[i, j] = sum_k X[i, k] * W[j, k] over x (n, K) and W (N, K):

    for jo in parallel(N / C):                  # C rows of W per task; W is read once per call
        w: float32[C, K] (local)                # the C rows, dequantized once
        for r, g, l in C x K/L x vectorized(L):  w[r, L*g + l] = DEQUANT(C*jo + r, g, l)
        for i in n:                             # every row of x against the C rows
            acc: float32[C, 8] (local)          # 8 lanes per row, summed at the end
            for g in K / 8:
                for l in vectorized(8):
                    for r in unrolled(C):  acc[r, l] += X[i, 8*g + l] * w[r, 8*g + l]
            Out[i, C*jo + r] = acc[r, 0] + ... + acc[r, 7]

The x row is loaded once per C fused multiply-adds. Decode (n = 1) and prefill share the kernel;
the dequantized rows live in a few KB of stack, never in a tensor of the weight's shape.
The schedules pass (passes/schedule.py) leaves these kernels alone: they carry `scheduled`.
"""

from __future__ import annotations

from collections.abc import Callable

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.expr import Call
from llm_deploy.compiler.ops.lower_common import Lowered, known
from llm_deploy.compiler.ops.quantized import packed_specs
from llm_deploy.compiler.ops.registry import InferContext, register_legalize
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.compiler.struct_info import StructInfo
from llm_deploy.quantization.formats import FloatPacking, GGMLPacking, GroupPacking, Packing, packing_from_key

F32 = "float32"
LANES = 8  # float32 lanes of the dot product (AVX2); LLVM splits or merges for other widths
Bufs = dict[str, T.Buffer]
Dequant = Callable[[Bufs, PrimExpr, PrimExpr, PrimExpr], T.Value]


def _f(v: T.Value) -> T.Value:
    return T.cast(F32, v)


def _bits(dtype: str, v: int | PrimExpr) -> T.Value:
    """An integer constant or index value in `dtype` (shift amounts and masks)."""
    return T.Imm(v, dtype) if isinstance(v, int) else T.cast(dtype, v)


def _field(byte: T.Value, shift: PrimExpr | int, mask: int) -> T.Value:
    """(byte >> shift) & mask, widened to int32 first: x86 has no vector shifts of bytes."""
    wide = T.cast("int32", byte)
    return T.binary("bitand", T.binary("shr", wide, _bits("int32", shift)), T.Imm(mask, "int32"))


# ---------------------------------------------------------------------------------------------
# Element (j, k = L*g + l) of each packing, and its L


def _float(b: Bufs, j, g, l) -> T.Value:
    return _f(b["weight"][j, LANES * g + l])


def _group(p: GroupPacking) -> Dequant:
    mask = 2**p.bits - 1
    words_per_group = p.group_size // p.per_word

    def value(b: Bufs, j, g, l) -> T.Value:
        word = b["qweight"][j, g]  # one uint32 holds the L = per_word values of this step
        q = T.binary("bitand", T.binary("shr", word, _bits("uint32", p.bits * l)), T.Imm(mask, "uint32"))
        return (_f(T.cast("int32", q)) - float(p.max_int)) * _f(b["scale"][j, g // words_per_group])

    return value


def _q4_nibble(b: Bufs, j, g, l) -> T.Value:
    """Q4_0/Q4_1 element 8*(g%4) + l of block g//4: byte (that) % 16, nibble (that) // 16."""
    return _f(_field(b["qs"][j, 16 * (g // 4) + 8 * (g % 2) + l], 4 * ((g % 4) // 2), 0x0F))


def _q4_0(b: Bufs, j, g, l) -> T.Value:
    return _f(b["d"][j, g // 4]) * (_q4_nibble(b, j, g, l) - 8.0)


def _q4_1(b: Bufs, j, g, l) -> T.Value:
    return _f(b["d"][j, g // 4]) * _q4_nibble(b, j, g, l) + _f(b["m"][j, g // 4])


def _q8_0(b: Bufs, j, g, l) -> T.Value:
    return _f(b["qs"][j, LANES * g + l]) * _f(b["d"][j, g // 4])


def _k_low_nibble(b: Bufs, j, g, l) -> T.Value:
    """Q4_K/Q5_K element t = 8*(g%32) + l of super-block g//32: byte 32*(t//64) + t%32, nibble (t//32)%2."""
    byte = b["qs"][j, 128 * (g // 32) + 32 * ((g % 32) // 8) + 8 * (g % 4) + l]
    return _field(byte, 4 * ((g // 4) % 2), 0x0F)


def _k_scaled(b: Bufs, j, g, q: T.Value) -> T.Value:
    """(d * sc) * q - dmin * mn, per sub-block of 32 (gguf's order)."""
    d = _f(b["d"][j, g // 32]) * _f(b["sc"][j, g // 4])
    dm = _f(b["dmin"][j, g // 32]) * _f(b["mn"][j, g // 4])
    return d * _f(q) - dm


def _q4_k(b: Bufs, j, g, l) -> T.Value:
    return _k_scaled(b, j, g, _k_low_nibble(b, j, g, l))


def _q5_k(b: Bufs, j, g, l) -> T.Value:
    high = _field(b["qh"][j, 32 * (g // 32) + 8 * (g % 4) + l], (g % 32) // 4, 0x01)  # bit t // 32
    q = T.binary("bitor", _k_low_nibble(b, j, g, l), T.binary("shl", high, T.Imm(4, "int32")))
    return _k_scaled(b, j, g, q)


def _q6_k(b: Bufs, j, g, l) -> T.Value:
    half = (g % 32) // 16  # t // 128
    low = _field(b["ql"][j, 128 * (g // 32) + 64 * half + 8 * (g % 8) + l], 4 * ((g % 16) // 8), 0x0F)
    high = _field(b["qh"][j, 64 * (g // 32) + 32 * half + 8 * (g % 4) + l], 2 * ((g % 16) // 4), 0x03)
    q = _f(T.binary("bitor", low, T.binary("shl", high, T.Imm(4, "int32")))) - 32.0
    return (_f(b["d"][j, g // 32]) * _f(b["sc"][j, g // 2])) * q


GGML_DEQUANT: dict[str, Dequant] = {
    "F32": _float,
    "F16": _float,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q8_0": _q8_0,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


def dequant_of(p: Packing) -> tuple[int, Dequant]:
    """(L, value) of a packing: element (j, L*g + l) is value(buffers, j, g, l)."""
    match p:
        case FloatPacking():
            return LANES, _float
        case GroupPacking():
            return p.per_word, _group(p)
        case GGMLPacking(ggml_type):
            return LANES, GGML_DEQUANT[ggml_type]
    raise NotImplementedError(f"no kernel for packing {p!r}")


# ---------------------------------------------------------------------------------------------
# Kernels


def _dequant_row(
    bufs: Bufs, dest: T.Buffer, dest_row: list[PrimExpr], j: PrimExpr, p: Packing, k: int, tag: str
):
    """dest[*dest_row, L*g + l] = W[j, L*g + l] for every k."""
    lanes, value = dequant_of(p)
    g, l = S.var(f"g{tag}"), S.var(f"l{tag}")
    store = T.Store(dest, (*dest_row, lanes * g + l), value(bufs, j, g, l))
    return T.For(g, k // lanes, T.For(l, lanes, store, "vectorized"))


def _packed_buffers(call: Call) -> tuple[Packing, tuple[int, int], list[T.Buffer]]:
    shape = tuple(int(d) for d in call.attrs["shape"])
    packing = packing_from_key(call.attrs["packing"])
    return packing, shape, [T.Buffer(s.suffix, s.shape, s.dtype) for s in packed_specs(call)]  # type: ignore[return-value]


def _rows_dim(info: StructInfo) -> PrimExpr | None:
    """The row count of a 2-d operand when a kernel can bind it from its buffer (a constant or a var)."""
    t = known(info)
    if t is None or t.ndim != 2 or not isinstance(t.shape[0], (S.IntImm, SymVar)):
        return None
    return t.shape[0]


def _row_block(n_rows: int) -> int:
    return next(c for c in (4, 2, 1) if n_rows % c == 0)


def _kernel_name(call: Call, packing: Packing) -> str:
    tag = packing.key.replace(":", "_").replace("float16", "f16").replace("float32", "f32").lower()
    return f"{call.op.name}_{tag}"  # type: ignore[attr-defined]


def _dot_nest(
    X: T.Buffer, Out: T.Buffer, jo: PrimExpr, row0: PrimExpr, nrows: int, c: int, k: int, lanes: int, weight
) -> T.Stmt:
    """Out[i, c*jo + r] = sum_k X[i, k] * weight(r, g, l) for the `nrows` rows i from `row0` and the
    C rows r of W, k = lanes*g + l: a register block of nrows x C accumulators of `lanes` lanes
    (independent chains of fused multiply-adds), each x vector used C times, each weight nrows."""
    acc = T.Buffer("acc", (nrows, c, lanes), F32, "local")
    t, r, g, l = S.var("t"), S.var("r"), S.var("g"), S.var("l")

    def block(stmt: T.Stmt, vector: bool = True) -> T.Stmt:
        """stmt for every (t, r) of the block (unrolled), innermost along the lanes."""
        inner = T.For(r, c, T.For(t, nrows, stmt, "unrolled"), "unrolled")
        return T.For(l, lanes, inner, "vectorized") if vector else inner

    zero = block(T.Store(acc, (t, r, l), T.Imm(0.0, F32)))
    steps = k // lanes
    unroll = 4 if steps % 4 == 0 else 1  # a group of 32 per iteration: its scales load once
    go, gi = S.var("go"), S.var("gi")
    g_ = unroll * go + gi if unroll > 1 else g
    fma = T.Store(acc, (t, r, l), acc[t, r, l] + X[row0 + t, lanes * g_ + l] * weight(r, g_, l))
    dot = (
        T.For(go, steps // unroll, T.For(gi, unroll, block(fma), "unrolled"))
        if unroll > 1
        else T.For(g, steps, block(fma))
    )
    total = acc[t, r, 0]
    for lane in range(1, lanes):
        total = total + acc[t, r, lane]
    store = block(T.Store(Out, (row0 + t, c * jo + r), total), vector=False)
    return T.Allocate(acc, T.seq(zero, dot, store))


X_ROWS = 2  # rows of x per register block of the staged path (x C rows of W: 8 accumulators)
X_TILE_BYTES = 1 << 17  # a tile of x's rows kept in L2 while W's rows stream past it


def x_tile_rows(k: int) -> int:
    """Rows of x per tile: a power of two (a multiple of X_ROWS) of about X_TILE_BYTES."""
    rows = X_ROWS
    while rows * 2 * k * 4 <= X_TILE_BYTES:
        rows *= 2
    return rows


@register_legalize("dequantize_linear")
def _lower_dequantize_linear(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    rows, out = _rows_dim(infos[0]), known(out_info)
    if rows is None or out is None or known(infos[0]).dtype != F32 or out.dtype != F32:  # type: ignore[union-attr]
        return None
    packing, (n_out, k), packed = _packed_buffers(call)
    lanes, value = dequant_of(packing)
    if k % LANES or k % lanes:
        return None
    bufs = {b.name: b for b in packed}
    X = T.Buffer("X", (rows, k), F32)
    Out = T.Buffer("Out", (rows, n_out), F32)
    c = _row_block(n_out)
    jo, i, r, ti = S.var("jo"), S.var("i"), S.var("rw"), S.var("ti")
    tasks = n_out // c

    # One row of x (decode): dequantize in registers, straight into the products.
    fused = T.For(
        i, rows, _dot_nest(X, Out, jo, i, 1, c, k, lanes, lambda r, g, l: value(bufs, c * jo + r, g, l))
    )
    # Several rows: a tile of x that stays in L2 at a time; for it, the C rows of W dequantized
    # once into w, then every row of the tile against them, X_ROWS rows per register block.
    w = T.Buffer("w", (c, k), F32, "local")
    dequant = T.For(r, c, _dequant_row(bufs, w, [r], c * jo + r, packing, k, "w"))

    def from_w(r, g, l):
        return w[r, LANES * g + l]

    tile = x_tile_rows(k)
    base = ti * tile
    m = S.minimum(tile, rows - base)  # rows of this tile
    io, it = S.var("io"), S.var("it")
    full = S.floordiv(m, X_ROWS)
    blocks = T.For(io, full, _dot_nest(X, Out, jo, base + X_ROWS * io, X_ROWS, c, k, LANES, from_w))
    rest = T.For(
        it, m - full * X_ROWS, _dot_nest(X, Out, jo, base + full * X_ROWS + it, 1, c, k, LANES, from_w)
    )
    staged = T.For(
        ti,
        S.floordiv(rows + (tile - 1), tile),
        T.For(jo, tasks, T.Allocate(w, T.seq(dequant, blocks, rest)), "parallel"),
    )
    fused = T.For(jo, tasks, fused, "parallel")
    match rows:
        case S.IntImm(1):
            body = fused
        case S.IntImm():
            body = staged
        case _:
            body = T.IfThenElse(T.binary("eq", rows, S.IntImm(1)), fused, staged)
    func = T.PrimFunc((X, *packed, Out), body, {"scheduled": True})
    return Lowered(func, tuple(call.args), (), _kernel_name(call, packing))


@register_legalize("dequantize_take")
def _lower_dequantize_take(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    ids_info, out = known(infos[0]), known(out_info)
    if (
        ids_info is None
        or out is None
        or ids_info.ndim != 1
        or not isinstance(ids_info.shape[0], (S.IntImm, SymVar))
    ):
        return None
    packing, (_, k), packed = _packed_buffers(call)
    lanes, _ = dequant_of(packing)
    if k % lanes:
        return None
    n = ids_info.shape[0]
    ids = T.Buffer("ids", (n,), ids_info.dtype)
    Out = T.Buffer("Out", (n, k), F32)
    i, row = S.var("i"), S.var("row")
    body = T.For(
        i,
        n,
        T.Let(
            row,
            T.cast("int64", ids[i]),
            _dequant_row({b.name: b for b in packed}, Out, [i], row, packing, k, ""),
        ),
    )
    func = T.PrimFunc((ids, *packed, Out), body, {"scheduled": True})
    return Lowered(func, tuple(call.args), (), _kernel_name(call, packing))
