"""Hand-written LLVM IR for kernels whose best code the loop IR cannot express: integer dot products
of GGUF blocks with int8-quantized activations (llama.cpp's `vec_dot_q4_1_q8_1` and friends).

A tensor program carrying `microkernel = "q8dot:<ggml type>"` keeps its loop body as the
reference (the interpreters run it, other targets compile it); this target replaces the body with
the function below, as TVM's tensorize swaps a loop nest for an intrinsic. Per call:

1. every row of x is quantized, per block of 32, to int8 with one float scale d = max|x| / 127
   (round half to even) and the block's scaled sum s = d * sum(q) (Q4_0/Q4_1's offset term);
2. the rows of W are split across the thread pool; each block's 32 products are summed exactly in
   integers, then scaled in float:
   Q4_1: dw*dx*sum(qw*qx) + mw*s,   Q4_0: dw*dx*sum(qw*qx) - 8*dw*s,   Q8_0: dw*dx*sum(qw*qx).

With AVX2, 32 products take one `vpmaddubsw` (unsigned nibbles x signed int8, pairs into int16:
at most 2*15*127 or 2*128*127, no saturation) and one `vpmaddwd` (pairs into int32); Q8_0's signed
weights go through `vpsignb`/`vpabsb` first. 4-bit rows go two blocks at a time: one 32-byte load
holds both blocks' codes, and x is stored interleaved to match, so the nibbles need no shuffle.
Elsewhere the same sums come from plain widening vector multiplies (any LLVM target). Per-block
int32 partial sums land in 8 float lanes, summed once per output: the float rounding differs from
the reference's order by a few ulps, nothing more. Each row prefetches the codes of a row
PREFETCH_BYTES ahead: the weights stream from memory once per token, and the hardware prefetcher
alone left a third of the bandwidth unused.
"""

from __future__ import annotations

import re

from llm_deploy.targets.llvm import threadpool as pool

BLOCK = 32
TYPES = ("Q4_0", "Q4_1", "Q8_0")


def symbol(kernel: str) -> str:
    return f"llmd_micro_{kernel}"


def arrays_of(ggml_type: str) -> tuple[str, ...]:
    """The weight arrays a q8dot kernel takes, in parameter order (as gguf_blocks splits them)."""
    return ("d", "m", "qs") if ggml_type == "Q4_1" else ("d", "qs")


_DECLS = """
declare ptr @malloc(i64)
declare void @free(ptr)
declare void @PARALLEL_FOR(ptr, ptr, i64)
declare <8 x float> @llvm.fabs.v8f32(<8 x float>)
declare <8 x float> @llvm.maxnum.v8f32(<8 x float>, <8 x float>)
declare float @llvm.vector.reduce.fmax.v8f32(<8 x float>)
declare <8 x float> @llvm.roundeven.v8f32(<8 x float>)
declare i32 @llvm.vector.reduce.add.v8i32(<8 x i32>)
declare float @llvm.vector.reduce.fadd.v8f32(float, <8 x float>)
declare <8 x float> @llvm.fma.v8f32(<8 x float>, <8 x float>, <8 x float>)
declare <32 x i8> @llvm.abs.v32i8(<32 x i8>, i1)
declare i64 @llvm.smax.i64(i64, i64)
declare i64 @llvm.smin.i64(i64, i64)
declare void @llvm.prefetch.p0(ptr, i32, i32, i32)
"""

_AVX2_DECLS = """
declare <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8>, <32 x i8>)
declare <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16>, <16 x i16>)
declare <32 x i8> @llvm.x86.avx2.psign.b(<32 x i8>, <32 x i8>)
"""


def module_ir(kernels: dict[str, tuple[str, tuple[int, ...], int]], avx2: bool) -> str:
    """One LLVM module defining each function named in `kernels` -> (ggml type, the row counts
    of its weights, K)."""
    parts = [_DECLS.replace("PARALLEL_FOR", pool.PARALLEL_FOR), _AVX2_DECLS if avx2 else ""]
    parts += [_kernel_ir(name, t, n, k, avx2) for name, (t, n, k) in kernels.items()]
    return "\n".join(parts)


