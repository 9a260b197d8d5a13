"""memory_plan: storage blocks reused across values whose lifetimes do not overlap, sized by the
upper bounds of symbolic dims; the VM allocates them once and then makes views only."""

import json

import numpy as np

from llm_deploy.compiler import tir
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.parser import parse
from llm_deploy.compiler.passes.dce import dce
from llm_deploy.compiler.passes.fuse_ops import fuse_ops
from llm_deploy.compiler.passes.fuse_tir import fuse_tir
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.passes.memory_plan import memory_plan, plan_function
from llm_deploy.compiler.passes.rewrite_reshape import rewrite_reshape
from llm_deploy.compiler.tir_interpreter import compile_prim_func
from llm_deploy.compiler.vm_codegen import lower_to_vm
from llm_deploy.runtime.vm import VirtualMachine
from tests.compiler.llama_layer import LayerConfig, build_decoder_layer, random_weights
from tests.compiler.passes.fusion_cases import PRIM_FUNCS
from tests.compiler.passes.harness import check_pass

T8 = 'Tensor[(n, 8), "float32"]'
FLAT = 'Tensor[(8 * n,), "float32"]'
PROGRAMS = (
    PRIM_FUNCS["exp"]
    + PRIM_FUNCS["negative"]
    + """
    @prim_func
    def exp_flat(A: Buffer[(m,), "float32"], Out: Buffer[(m,), "float32"]):
        for i0 in range(m):
            Out[i0] = exp(A[i0])
"""
)


def _module(attrs: str) -> str:
    return f"""
@module
class Module:
    @function
    def main(x: {T8}) -> {FLAT}:
        attrs(bounds={{"n": (1, 16)}}{attrs})
        with dataflow():
            a: {T8} = call_tir(exp, (x,), out_sinfo={T8})
            b: {T8} = call_tir(negative, (a,), out_sinfo={T8})
            c: {T8} = call_tir(exp, (b,), out_sinfo={T8})
            v: {FLAT} = reshape(c, shape(8 * n))
            d: {FLAT} = call_tir(exp_flat, (v,), out_sinfo={FLAT})
            e: {FLAT} = call_tir(exp_flat, (d,), out_sinfo={FLAT})
            output(e)
        return e
{PROGRAMS}"""


def test_lifetimes_share_blocks_views_extend_them_and_the_result_is_not_planned():
    # 16 x 8 float32 = 512 bytes each. a and c share block 0 (a dies at b); b and d share block 1
    # (b dies at c); c lives through its view v until d; e is returned.
    plan = ', memory_plan={"storage": (512, 512), "tensors": {"a": 0, "b": 1, "c": 0, "d": 1}, "kill": {"b": ("a",), "c": ("b",), "d": ("c",), "e": ("d",)}}'
    after = check_pass(memory_plan, _module(""), _module(plan), sizes=({"n": 1}, {"n": 5}, {"n": 16}))
    p = plan_function(after["main"])
    assert p.total_bytes == 1024 and p.separate_bytes == 2048 and p.unplanned == ("e",)


def test_unbounded_escaping_and_impure_uses_stay_per_call():
    text = f"""
@module
class Module:
    @function(pure=False)
    def main(x: {T8}, z: Tensor[(k, 8), "float32"]) -> {T8}:
        attrs(bounds={{"n": (1, 16)}})
        a: {T8} = call_tir(exp, (x,), out_sinfo={T8})
        w: Tensor[(m, 8), "float32"] = match_cast(z, Tensor[(m, 8), "float32"])
        b: Tensor[(m, 8), "float32"] = call_tir(exp, (w,), out_sinfo=Tensor[(m, 8), "float32"])
        c: {T8} = call_tir(negative, (a,), out_sinfo={T8})
        s: {T8} = call_extern(extern("numpy.softmax"), (c,), out_sinfo={T8})
        d: {T8} = call_tir(negative, (a,), out_sinfo={T8})
        return d
{PRIM_FUNCS["exp"]}{PRIM_FUNCS["negative"]}"""
    p = plan_function(parse(text)["main"])
    assert p.tensors == {"a": 0}
    assert set(p.unplanned) == {"b", "c", "s", "d"}  # unbounded m; kept by an impure call; returned


def _vm(mod):
    program, constants = lower_to_vm(mod)
    kernels = {k: compile_prim_func(f, k) for k, f in mod.items() if isinstance(f, tir.PrimFunc)}
    return VirtualMachine(json.loads(json.dumps(program)), kernels, {}, constants)


