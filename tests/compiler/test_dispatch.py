"""Dispatch: per op and target, a library call (call_extern) or a tensor program (call_tir)."""

import json

import numpy as np
import pytest

from llm_deploy.compiler import ops, tir, wellformed
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Call, ExternFunc, Op, Var
from llm_deploy.compiler.externs import EXTERNS, get_extern, register_extern
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.passes.dispatch import Rule, dispatch
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.shape import var
from llm_deploy.compiler.testing import assert_roundtrip
from llm_deploy.compiler.tir_interpreter import compile_prim_func
from llm_deploy.compiler.vm_codegen import lower_to_vm
from llm_deploy.runtime.vm import VirtualMachine
from tests.compiler.llama_layer import LayerConfig, build_decoder_layer, random_weights

n = var("n")


def mlp_module(dtype="float32"):
    x = Var("x", SI.tensor((n, 8), dtype))
    w = Var("w", SI.tensor((8, 6), dtype))
    bb = BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            h = bb.emit(ops.matmul(x, w), "h")
            a = bb.emit(ops.silu(h), "a")
            out = bb.emit_output(ops.softmax(a), "out")
        bb.emit_func_output(out)
    return bb.get()


def _callees(mod):
    out = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            assert isinstance(v, Call)
            out[b.var.name] = (
                v.op.name
                if v.op.name not in ("call_tir", "call_extern_pure", "call_extern")
                else (v.op.name, v.args[0].name)
            )
    return out