def _splat(ty: str, lanes: int, value: str) -> str:
    return "<" + ", ".join([f"{ty} {value}"] * lanes) + ">"


def _load_weights(ggml_type: str, b: int) -> str:
    """%w.b (<32 x i8>): the codes of block b of the row at %wq, in x's element order."""
    if ggml_type == "Q8_0":
        return f"  %wp.{b} = getelementptr inbounds i8, ptr %wq, i64 {32 * b}\n  %w.{b} = load <32 x i8>, ptr %wp.{b}, align 1\n"
    # 16 bytes: element l in the low nibble of byte l, element l + 16 in its high nibble.
    order = ", ".join(f"i32 {i}" for i in range(32))
    return (
        f"  %wp.{b} = getelementptr inbounds i8, ptr %wq, i64 {16 * b}\n"
        f"  %wb.{b} = load <16 x i8>, ptr %wp.{b}, align 1\n"
        f"  %lo.{b} = and <16 x i8> %wb.{b}, {_splat('i8', 16, '15')}\n"
        f"  %hi.{b} = lshr <16 x i8> %wb.{b}, {_splat('i8', 16, '4')}\n"
        f"  %w.{b} = shufflevector <16 x i8> %lo.{b}, <16 x i8> %hi.{b}, <32 x i32> <{order}>\n"
    )