def test_the_vm_runs_the_plan_in_blocks_allocated_once():
    mod = memory_plan(parse(_module("")))
    ops = [i["op"] for i in lower_to_vm(mod)[0]["functions"]["main"]["instrs"]]
    assert ops.count("alloc_storage") == 2 and ops.count("alloc_tensor") == 4 and ops.count("alloc") == 1
    vm = _vm(mod)
    rng = np.random.default_rng(0)
    for n in (16, 3, 1, 7):
        x = rng.standard_normal((n, 8)).astype("float32") * 0.1
        allocs = vm.stats["allocs"]
        np.testing.assert_allclose(vm["main"](x), run(mod, "main", x), rtol=1e-6)
        # After the first call only the returned tensor is new.
        assert vm.stats["allocs"] - allocs == (3 if n == 16 else 1)


def test_a_fused_decoder_layer_planned_runs_equal_and_allocates_only_its_result():
    cfg = LayerConfig()
    mod = build_decoder_layer(cfg).with_attrs()
    func = mod["decoder_layer"]
    mod = mod.with_function(
        "decoder_layer",
        type(func)(
            func.params, func.body, func.ret_info, func.pure, func.attrs.replace(bounds={"n": (1, 32)})
        ),
    )
    fused = dce(fuse_tir(fuse_ops(rewrite_reshape(legalize(mod)))))
    planned = memory_plan(fused)
    plan = plan_function(planned["decoder_layer"])
    assert plan.total_bytes < plan.separate_bytes
    vm = _vm(planned)
    weights = list(random_weights(cfg, seed=0).values())
    rng = np.random.default_rng(1)
    for n in (32, 1, 9):
        x = rng.standard_normal((n, cfg.hidden_size)).astype("float32")
        allocs = vm.stats["allocs"]
        np.testing.assert_allclose(
            vm["decoder_layer"](x, *weights), run(mod, "decoder_layer", x, *weights), rtol=1e-4, atol=1e-5
        )
        if n != 32:
            assert vm.stats["allocs"] - allocs == 1


def test_a_kernels_scratch_becomes_a_planned_output_of_its_call():
    v8 = 'Tensor[(8,), "float32"]'
    before = f"""
@module
class Module:
    @function
    def main(x: {T8}, w: {v8}) -> {T8}:
        attrs(bounds={{"n": (1, 16)}})
        with dataflow():
            h: {T8} = call_tir(rms_norm, (x, w), out_sinfo={T8})
            y: {T8} = call_tir(exp, (h,), out_sinfo={T8})
            output(y)
        return y
{PRIM_FUNCS["rms_norm"]}{PRIM_FUNCS["exp"]}"""
    ws = 'Tuple[Tensor[(n, 8), "float32"], Tensor[(n,), "float32"]]'
    plan = '{"storage": (512, 64), "tensors": {"h_ws#0": 0, "h_ws#1": 1}, "kill": {"y": ("h_ws#0",), "h": ("h_ws#1",)}}'
    expected = f"""
@module
class Module:
    @function
    def main(x: {T8}, w: {v8}) -> {T8}:
        attrs(bounds={{"n": (1, 16)}}, memory_plan={plan})
        with dataflow():
            h_ws: {ws} = call_tir(rms_norm_ws, (x, w), out_sinfo={ws})
            h: {T8} = h_ws[0]
            y: {T8} = call_tir(exp, (h,), out_sinfo={T8})
            output(y)
        return y
{PRIM_FUNCS["exp"]}
    @prim_func
    def rms_norm_ws(A: Buffer[(n, 8), "float32"], B: Buffer[(8,), "float32"], Out: Buffer[(n, 8), "float32"], ms: Buffer[(n,), "float32"]):
        for i0 in range(n):
            ms_acc = alloc((1,), "float32", "local")
            ms_acc[0] = float32(0.0)
            for k in range(8):
                ms_acc[0] = ms_acc[0] + A[i0, k] * A[i0, k]
            ms[i0] = ms_acc[0] / cast("float32", 8)
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = A[i0, i1] / sqrt(ms[i0] + float32(1e-05)) * B[i1]
"""
    after = check_pass(memory_plan, before, expected)
    vm = _vm(after)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype("float32")
    w = np.ones(8, "float32")
    vm["main"](x, w)
    allocs = vm.stats["allocs"]
    np.testing.assert_allclose(vm["main"](x, w), run(parse(before), "main", x, w), rtol=1e-6)
    assert vm.stats["allocs"] - allocs == 1
