"""What the LLVM codegen emits: vector instructions for vectorized loops, outlined parallel
bodies, loop metadata, exact float constants, the kernel signature, and clear errors."""

import pytest

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.tir import Buffer, For, PrimFunc, Store
from llm_deploy.targets.llvm.codegen import LLVMOptions, build_ir, signature_of
from llm_deploy.targets.llvm.emitter import CodegenError
from tests.targets.llvm_cases import CASES

n, m = S.var("n"), S.var("m")
i, j = S.var("i"), S.var("j")
AVX2 = LLVMOptions(vector_bits=256)


def ir_of(name_or_func, options=AVX2):
    func = CASES[name_or_func].func if isinstance(name_or_func, str) else name_or_func
    text, sigs, notes = build_ir({"k": func}, options)
    return text, notes


def test_vectorized_loop_becomes_vector_loads_math_and_stores():
    text, notes = ir_of("ew2d")
    assert "load <8 x float>" in text
    assert "llvm.floor.v8f32" in text and "llvm.exp" not in text  # exp inline, not 8 libm calls
    assert "fmul contract <8 x float>" in text
    assert "store <8 x float>" in text
    assert notes == []


def test_lanes_follow_the_element_width_and_the_vector_width():
    assert "<32 x i8>" in ir_of("bin_add_int8")[0]
    assert "<4 x float>" in ir_of("ew2d", LLVMOptions(vector_bits=128))[0]
    assert "<16 x float>" in ir_of("ew2d", LLVMOptions(vector_bits=512))[0]
    # a constant extent smaller than the lanes is one vector of that many lanes
    A, B = Buffer("A", (n, 4)), Buffer("B", (n, 4))
    f = PrimFunc((A, B), For(i, n, For(j, 4, Store(B, (i, j), A[i, j] + 1.0), kind="vectorized")))
    assert "<4 x float>" in ir_of(f)[0] and "<8 x float>" not in ir_of(f)[0]


def test_access_patterns_pick_gather_scatter_and_masked_loads():
    assert "llvm.masked.gather" in ir_of("transpose_gather")[0]  # symbolic stride
    assert "llvm.masked.gather" in ir_of("strided")[0]  # constant stride 2
    assert "llvm.masked.scatter" in ir_of("transpose_scatter")[0]
    assert "llvm.masked.load" in ir_of("guarded_select")[0]  # loads only where selected
    take = ir_of("take")[0]  # W[t, j] with a let-bound row: contiguous
    assert "load <8 x float>" in take and "masked" not in take
    flat = ir_of("divmod_flatten")[0]  # A[i // 4, i % 4] folds to a contiguous A[i]
    assert "load <8 x float>" in flat and "masked" not in flat


def test_a_vectorized_loop_with_a_varying_branch_stays_scalar_with_a_note():
    text, notes = ir_of("varying_if")
    assert "x float>" not in text
    assert notes == [
        "k: vectorized loop over i stays scalar: it branches on a condition that differs between lanes"
    ]


def test_scalar_tails_are_kept_from_llvm_vectorizer_and_unroller():
    text, _ = ir_of("bin_add_float32")
    assert '!"llvm.loop.vectorize.enable", i1 0' in text
    assert '!"llvm.loop.unroll.disable"' in text
    assert "!llvm.loop" in text


def test_parallel_loop_is_outlined_and_dispatched_to_the_pool():
    text, _ = ir_of("ew2d")
    assert 'call void @"llmd_parallel_for"(ptr @"llmd_kernel_k.impl.parallel1"' in text.replace(
        "void (i64, i64, ptr)*", "ptr"
    )
    (body,) = [
        line
        for line in text.split("\n")
        if line.startswith('define internal void @"llmd_kernel_k.impl.parallel1.body"')
    ]
    assert 'i64 %"n", ptr noalias %"A", ptr noalias %"B", ptr noalias %"C"' in body


def test_nested_parallel_loop_runs_serially_inside_the_outer_one():
    text, _ = ir_of("nested_parallel")
    assert text.count('call void @"llmd_parallel_for"') == 1


def test_float_constants_are_exact_hex():
    A, B = Buffer("A", (n,)), Buffer("B", (n,))
    text, _ = ir_of(PrimFunc((A, B), For(i, n, Store(B, (i,), A[i] * 0.1))))
    assert "0x3fb99999a0000000" in text  # float32(0.1), exactly


def test_signature_orders_scalars_then_dims_and_keeps_shape_text():
    off = S.var("off")
    A, B = Buffer("A", (m, 2 * n)), Buffer("B", (n,), "float16")
    sig = signature_of(
        "f", PrimFunc((A, B, off), For(i, n, Store(B, (i,), T.cast("float16", A[0, i + off]))))
    )
    assert sig.vars == ("off", "m", "n")
    assert [(p.name, p.kind, p.dtype, p.shape) for p in sig.params] == [
        ("A", "buffer", "float32", ("m", "2 * n")),
        ("B", "buffer", "float16", ("n",)),
        ("off", "scalar", "int64", ()),
    ]
    assert str(sig) == "f(A: float32[m, 2 * n], B: float16[n], off: int)"


def test_thread_bound_loop_is_an_error_on_the_cpu():
    A = Buffer("A", (n,))
    f = PrimFunc((A,), For(i, n, Store(A, (i,), 1.0), kind="thread", thread="threadIdx.x"))
    with pytest.raises(
        CodegenError, match=r"kernel k: the loop over i is bound to threadIdx.x, which the CPU cannot run"
    ):
        build_ir({"k": f})


def test_unbound_variable_and_unbindable_dims_are_errors():
    A = Buffer("A", (n,))
    with pytest.raises(CodegenError, match="variable q is used but nothing binds it"):
        build_ir({"k": PrimFunc((A,), Store(A, (S.var("q"),), 1.0))})
    B = Buffer("B", (2 * m,))
    with pytest.raises(CodegenError, match="kernel k: m appear only inside shape expressions"):
        build_ir({"k": PrimFunc((B,), Store(B, (0,), 1.0))})


def test_unsupported_dtype_and_non_prim_func_are_errors():
    A = Buffer("A", (n,), "bfloat16")
    with pytest.raises(NotImplementedError, match="no dtype 'bfloat16'"):
        build_ir({"k": PrimFunc((A,), Store(A, (0,), T.Imm(1.0, "bfloat16")))})
    with pytest.raises(CodegenError, match="expected a tir.PrimFunc"):
        build_ir({"k": "not a function"})