def _args(dtype="float32", rows=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((rows, 8)).astype(dtype), rng.standard_normal((8, 6)).astype(dtype)


def test_one_op_to_a_library_one_to_a_tensor_program_one_left():
    mod = mlp_module()
    rules = [Rule("matmul", extern="numpy.matmul"), Rule("softmax", extern=None)]
    out = dispatch(mod, rules)
    wellformed.check(out)
    assert _callees(out) == {
        "h": ("call_extern_pure", "numpy.matmul"),  # a pure extern may stay in the dataflow block
        "a": "silu",
        "out": ("call_tir", "softmax"),
    }
    assert isinstance(out["softmax"], tir.PrimFunc)
    for rows in (1, 4):
        args = _args(rows=rows)
        np.testing.assert_allclose(run(out, "main", *args), run(mod, "main", *args), rtol=1e-5)
    # the rest lowers afterwards: dispatch and legalize compose
    full = legalize(out)
    assert _callees(full)["a"] == ("call_tir", "silu")
    np.testing.assert_allclose(run(full, "main", *_args()), run(mod, "main", *_args()), rtol=1e-5)


def test_rules_choose_by_target_and_predicate_first_match_wins():
    mod = mlp_module()
    float32_only = Rule("matmul", extern="numpy.matmul", when=lambda call, infos, out: out.dtype == "float32")
    webgpu_tir = Rule("matmul", extern=None, target="webgpu")
    assert _callees(dispatch(mod, [webgpu_tir, float32_only], target="webgpu"))["h"] == ("call_tir", "matmul")
    assert _callees(dispatch(mod, [webgpu_tir, float32_only], target="llvm"))["h"] == (
        "call_extern_pure",
        "numpy.matmul",
    )
    f16 = mlp_module("float16")
    assert _callees(dispatch(f16, [float32_only]))["h"] == "matmul"


def test_impure_externs_leave_dataflow_blocks_alone_only_in_plain_blocks():
    @register_extern("test.double_impure", pure=False)
    def _double(x, out):
        out[...] = 2 * x

    try:
        x = Var("x", SI.tensor((n, 4)))
        bb = BlockBuilder()
        with bb.function("main", [x]):
            y = bb.emit(ops.exp(x))
            bb.emit_func_output(y)
        mod = bb.get()
        out = dispatch(mod, [Rule("exp", extern="test.double_impure")])
        call = out["main"].body.blocks[0].bindings[0].value
        assert call.op == Op("call_extern") and call.args[0] == ExternFunc("test.double_impure")
        xv = np.ones((2, 4), "float32")
        np.testing.assert_array_equal(run(out, "main", xv), 2 * xv)
    finally:
        del EXTERNS["test.double_impure"]


def test_registry_errors_name_what_exists():
    with pytest.raises(KeyError, match="no extern function named 'blas.nope'; registered: .*numpy.matmul"):
        get_extern("blas.nope")
    with pytest.raises(KeyError, match="no operator named 'matmull'"):
        Rule("matmull", extern="numpy.matmul")
    with pytest.raises(KeyError, match="no extern function named"):
        Rule("matmul", extern="numpy.matmull")
    with pytest.raises(ValueError, match="registered twice"):
        register_extern("numpy.matmul")(lambda a, b, out: None)


@pytest.mark.parametrize(
    "name,op,shapes",
    [
        ("numpy.matmul", ops.matmul, [(3, 8), (8, 5)]),
        ("numpy.linear", ops.linear, [(3, 8), (5, 8)]),
        ("numpy.softmax", ops.softmax, [(3, 8)]),
    ],
)
def test_builtin_externs_match_their_ops(name, op, shapes):
    params = [Var(f"p{k}", SI.tensor(s)) for k, s in enumerate(shapes)]
    bb = BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(op(*params))
        bb.emit_func_output(out)
    mod = bb.get()
    opname = mod["main"].body.blocks[0].bindings[0].value.op.name
    ext = dispatch(mod, [Rule(opname, extern=name)])
    args = [np.random.default_rng(k).standard_normal(s).astype("float32") for k, s in enumerate(shapes)]
    np.testing.assert_allclose(run(ext, "main", *args), run(mod, "main", *args), rtol=1e-5)


def test_partially_lowered_module_is_well_formed_round_trips_and_runs_equal():
    """Three levels in one module: a library call, tensor programs, and ops left high-level."""

    cfg = LayerConfig()
    mod = build_decoder_layer(cfg)
    mixed = dispatch(mod, [Rule("linear", extern="numpy.linear")])
    mixed = legalize(mixed, ops=["rms_norm", "silu", "multiply", "add"])
    callees = [b.value.op.name for blk in mixed["decoder_layer"].body.blocks for b in blk.bindings]
    assert {"call_extern_pure", "call_tir", "attention", "rope", "reshape"} <= set(callees)
    assert sorted(k for k, f in mixed.items() if isinstance(f, tir.PrimFunc)) == [
        "add",
        "multiply",
        "rms_norm",
        "silu",
    ]
    wellformed.check(mixed)
    text = str(mixed)
    assert 'call_extern_pure(extern("numpy.linear")' in text
    assert assert_roundtrip(mixed) == mixed
    weights = random_weights(cfg, seed=0)
    for n_val in (1, 6):
        x = np.random.default_rng(n_val).standard_normal((n_val, cfg.hidden_size)).astype("float32")
        np.testing.assert_allclose(
            run(mixed, "decoder_layer", x, *weights.values()),
            run(mod, "decoder_layer", x, *weights.values()),
            rtol=1e-4,
            atol=1e-5,
        )


def test_fully_lowered_module_runs_on_the_vm_with_interpreted_kernels_and_numpy_externs():
    """The VM needs no compiler: kernels here are the tir interpreter's callables, externs the
    registry's numpy functions; the result equals the graph-level interpreter's."""
    cfg = LayerConfig()
    mod = build_decoder_layer(cfg)
    lowered = legalize(dispatch(mod, [Rule("linear", extern="numpy.linear")]))
    program, constants = lower_to_vm(lowered)
    kernels = {k: compile_prim_func(f, k) for k, f in lowered.items() if isinstance(f, tir.PrimFunc)}
    externs = {k: e.fn for k, e in EXTERNS.items()}
    vm = VirtualMachine(json.loads(json.dumps(program)), kernels, externs, constants)
    weights = random_weights(cfg, seed=0)
    for n_val in (1, 4):
        x = np.random.default_rng(n_val).standard_normal((n_val, cfg.hidden_size)).astype("float32")
        np.testing.assert_allclose(
            vm["decoder_layer"](x, *weights.values()),
            run(mod, "decoder_layer", x, *weights.values()),
            rtol=1e-4,
            atol=1e-5,
        )
