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
"""

_AVX2_DECLS = """
declare <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8>, <32 x i8>)
declare <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16>, <16 x i16>)
declare <32 x i8> @llvm.x86.avx2.psign.b(<32 x i8>, <32 x i8>)
"""


def module_ir(kernels: dict[str, tuple[str, int, int]], avx2: bool) -> str:
    """One LLVM module defining each function named in `kernels` -> (ggml type, N, K)."""
    parts = [_DECLS.replace("PARALLEL_FOR", pool.PARALLEL_FOR), _AVX2_DECLS if avx2 else ""]
    parts += [_kernel_ir(name, t, n, k, avx2) for name, (t, n, k) in kernels.items()]
    return "\n".join(parts)


def _splat(ty: str, lanes: int, value: str) -> str:
    return "<" + ", ".join([f"{ty} {value}"] * lanes) + ">"


def _load_weights(ggml_type: str, r: int) -> str:
    """%w.r (<32 x i8>): the codes of W's block at %wp.r in x's element order."""
    if ggml_type == "Q8_0":
        return f"  %w.{r} = load <32 x i8>, ptr %wp.{r}, align 1\n"
    # 16 bytes: element l in the low nibble of byte l, element l + 16 in its high nibble.
    order = ", ".join(f"i32 {i}" for i in range(32))
    return (
        f"  %wb.{r} = load <16 x i8>, ptr %wp.{r}, align 1\n"
        f"  %lo.{r} = and <16 x i8> %wb.{r}, {_splat('i8', 16, '15')}\n"
        f"  %hi.{r} = lshr <16 x i8> %wb.{r}, {_splat('i8', 16, '4')}\n"
        f"  %w.{r} = shufflevector <16 x i8> %lo.{r}, <16 x i8> %hi.{r}, <32 x i32> <{order}>\n"
    )


def _block_dot(ggml_type: str, avx2: bool, r: int) -> str:
    """%p32.r (<8 x i32>): the 32 products of %w.r with x's block %xv, summed in pairs of pairs."""
    if avx2:
        if ggml_type == "Q8_0":  # |w| (unsigned) times x with w's sign
            mul = (
                f"  %ua.{r} = call <32 x i8> @llvm.abs.v32i8(<32 x i8> %w.{r}, i1 false)\n"
                f"  %sx.{r} = call <32 x i8> @llvm.x86.avx2.psign.b(<32 x i8> %xv, <32 x i8> %w.{r})\n"
                f"  %p16.{r} = call <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8> %ua.{r}, <32 x i8> %sx.{r})\n"
            )
        else:
            mul = (
                f"  %p16.{r} = call <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8> %w.{r}, <32 x i8> %xv)\n"
            )
        ones = _splat("i16", 16, "1")
        return (
            mul
            + f"  %p32.{r} = call <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16> %p16.{r}, <16 x i16> {ones})\n"
        )
    ext = "sext" if ggml_type == "Q8_0" else "zext"
    lines = [
        f"  %ww.{r} = {ext} <32 x i8> %w.{r} to <32 x i32>",
        f"  %pr.{r} = mul <32 x i32> %ww.{r}, %xw",
    ]
    for q in range(4):
        idx = ", ".join(f"i32 {8 * q + i}" for i in range(8))
        lines.append(f"  %pq{q}.{r} = shufflevector <32 x i32> %pr.{r}, <32 x i32> poison, <8 x i32> <{idx}>")
    lines += [
        f"  %pa.{r} = add <8 x i32> %pq0.{r}, %pq1.{r}",
        f"  %pb.{r} = add <8 x i32> %pq2.{r}, %pq3.{r}",
        f"  %p32.{r} = add <8 x i32> %pa.{r}, %pb.{r}",
    ]
    return "\n".join(lines) + "\n"


def _offset_term(ggml_type: str, r: int) -> str:
    """%accm.next.r: the scalar accumulator of the blocks' offset terms (Q4_1: m, Q4_0: -8d)."""
    if ggml_type == "Q4_1":
        return (
            f"  %mp.{r} = getelementptr inbounds half, ptr %m, i64 %wblk.{r}\n"
            f"  %mh.{r} = load half, ptr %mp.{r}, align 2\n"
            f"  %mw.{r} = fpext half %mh.{r} to float\n"
            f"  %accm.next.{r} = call float @llvm.fma.f32(float %mw.{r}, float %xsv, float %accm.{r})\n"
        )
    if ggml_type == "Q4_0":
        return (
            f"  %m8.{r} = fmul float %dw.{r}, 0xC020000000000000\n"  # -8 * dw
            f"  %accm.next.{r} = call float @llvm.fma.f32(float %m8.{r}, float %xsv, float %accm.{r})\n"
        )
    return f"  %accm.next.{r} = fadd float %accm.{r}, 0.0\n"


