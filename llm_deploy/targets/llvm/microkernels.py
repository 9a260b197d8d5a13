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
weights go through `vpsignb`/`vpabsb` first. Elsewhere the same sums come from plain widening
vector multiplies (any LLVM target). Per-block int32 partial sums land in 8 float lanes, summed once
per output: the float rounding differs from the reference's order by a few ulps, nothing more.
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
declare float @llvm.fma.f32(float, float, float)
declare <32 x i8> @llvm.abs.v32i8(<32 x i8>, i1)
declare i64 @llvm.smax.i64(i64, i64)
declare i64 @llvm.smin.i64(i64, i64)
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
    for q in range(4):
        idx = ", ".join(f"i32 {8 * q + i}" for i in range(8))
        lines.append(f"  %pq{q}.{b} = shufflevector <32 x i32> %pr.{b}, <32 x i32> poison, <8 x i32> <{idx}>")
    lines += [
        f"  %pa.{b} = add <8 x i32> %pq0.{b}, %pq1.{b}",
        f"  %pb.{b} = add <8 x i32> %pq2.{b}, %pq3.{b}",
        f"  %p32.{b} = add <8 x i32> %pa.{b}, %pb.{b}",
    ]
    return load_x + "\n".join(lines) + "\n"


ACCUMULATORS = 4  # independent chains of fused multiply-adds across a row's blocks


def _scales(ggml_type: str, nb: int) -> str:
    """Per group g of 8 blocks: %sc.g = dw * dx (8 lanes), and the offset terms summed into the
    vector %off.g (Q4_1: m * s, Q4_0: -8 * dw * s). Blocks past the last full group: scalars
    %sc.b and %offs.b."""
    lines = []
    groups = nb // 8
    prev = _splat("float", 8, "0.0")
    for g in range(groups):
        lines += [
            f"  %dvp.{g} = getelementptr inbounds half, ptr %drow, i64 {8 * g}",
            f"  %dvh.{g} = load <8 x half>, ptr %dvp.{g}, align 2",
            f"  %dv.{g} = fpext <8 x half> %dvh.{g} to <8 x float>",
            f"  %xdvp.{g} = getelementptr inbounds float, ptr %xdrow, i64 {8 * g}",
            f"  %xdv.{g} = load <8 x float>, ptr %xdvp.{g}, align 4",
            f"  %sc.{g} = fmul <8 x float> %dv.{g}, %xdv.{g}",
        ]
        if ggml_type != "Q8_0":
            lines += [
                f"  %xsvp.{g} = getelementptr inbounds float, ptr %xsrow, i64 {8 * g}",
                f"  %xsv.{g} = load <8 x float>, ptr %xsvp.{g}, align 4",
            ]
            if ggml_type == "Q4_1":
                lines += [
                    f"  %mvp.{g} = getelementptr inbounds half, ptr %mrow, i64 {8 * g}",
                    f"  %mvh.{g} = load <8 x half>, ptr %mvp.{g}, align 2",
                    f"  %mv.{g} = fpext <8 x half> %mvh.{g} to <8 x float>",
                ]
            else:
                lines.append(f"  %mv.{g} = fmul <8 x float> %dv.{g}, {_splat('float', 8, '-8.0')}")
            lines.append(
                f"  %off.{g} = call <8 x float> @llvm.fma.v8f32(<8 x float> %mv.{g}, <8 x float> %xsv.{g}, <8 x float> {prev})"
            )
            prev = f"%off.{g}"
    lines.append(f"  %offv = fadd <8 x float> {prev}, {_splat('float', 8, '0.0')}")
    prev_s = "0.0"
    for b in range(8 * groups, nb):
        lines += [
            f"  %dsp.{b} = getelementptr inbounds half, ptr %drow, i64 {b}",
            f"  %dsh.{b} = load half, ptr %dsp.{b}, align 2",
            f"  %ds.{b} = fpext half %dsh.{b} to float",
            f"  %xdsp.{b} = getelementptr inbounds float, ptr %xdrow, i64 {b}",
            f"  %xds.{b} = load float, ptr %xdsp.{b}, align 4",
            f"  %scs.{b} = fmul float %ds.{b}, %xds.{b}",
        ]
        if ggml_type != "Q8_0":
            lines += [
                f"  %xssp.{b} = getelementptr inbounds float, ptr %xsrow, i64 {b}",
                f"  %xss.{b} = load float, ptr %xssp.{b}, align 4",
            ]
            if ggml_type == "Q4_1":
                lines += [
                    f"  %msp.{b} = getelementptr inbounds half, ptr %mrow, i64 {b}",
                    f"  %msh.{b} = load half, ptr %msp.{b}, align 2",
                    f"  %ms.{b} = fpext half %msh.{b} to float",
                ]
            else:
                lines.append(f"  %ms.{b} = fmul float %ds.{b}, -8.0")
            lines.append(
                f"  %offs.{b} = call float @llvm.fma.f32(float %ms.{b}, float %xss.{b}, float {prev_s})"
            )
            prev_s = f"%offs.{b}"
    lines.append(f"  %offsum = fadd float {prev_s}, 0.0")
    return "\n".join(lines) + "\n"


