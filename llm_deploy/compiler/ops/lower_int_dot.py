"""The kernel of `int_dot_linear`: the loop nest that defines it, and the microkernel that replaces it.

The program below is the reference: it quantizes each row of x to int8 per block of 32, sums
each block's products in int32 and scales them in float32, exactly as
llm_deploy/quantization/int_dot.py does in numpy. The tir interpreter runs it as written. It
carries `microkernel = "q8dot:<type>"`: the LLVM target compiles its own hand-written code for
it instead of these loops (targets/llvm/microkernels.py, vpmaddubsw on AVX2), and fusion leaves
it alone. Other targets never see the op: only the CPU pipeline introduces it (passes/int_dot.py).
"""

from __future__ import annotations

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.expr import Call
from llm_deploy.compiler.ops.lower_common import Lowered, known
from llm_deploy.compiler.ops.lower_quantized import _field, _packed_buffers, _rows_dim
from llm_deploy.compiler.ops.registry import InferContext, register_legalize
from llm_deploy.compiler.struct_info import StructInfo

F32, I32 = "float32", "int32"
BLOCK = 32
MICROKERNEL = "q8dot"  # the `microkernel` attribute is "q8dot:<ggml type>"


def microkernel_type(f: T.PrimFunc) -> str | None:
    """The GGML type of a kernel whose `microkernel` attribute is a q8dot one, else None."""
    kind, _, ggml_type = str(f.attrs.get("microkernel", "")).partition(":")
    return ggml_type if kind == MICROKERNEL else None


def _code(bufs: dict[str, T.Buffer], ggml_type: str, j, b, t) -> T.Value:
    """The integer code of element t of block b in row j of W (nibble or int8), as int32."""
    if ggml_type == "Q8_0":
        return T.cast(I32, bufs["qs"][j, BLOCK * b + t])
    return _field(bufs["qs"][j, 16 * b + t % 16], 4 * (t // 16), 0x0F)


def _offset(bufs: dict[str, T.Buffer], ggml_type: str, j, b, xs: T.Value) -> T.Value | None:
    """The block's term that does not depend on the product: Q4_1's m*s, Q4_0's -8*d*s."""
    if ggml_type == "Q4_1":
        return T.cast(F32, bufs["m"][j, b]) * xs
    if ggml_type == "Q4_0":
        return T.cast(F32, bufs["d"][j, b]) * -8.0 * xs
    return None


@register_legalize("int_dot_linear")
def _lower_int_dot_linear(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    rows, out = _rows_dim(infos[0]), known(out_info)
    if rows is None or out is None:
        return None
    packing, (n_out, k), packed = _packed_buffers(call)
    ggml_type = packing.ggml_type  # type: ignore[attr-defined]
    X = T.Buffer("X", (rows, k), F32)
    Out = T.Buffer("Out", (rows, n_out), F32)
    func = int_dot_func(X, [({b.name: b for b in packed}, Out)], ggml_type)
    return Lowered(func, tuple(call.args), (), f"int_dot_linear_{ggml_type.lower()}")


def int_dot_func(
    X: T.Buffer, parts: list[tuple[dict[str, T.Buffer], T.Buffer]], ggml_type: str
) -> T.PrimFunc:
    """The reference program of x against one or more weights (each: its packed buffers by field,
    d/m/qs in the packing's order, and its output): x is quantized once, then every weight's rows
    follow. Parameters: X, every part's packed buffers, then every part's output."""
    rows, k = X.shape
    nb = k.value // BLOCK  # type: ignore[union-attr]
    xq = T.Buffer("xq", (k,), I32, "local")
    xd = T.Buffer("xd", (nb,), F32, "local")
    xs = T.Buffer("xs", (nb,), F32, "local")
    amax = T.Buffer("amax", (1,), F32, "local")
    inv = T.Buffer("inv", (1,), F32, "local")
    isum = T.Buffer("isum", (1,), I32, "local")
    acc = T.Buffer("acc", (1,), F32, "local")
    i, j, b, t = S.var("i"), S.var("j"), S.var("b"), S.var("t")
    x = X[i, BLOCK * b + t]

    d = xd[b]
    safe_d = T.select(T.binary("ne", d, T.Imm(0.0, F32)), d, T.Imm(1.0, F32))
    quantize_row = T.For(
        b,
        nb,
        T.seq(
            T.Store(amax, (0,), T.Imm(0.0, F32)),
            T.For(t, BLOCK, T.Store(amax, (0,), T.binary("max", amax[0], T.intrin("abs", x)))),
            T.Store(xd, (b,), amax[0] / 127.0),
            T.Store(inv, (0,), T.select(T.binary("ne", d, T.Imm(0.0, F32)), 1.0 / safe_d, T.Imm(0.0, F32))),
            T.Store(isum, (0,), T.Imm(0, I32)),
            T.For(
                t,
                BLOCK,
                T.seq(
                    T.Store(xq, (BLOCK * b + t,), T.cast(I32, T.intrin("round", x * inv[0]))),
                    T.Store(isum, (0,), isum[0] + xq[BLOCK * b + t]),
                ),
            ),
            T.Store(xs, (b,), d * T.cast(F32, isum[0])),
        ),
    )

    def dot_rows(bufs: dict[str, T.Buffer], Out: T.Buffer) -> T.Stmt:
        block_sum = T.For(
            t, BLOCK, T.Store(isum, (0,), isum[0] + _code(bufs, ggml_type, j, b, t) * xq[BLOCK * b + t])
        )
        scaled = T.cast(F32, bufs["d"][j, b]) * d * T.cast(F32, isum[0])
        offset = _offset(bufs, ggml_type, j, b, xs[b])
        term = scaled + offset if offset is not None else scaled
        return T.For(
            j,
            Out.shape[1],
            T.seq(
                T.Store(acc, (0,), T.Imm(0.0, F32)),
                T.For(
                    b,
                    nb,
                    T.seq(T.Store(isum, (0,), T.Imm(0, I32)), block_sum, T.Store(acc, (0,), acc[0] + term)),
                ),
                T.Store(Out, (i, j), acc[0]),
            ),
        )

    body = T.For(i, rows, T.seq(quantize_row, *(dot_rows(packed, out) for packed, out in parts)))
    for buf in (acc, isum, inv, amax, xs, xd, xq):
        body = T.Allocate(buf, body)
    params = (X, *(buf for bufs, _ in parts for buf in bufs.values()), *(out for _, out in parts))
    return T.PrimFunc(params, body, {"scheduled": True, "microkernel": f"{MICROKERNEL}:{ggml_type}"})