def _rows_loop(
    ggml_type: str, avx2: bool, n: int, nb: int, rows_per: int, p: str, j0: str, j1: str, done: str
) -> str:
    """Blocks labelled `p.*`: outputs j in [j0, j1) (a multiple of rows_per long), rows_per rows
    of W at a time against every row of x, then a branch to `done`. Entered at `p.check`."""
    wbytes = 32 if ggml_type == "Q8_0" else 16
    rr = range(rows_per)
    zero8 = _splat("float", 8, "0.0")
    out = [
        f"{p}.check:",
        f"  %{p}.go = icmp ult i64 {j0}, {j1}",
        f"  br i1 %{p}.go, label %{p}.j, label %{done}",
        f"{p}.j:",
        f"  %{p}.jj = phi i64 [ {j0}, %{p}.check ], [ %{p}.jj.next, %{p}.ilatch ]",
        f"  br label %{p}.i",
        f"{p}.i:",
        f"  %{p}.ii = phi i64 [ 0, %{p}.j ], [ %{p}.ii.next, %{p}.bdone ]",
        f"  %{p}.xrow = mul i64 %{p}.ii, {nb}",
        f"  br label %{p}.b",
        f"{p}.b:",
        f"  %{p}.bb = phi i64 [ 0, %{p}.i ], [ %{p}.bb.next, %{p}.b ]",
    ]
    body = []
    for r in rr:
        out += [
            f"  %acc.{r} = phi <8 x float> [ {zero8}, %{p}.i ], [ %acc.next.{r}, %{p}.b ]",
            f"  %accm.{r} = phi float [ 0.0, %{p}.i ], [ %accm.next.{r}, %{p}.b ]",
        ]
        body += [
            f"  %jr.{r} = add i64 %{p}.jj, {r}",
            f"  %wrow.{r} = mul i64 %jr.{r}, {nb}",
            f"  %wblk.{r} = add i64 %wrow.{r}, %{p}.bb",
            f"  %woff.{r} = mul i64 %wblk.{r}, {wbytes}",
            f"  %wp.{r} = getelementptr inbounds i8, ptr %qs, i64 %woff.{r}",
        ]
    body += [
        f"  %xblk = add i64 %{p}.xrow, %{p}.bb",
        "  %xoff = mul i64 %xblk, 32",
        "  %xp = getelementptr inbounds i8, ptr %xq, i64 %xoff",
        "  %xv = load <32 x i8>, ptr %xp, align 1",
        "  %xdp = getelementptr inbounds float, ptr %xd, i64 %xblk",
        "  %dxv = load float, ptr %xdp, align 4",
        "  %xsp = getelementptr inbounds float, ptr %xs, i64 %xblk",
        "  %xsv = load float, ptr %xsp, align 4",
    ]
    if not avx2:
        body.append("  %xw = sext <32 x i8> %xv to <32 x i32>")
    text = "\n".join(out + body) + "\n"
    for r in rr:
        text += _load_weights(ggml_type, r) + _block_dot(ggml_type, avx2, r)
        text += (
            f"  %pf.{r} = sitofp <8 x i32> %p32.{r} to <8 x float>\n"
            f"  %dp.{r} = getelementptr inbounds half, ptr %d, i64 %wblk.{r}\n"
            f"  %dh.{r} = load half, ptr %dp.{r}, align 2\n"
            f"  %dw.{r} = fpext half %dh.{r} to float\n"
            f"  %sc.{r} = fmul float %dw.{r}, %dxv\n"
            f"  %scv0.{r} = insertelement <8 x float> poison, float %sc.{r}, i64 0\n"
            f"  %scv.{r} = shufflevector <8 x float> %scv0.{r}, <8 x float> poison, <8 x i32> zeroinitializer\n"
            f"  %acc.next.{r} = call <8 x float> @llvm.fma.v8f32(<8 x float> %pf.{r}, <8 x float> %scv.{r}, <8 x float> %acc.{r})\n"
        )
        text += _offset_term(ggml_type, r)
    tail = [
        f"  %{p}.bb.next = add nuw i64 %{p}.bb, 1",
        f"  %{p}.bmore = icmp ult i64 %{p}.bb.next, {nb}",
        f"  br i1 %{p}.bmore, label %{p}.b, label %{p}.bdone",
        f"{p}.bdone:",
        f"  %{p}.orow = mul i64 %{p}.ii, {n}",
    ]
    for r in rr:
        tail += [
            f"  %vsum.{r} = call float @llvm.vector.reduce.fadd.v8f32(float 0.0, <8 x float> %acc.next.{r})",
            f"  %dot.{r} = fadd float %vsum.{r}, %accm.next.{r}",
            f"  %oidx.{r} = add i64 %{p}.orow, %jr.{r}",
            f"  %op.{r} = getelementptr inbounds float, ptr %Out, i64 %oidx.{r}",
            f"  store float %dot.{r}, ptr %op.{r}, align 4",
        ]
    tail += [
        f"  %{p}.ii.next = add nuw i64 %{p}.ii, 1",
        f"  %{p}.imore = icmp ult i64 %{p}.ii.next, %rows",
        f"  br i1 %{p}.imore, label %{p}.i, label %{p}.ilatch",
        f"{p}.ilatch:",
        f"  %{p}.jj.next = add nuw i64 %{p}.jj, {rows_per}",
        f"  %{p}.jmore = icmp ult i64 %{p}.jj.next, {j1}",
        f"  br i1 %{p}.jmore, label %{p}.j, label %{done}",
    ]
    # Names inside the block loop repeat between the two loops: prefix them.
    text += "\n".join(tail) + "\n"
    return _prefix_locals(text, p)