def _row_dot(ggml_type: str, avx2: bool, nb: int) -> str:
    """%dot: row %j of W against row %i of x, every block unrolled (nb is a constant)."""
    text = _scales(ggml_type, nb)
    acc = [_splat("float", 8, "0.0")] * ACCUMULATORS
    for b in range(nb):
        text += _load_weights(ggml_type, b) + _block_dot(ggml_type, avx2, b)
        text += f"  %pf.{b} = sitofp <8 x i32> %p32.{b} to <8 x float>\n"
        if b < 8 * (nb // 8):  # the group's scale vector, lane b % 8 in every lane
            lane = ", ".join([f"i32 {b % 8}"] * 8)
            text += (
                f"  %s.{b} = shufflevector <8 x float> %sc.{b // 8}, <8 x float> poison, <8 x i32> <{lane}>\n"
            )
        else:
            text += (
                f"  %s0.{b} = insertelement <8 x float> poison, float %scs.{b}, i64 0\n"
                f"  %s.{b} = shufflevector <8 x float> %s0.{b}, <8 x float> poison, <8 x i32> zeroinitializer\n"
            )
        a = b % ACCUMULATORS
        text += f"  %acc.{b} = call <8 x float> @llvm.fma.v8f32(<8 x float> %pf.{b}, <8 x float> %s.{b}, <8 x float> {acc[a]})\n"
        acc[a] = f"%acc.{b}"
    text += (
        f"  %acc01 = fadd <8 x float> {acc[0]}, {acc[1]}\n"
        f"  %acc23 = fadd <8 x float> {acc[2]}, {acc[3]}\n"
        "  %accv = fadd <8 x float> %acc01, %acc23\n"
        "  %accall = fadd <8 x float> %accv, %offv\n"
        "  %vsum = call float @llvm.vector.reduce.fadd.v8f32(float 0.0, <8 x float> %accall)\n"
        "  %dot = fadd float %vsum, %offsum\n"
    )
    return text


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
{_quantize_quarters()}
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
{mrow}  br label %iloop
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


def _quantize_quarters() -> str:
    """x * (1/d), rounded half to even, as int32 (for the sum) and stored as int8 at xq[32*blk]."""
    lines = ["  %qdst = getelementptr inbounds i8, ptr %xq, i64 %xoff.q"]
    for q in range(4):
        lines += [
            f"  %y{q} = fmul <8 x float> %x{q}, %idv",
            f"  %r{q} = call <8 x float> @llvm.roundeven.v8f32(<8 x float> %y{q})",
            f"  %q{q} = fptosi <8 x float> %r{q} to <8 x i32>",
            f"  %b{q} = trunc <8 x i32> %q{q} to <8 x i8>",
            f"  %dst{q} = getelementptr inbounds i8, ptr %qdst, i64 {8 * q}",
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