def _pair_dot(avx2: bool, b: int) -> str:
    """%p32.b (<8 x i32>): blocks b and b + 1 of a 4-bit row against x, lanes 0-3 summing block
    b's 32 products and lanes 4-7 block b + 1's.

    The two blocks' 32 code bytes load as one vector: their low nibbles are elements 0-15 of
    each block, the high nibbles elements 16-31. x's int8 blocks were stored pair-interleaved to
    match (see `_quantize_quarters`), so no shuffle of the codes is needed: two multiply-adds, one
    int16 add (at most 4*15*127, no overflow) and one pairwise widening add per two blocks.
    """
    lo, hi = _splat("i8", 32, "15"), _splat("i8", 32, "4")
    text = (
        f"  %wp.{b} = getelementptr inbounds i8, ptr %wq, i64 {16 * b}\n"
        f"  %wb.{b} = load <32 x i8>, ptr %wp.{b}, align 1\n"
        f"  %lo.{b} = and <32 x i8> %wb.{b}, {lo}\n"
        f"  %hi.{b} = lshr <32 x i8> %wb.{b}, {hi}\n"
        f"  %xap.{b} = getelementptr inbounds i8, ptr %xrowp, i64 {32 * b}\n"
        f"  %xa.{b} = load <32 x i8>, ptr %xap.{b}, align 1\n"
        f"  %xbp.{b} = getelementptr inbounds i8, ptr %xrowp, i64 {32 * b + 32}\n"
        f"  %xb.{b} = load <32 x i8>, ptr %xbp.{b}, align 1\n"
    )
    if avx2:
        ones = _splat("i16", 16, "1")
        return text + (
            f"  %pl.{b} = call <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8> %lo.{b}, <32 x i8> %xa.{b})\n"
            f"  %ph.{b} = call <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8> %hi.{b}, <32 x i8> %xb.{b})\n"
            f"  %p16.{b} = add <16 x i16> %pl.{b}, %ph.{b}\n"
            f"  %p32.{b} = call <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16> %p16.{b}, <16 x i16> {ones})\n"
        )
    lines = [
        f"  %lw.{b} = zext <32 x i8> %lo.{b} to <32 x i32>",
        f"  %hw.{b} = zext <32 x i8> %hi.{b} to <32 x i32>",
        f"  %xaw.{b} = sext <32 x i8> %xa.{b} to <32 x i32>",
        f"  %xbw.{b} = sext <32 x i8> %xb.{b} to <32 x i32>",
        f"  %pla.{b} = mul <32 x i32> %lw.{b}, %xaw.{b}",
        f"  %phb.{b} = mul <32 x i32> %hw.{b}, %xbw.{b}",
        f"  %pr.{b} = add <32 x i32> %pla.{b}, %phb.{b}",
    ]
    # lanes 0-3 sum elements 0-15 (block b), lanes 4-7 elements 16-31 (block b + 1)
    lines += _fold_to_8_lanes(b, lambda q, i: 16 * (i // 4) + 4 * q + i % 4)
    return text + "\n".join(lines) + "\n"


def paired_blocks(ggml_type: str, nb: int) -> int:
    """How many of a row's nb blocks go in pairs (4-bit types; an odd last block goes alone)."""
    return 0 if ggml_type == "Q8_0" else 2 * (nb // 2)


def _block_dot(ggml_type: str, avx2: bool, b: int) -> str:
    """%p32.b (<8 x i32>): the 32 products of %w.b with x's block, summed in pairs of pairs."""
    load_x = (
        f"  %xp.{b} = getelementptr inbounds i8, ptr %xrowp, i64 {32 * b}\n"
        f"  %xv.{b} = load <32 x i8>, ptr %xp.{b}, align 1\n"
    )
    if avx2:
        if ggml_type == "Q8_0":  # |w| (unsigned) times x with w's sign
            mul = (
                f"  %ua.{b} = call <32 x i8> @llvm.abs.v32i8(<32 x i8> %w.{b}, i1 false)\n"
                f"  %sx.{b} = call <32 x i8> @llvm.x86.avx2.psign.b(<32 x i8> %xv.{b}, <32 x i8> %w.{b})\n"
                f"  %p16.{b} = call <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8> %ua.{b}, <32 x i8> %sx.{b})\n"
            )
        else:
            mul = f"  %p16.{b} = call <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8> %w.{b}, <32 x i8> %xv.{b})\n"
        ones = _splat("i16", 16, "1")
        return (
            load_x
            + mul
            + f"  %p32.{b} = call <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16> %p16.{b}, <16 x i16> {ones})\n"
        )
    ext = "sext" if ggml_type == "Q8_0" else "zext"
    lines = [
        f"  %ww.{b} = {ext} <32 x i8> %w.{b} to <32 x i32>",
        f"  %xw.{b} = sext <32 x i8> %xv.{b} to <32 x i32>",
        f"  %pr.{b} = mul <32 x i32> %ww.{b}, %xw.{b}",
    ]
    lines += _fold_to_8_lanes(b, lambda q, i: 8 * q + i)
    return load_x + "\n".join(lines) + "\n"


def _fold_to_8_lanes(b: int, element) -> list[str]:
    """%p32.b: the 32 int32 products %pr.b summed into 8 lanes, lane i taking element(q, i) for
    q = 0..3 (the portable path's stand-in for vpmaddwd's pairing)."""
    lines = []
    for q in range(4):
        idx = ", ".join(f"i32 {element(q, i)}" for i in range(8))
        lines.append(f"  %pq{q}.{b} = shufflevector <32 x i32> %pr.{b}, <32 x i32> poison, <8 x i32> <{idx}>")
    return lines + [
        f"  %pa.{b} = add <8 x i32> %pq0.{b}, %pq1.{b}",
        f"  %pb.{b} = add <8 x i32> %pq2.{b}, %pq3.{b}",
        f"  %p32.{b} = add <8 x i32> %pa.{b}, %pb.{b}",
    ]


ACCUMULATORS = 4  # independent chains of fused multiply-adds across a row's blocks


def _scales(ggml_type: str, nb: int) -> str:
    """Per group g of 8 blocks: %sc.g = dw * dx (8 lanes), and the offset terms (Q4_1: m * s,
    Q4_0: -8 * dw * s) summed lane-wise into %offv. A last group of t < 8 blocks loads t-lane
    vectors and widens them with zero lanes (which add nothing to the offsets)."""
    lines = []
    prev = _splat("float", 8, "0.0")
    for g in range(-(-nb // 8)):
        t = min(8, nb - 8 * g)
        lines += _group_vector("dv", "half", "%drow", g, t) + _group_vector("xdv", "float", "%xdrow", g, t)
        lines.append(f"  %sc.{g} = fmul <8 x float> %dv.{g}, %xdv.{g}")
        if ggml_type == "Q8_0":
            continue
        lines += _group_vector("xsv", "float", "%xsrow", g, t)
        if ggml_type == "Q4_1":
            lines += _group_vector("mv", "half", "%mrow", g, t)
        else:
            lines.append(f"  %mv.{g} = fmul <8 x float> %dv.{g}, {_splat('float', 8, '-8.0')}")
        lines.append(
            f"  %off.{g} = call <8 x float> @llvm.fma.v8f32(<8 x float> %mv.{g}, <8 x float> %xsv.{g}, <8 x float> {prev})"
        )
        prev = f"%off.{g}"
    lines.append(f"  %offv = fadd <8 x float> {prev}, {_splat('float', 8, '0.0')}")
    return "\n".join(lines) + "\n"


def _group_vector(dst: str, ty: str, base: str, g: int, t: int) -> list[str]:
    """%dst.g (<8 x float>): the t elements at base + 8g (half: extended), zeros past t."""
    raw = f"%{dst}r.{g}" if t < 8 else f"%{dst}.{g}"
    src = f"%{dst}h.{g}" if ty == "half" else raw
    lines = [
        f"  %{dst}p.{g} = getelementptr inbounds {ty}, ptr {base}, i64 {8 * g}",
        f"  {src} = load <{t} x {ty}>, ptr %{dst}p.{g}, align {2 if ty == 'half' else 4}",
    ]
    if ty == "half":
        lines.append(f"  {raw} = fpext <{t} x half> {src} to <{t} x float>")
    if t < 8:
        widen = ", ".join(f"i32 {min(i, t)}" for i in range(8))
        lines.append(
            f"  %{dst}.{g} = shufflevector <{t} x float> {raw}, <{t} x float> zeroinitializer, <8 x i32> <{widen}>"
        )
    return lines


def _row_dot(ggml_type: str, avx2: bool, nb: int) -> str:
    """%dot: row %j of W against row %i of x, every block unrolled (nb is a constant)."""
    text = _scales(ggml_type, nb)
    acc = [_splat("float", 8, "0.0")] * ACCUMULATORS
    paired = paired_blocks(ggml_type, nb)
    units = [(b, 2) for b in range(0, paired, 2)] + [(b, 1) for b in range(paired, nb)]
    for n, (b, width) in enumerate(units):
        if width == 2:
            text += _pair_dot(avx2, b)
        else:
            text += _load_weights(ggml_type, b) + _block_dot(ggml_type, avx2, b)
        text += f"  %pf.{b} = sitofp <8 x i32> %p32.{b} to <8 x float>\n"
        text += _scale_lanes(b, width)
        a = n % ACCUMULATORS
        text += f"  %acc.{b} = call <8 x float> @llvm.fma.v8f32(<8 x float> %pf.{b}, <8 x float> %s.{b}, <8 x float> {acc[a]})\n"
        acc[a] = f"%acc.{b}"
    text += (
        f"  %acc01 = fadd <8 x float> {acc[0]}, {acc[1]}\n"
        f"  %acc23 = fadd <8 x float> {acc[2]}, {acc[3]}\n"
        "  %accv = fadd <8 x float> %acc01, %acc23\n"
        "  %accall = fadd <8 x float> %accv, %offv\n"
        "  %dot = call reassoc float @llvm.vector.reduce.fadd.v8f32(float 0.0, <8 x float> %accall)\n"
    )
    return text


def _scale_lanes(b: int, width: int) -> str:
    """%s.b: the scale of each lane of %p32.b (one block: block b's in all 8 lanes; a pair: block
    b's in lanes 0-3, b + 1's in 4-7), from its group's vector %sc.g."""
    lanes = [b % 8] * 8 if width == 1 else [b % 8] * 4 + [b % 8 + 1] * 4
    mask = ", ".join(f"i32 {lane}" for lane in lanes)
    return f"  %s.{b} = shufflevector <8 x float> %sc.{b // 8}, <8 x float> poison, <8 x i32> <{mask}>\n"


def _kernel_ir(name: str, ggml_type: str, parts: tuple[int, ...], k: int, avx2: bool) -> str:
    """The kernel: x (rows, K) against the weights of `parts` (their row counts), in one call.
    Parameters: X, each part's arrays (arrays_of order), each part's output, then rows."""
    nb = k // BLOCK
    fields = arrays_of(ggml_type)
    arrays = ", ".join(f"ptr noalias %{f}.p{p}" for p in range(len(parts)) for f in fields)
    outs = ", ".join(f"ptr noalias %Out.p{p}" for p in range(len(parts)))
    env = ["xq", "xd", "xs"] + [f"{f}.p{p}" for p in range(len(parts)) for f in (*fields, "Out")]
    env_t = "{ " + ", ".join(["ptr"] * len(env) + ["i64"]) + " }"  # ..., rows
    total = sum(parts)
    loops, offset = [], 0
    for p, n in enumerate(parts):
        after = f"p{p + 1}.check" if p + 1 < len(parts) else "exit"
        loops.append(_part_loop(ggml_type, avx2, n, nb, offset, f"p{p}", after))
        offset += n
    return f"""
define void @{name}(ptr noalias %X, {arrays}, {outs}, i64 %rows) {{
entry:
  %nq = mul i64 %rows, {k}
  %nf = mul i64 %rows, {nb * 8}
  %size = add i64 %nq, %nf
  %xq = call ptr @malloc(i64 %size)
  %xd = getelementptr inbounds i8, ptr %xq, i64 %nq
  %nbr = mul i64 %rows, {nb}
  %xs = getelementptr inbounds float, ptr %xd, i64 %nbr
  %any = icmp sgt i64 %nbr, 0
  br i1 %any, label %qloop, label %qdone
qloop:
  %blk = phi i64 [ 0, %entry ], [ %blk.next, %qloop ]
  %xoff.q = mul i64 %blk, 32
  %src = getelementptr inbounds float, ptr %X, i64 %xoff.q
  %x0 = load <8 x float>, ptr %src, align 4
  %src1 = getelementptr inbounds float, ptr %src, i64 8
  %x1 = load <8 x float>, ptr %src1, align 4
  %src2 = getelementptr inbounds float, ptr %src, i64 16
  %x2 = load <8 x float>, ptr %src2, align 4
  %src3 = getelementptr inbounds float, ptr %src, i64 24
  %x3 = load <8 x float>, ptr %src3, align 4
  %a0 = call <8 x float> @llvm.fabs.v8f32(<8 x float> %x0)
  %a1 = call <8 x float> @llvm.fabs.v8f32(<8 x float> %x1)
  %a2 = call <8 x float> @llvm.fabs.v8f32(<8 x float> %x2)
  %a3 = call <8 x float> @llvm.fabs.v8f32(<8 x float> %x3)
  %m01 = call <8 x float> @llvm.maxnum.v8f32(<8 x float> %a0, <8 x float> %a1)
  %m23 = call <8 x float> @llvm.maxnum.v8f32(<8 x float> %a2, <8 x float> %a3)
  %mall = call <8 x float> @llvm.maxnum.v8f32(<8 x float> %m01, <8 x float> %m23)
  %amax = call float @llvm.vector.reduce.fmax.v8f32(<8 x float> %mall)
  %dx = fdiv float %amax, 127.0
  %nz = fcmp one float %dx, 0.0
  %inv = fdiv float 1.0, %dx
  %id = select i1 %nz, float %inv, float 0.0
  %idv0 = insertelement <8 x float> poison, float %id, i64 0
  %idv = shufflevector <8 x float> %idv0, <8 x float> poison, <8 x i32> zeroinitializer
{_quantize_quarters(ggml_type, nb)}
  %s01 = add <8 x i32> %q0, %q1
  %s23 = add <8 x i32> %q2, %q3
  %sall = add <8 x i32> %s01, %s23
  %isum = call i32 @llvm.vector.reduce.add.v8i32(<8 x i32> %sall)
  %fsum = sitofp i32 %isum to float
  %sx = fmul float %dx, %fsum
  %dslot = getelementptr inbounds float, ptr %xd, i64 %blk
  store float %dx, ptr %dslot, align 4
  %sslot = getelementptr inbounds float, ptr %xs, i64 %blk
  store float %sx, ptr %sslot, align 4
  %blk.next = add nuw i64 %blk, 1
  %more = icmp ult i64 %blk.next, %nbr
  br i1 %more, label %qloop, label %qdone
qdone:
  %env = alloca {env_t}, align 8
{_env(env_t, env, store=True)}
  call void @{pool.PARALLEL_FOR}(ptr @{name}.task, ptr %env, i64 {total})
  call void @free(ptr %xq)
  ret void
}}

; Task t of n: rows [t*R/n, (t+1)*R/n) of all the parts' R rows, each against every row of x.
define internal void @{name}.task(i64 %task, i64 %ntasks, ptr %env) {{
entry:
{_env(env_t, env, store=False)}
  %t0 = mul i64 %task, {total}
  %j0 = udiv i64 %t0, %ntasks
  %task1 = add i64 %task, 1
  %t1 = mul i64 %task1, {total}
  %j1 = udiv i64 %t1, %ntasks
  br label %p0.check
{"".join(loops)}exit:
  ret void
}}
"""


def _part_loop(ggml_type: str, avx2: bool, n: int, nb: int, offset: int, p: str, after: str) -> str:
    """Blocks `p.*`: the part's rows [offset, offset + n) of the task's range, then `after`."""
    wbytes = 32 if ggml_type == "Q8_0" else 16  # bytes of codes per block
    mrow = "  %mrow = getelementptr inbounds half, ptr %m, i64 %wblk\n" if ggml_type == "Q4_1" else ""
    text = f"""check:
  %a0 = call i64 @llvm.smax.i64(i64 %j0, i64 {offset})
  %lo = sub i64 %a0, {offset}
  %a1 = call i64 @llvm.smin.i64(i64 %j1, i64 {offset + n})
  %hi = sub i64 %a1, {offset}
  %rows.any = icmp sgt i64 %rows, 0
  %range = icmp slt i64 %lo, %hi
  %go = and i1 %rows.any, %range
  br i1 %go, label %jloop, label %{after}
jloop:
  %j = phi i64 [ %lo, %check ], [ %j.next, %ilatch ]
  %wblk = mul i64 %j, {nb}
  %woff = mul i64 %wblk, {wbytes}
  %wq = getelementptr inbounds i8, ptr %qs, i64 %woff
  %drow = getelementptr inbounds half, ptr %d, i64 %wblk
{mrow}{_prefetch(nb * wbytes)}  br label %iloop
iloop:
  %i = phi i64 [ 0, %jloop ], [ %i.next, %iloop ]
  %xblk = mul i64 %i, {nb}
  %xoff = mul i64 %xblk, 32
  %xrowp = getelementptr inbounds i8, ptr %xq, i64 %xoff
  %xdrow = getelementptr inbounds float, ptr %xd, i64 %xblk
  %xsrow = getelementptr inbounds float, ptr %xs, i64 %xblk
{_row_dot(ggml_type, avx2, nb)}  %orow = mul i64 %i, {n}
  %oidx = add i64 %orow, %j
  %op = getelementptr inbounds float, ptr %Out, i64 %oidx
  store float %dot, ptr %op, align 4
  %i.next = add nuw i64 %i, 1
  %imore = icmp ult i64 %i.next, %rows
  br i1 %imore, label %iloop, label %ilatch
ilatch:
  %j.next = add nuw i64 %j, 1
  %jmore = icmp slt i64 %j.next, %hi
  br i1 %jmore, label %jloop, label %{after}
"""
    shared = {"xq", "xd", "xs", "rows", "j0", "j1", "exit", after}
    parts = {"d", "m", "qs", "Out"}

    def rename(match: re.Match) -> str:
        name = match.group(1)
        if name in shared:
            return match.group(0)
        if name in parts:
            return f"%{name}.{p}"
        return f"%{p}.{name}"

    text = re.sub(r"%([A-Za-z_][\w.]*)", rename, text)
    # labels are defined as `name:` at the start of a line
    return re.sub(r"^([A-Za-z_][\w.]*):", lambda m: f"{p}.{m.group(1)}:", text, flags=re.M)


# How far ahead of the row being read its codes are prefetched. With the hardware prefetcher
# alone the LM head's GEMV (30 MB of Q8_0) read 24 GB/s of a 33 GB/s streaming read here; with
# this, 31-34 GB/s, and decode went from ~165 to ~190 tokens/s (bench/peers.py).
PREFETCH_BYTES = 4096


def _prefetch(row_bytes: int) -> str:
    """Prefetch hints for the codes of the first row at least PREFETCH_BYTES ahead, a cache line
    at a time (a prefetch past the end of the array is harmless: it never faults)."""
    ahead = -(-PREFETCH_BYTES // row_bytes) * row_bytes
    lines = []
    for c in range(0, row_bytes, 64):
        lines += [
            f"  %pf{c} = getelementptr i8, ptr %wq, i64 {ahead + c}",
            f"  call void @llvm.prefetch.p0(ptr %pf{c}, i32 0, i32 3, i32 1)",
        ]
    return "\n".join(lines) + "\n"


def _quantize_quarters(ggml_type: str, nb: int) -> str:
    """x * (1/d), rounded half to even, as int32 (for the sum) and stored as int8 in xq.

    Blocks stay in order, 32 bytes each, except that a row's paired blocks (`paired_blocks`)
    interleave their halves as the 4-bit codes do: elements 0-15 of block 2p, then of 2p + 1,
    then elements 16-31 of each. Block c of a pair starts at 32c - 16(c odd); its quarters sit at
    +0, +8, +32, +40 (an unpaired block: +0, +8, +16, +24).
    """
    paired = paired_blocks(ggml_type, nb)
    lines = []
    if paired:
        lines += [
            f"  %col = urem i64 %blk, {nb}",
            "  %odd = and i64 %col, 1",
            f"  %inpair = icmp ult i64 %col, {paired}",
            "  %back = mul i64 %odd, 16",
            "  %shift = select i1 %inpair, i64 %back, i64 0",
            "  %qoff = sub i64 %xoff.q, %shift",
            "  %half2 = select i1 %inpair, i64 32, i64 16",
            "  %half3 = add i64 %half2, 8",
        ]
        offsets = ["0", "8", "%half2", "%half3"]
    else:
        lines.append("  %qoff = add i64 %xoff.q, 0")
        offsets = ["0", "8", "16", "24"]
    lines.append("  %qdst = getelementptr inbounds i8, ptr %xq, i64 %qoff")
    for q in range(4):
        lines += [
            f"  %y{q} = fmul <8 x float> %x{q}, %idv",
            f"  %r{q} = call <8 x float> @llvm.roundeven.v8f32(<8 x float> %y{q})",
            f"  %q{q} = fptosi <8 x float> %r{q} to <8 x i32>",
            f"  %b{q} = trunc <8 x i32> %q{q} to <8 x i8>",
            f"  %dst{q} = getelementptr inbounds i8, ptr %qdst, i64 {offsets[q]}",
            f"  store <8 x i8> %b{q}, ptr %dst{q}, align 1",
        ]
    return "\n".join(lines)


def _env(env_t: str, names: list[str], store: bool) -> str:
    """Store (in the kernel) or load (in a task) the pointers `names`, then rows, through %env."""
    lines = []
    for i, name in enumerate([*names, "rows"]):
        ty = "i64" if name == "rows" else "ptr"
        lines.append(f"  %e{i} = getelementptr inbounds {env_t}, ptr %env, i32 0, i32 {i}")
        if store:
            lines.append(f"  store {ty} %{name}, ptr %e{i}, align 8")
        else:
            lines.append(f"  %{name} = load {ty}, ptr %e{i}, align 8")
    return "\n".join(lines)