def _prefix_locals(text: str, p: str) -> str:
    """Rename the loop-body values (%name -> %p.name) so that two loops can share a function."""
    import re

    keep = {"qs", "d", "m", "xq", "xd", "xs", "Out", "rows", "j0", "j1", "jt", "exit"}

    def rename(match: re.Match) -> str:
        name = match.group(1)
        if name in keep or name.split(".")[0] in ("main", "tail"):  # shared values, labels
            return match.group(0)
        return f"%{p}.{name}"

    return re.sub(r"%([A-Za-z_][\w.]*)", rename, text)


ROWS_PER_GROUP = int(__import__("os").environ.get("RPG", 4))  # rows of W per pass over an x block


def _kernel_ir(name: str, ggml_type: str, n: int, k: int, avx2: bool) -> str:
    nb = k // BLOCK
    has_m = ggml_type == "Q4_1"
    mparam = "ptr noalias %m, " if has_m else ""
    env_t = "{ ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64 }"  # xq, xd, xs, d, m, qs, Out, rows
    rg = ROWS_PER_GROUP
    groups = n // rg
    main = _rows_loop(ggml_type, avx2, n, nb, rg, "main", "%j0", "%j1", "tail.check")
    rest = _rows_loop(ggml_type, avx2, n, nb, 1, "tail", "%jt", str(n), "exit")

    return f"""
define void @{name}(ptr noalias %X, ptr noalias %d, {mparam}ptr noalias %qs, ptr noalias %Out, i64 %rows) {{
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
{_store_env(env_t, has_m)}
  call void @{pool.PARALLEL_FOR}(ptr @{name}.task, ptr %env, i64 {max(groups, 1)})
  call void @free(ptr %xq)
  ret void
}}

; Task t of n: groups [t*G/n, (t+1)*G/n) of {rg} rows of W; the last task also the {n % rg} left over.
define internal void @{name}.task(i64 %task, i64 %ntasks, ptr %env) {{
entry:
{_load_env(env_t, has_m)}
  %g0 = mul i64 %task, {groups}
  %g0n = udiv i64 %g0, %ntasks
  %j0 = mul i64 %g0n, {rg}
  %task1 = add i64 %task, 1
  %g1 = mul i64 %task1, {groups}
  %g1n = udiv i64 %g1, %ntasks
  %j1 = mul i64 %g1n, {rg}
  %last = icmp eq i64 %task1, %ntasks
  %jt = select i1 %last, i64 {groups * rg}, i64 {n}
  %rows.any = icmp sgt i64 %rows, 0
  br i1 %rows.any, label %main.check, label %exit
{main}{rest}exit:
  ret void
}}
"""


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


_ENV_FIELDS = ("xq", "xd", "xs", "d", "m", "qs", "Out", "rows")


def _store_env(env_t: str, has_m: bool) -> str:
    lines = []
    for i, f in enumerate(_ENV_FIELDS):
        value = "null" if f == "m" and not has_m else f"%{f}"
        ty = "i64" if f == "rows" else "ptr"
        lines += [
            f"  %e{i} = getelementptr inbounds {env_t}, ptr %env, i32 0, i32 {i}",
            f"  store {ty} {value}, ptr %e{i}, align 8",
        ]
    return "\n".join(lines)


def _load_env(env_t: str, has_m: bool) -> str:
    lines = []
    for i, f in enumerate(_ENV_FIELDS):
        if f == "m" and not has_m:
            continue
        ty = "i64" if f == "rows" else "ptr"
        lines += [
            f"  %e{i} = getelementptr inbounds {env_t}, ptr %env, i32 0, i32 {i}",
            f"  %{f} = load {ty}, ptr %e{i}, align 8",
        ]
    return "\n".join(lines)
