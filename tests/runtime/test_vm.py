"""The VM runs lowered graph functions; kernels here are numpy callables (codegen is tested elsewhere)."""

import json

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import GlobalVar, PrimValue, Var
from llm_deploy.compiler.shape import var
from llm_deploy.compiler.vm_codegen import LoweringError, lower_to_vm
from llm_deploy.runtime.symbolic import SymbolicError, compile_expr
from llm_deploy.runtime.vm import MatchError, VirtualMachine, VMError

n, m = var("n"), var("m")


def _add_kernel(a, b, out):
    np.add(a, b, out=out)


def _concat_kernel(a, b, out):
    out[...] = np.concatenate([a, b], axis=0)


def _scale_kernel(a, out, k):
    np.multiply(a, k, out=out)


def build_module():
    bb = BlockBuilder()
    x = Var("x", SI.tensor((n, 4)))
    y = Var("y", SI.tensor(None, "float32", ndim=2))
    with bb.function("main", [x, y]):
        y2 = bb.match_cast(y, SI.tensor((m, 4)), "y2")
        with bb.dataflow():
            s = bb.emit(ops.call_tir(GlobalVar("add"), [x, x], SI.tensor((n, 4))), "s")
            c = bb.emit(ops.call_tir(GlobalVar("concat"), [s, y2], SI.tensor((n + m, 4))), "c")
            out = bb.emit_output(ops.call_tir(GlobalVar("scale"), [c], SI.tensor((n + m, 4)), [n]), "out")
        bb.emit_func_output(out)
    return bb.get()


@pytest.fixture(scope="module")
def vm():
    program, constants = lower_to_vm(build_module())
    program = json.loads(json.dumps(program))  # the program is plain data
    kernels = {"add": _add_kernel, "concat": _concat_kernel, "scale": _scale_kernel}
    return VirtualMachine(program, kernels, constants=constants)


@pytest.mark.parametrize("n_val,m_val", [(1, 1), (3, 5), (17, 2)])
def test_vm_runs_symbolic_program(vm, n_val, m_val):
    x = np.random.rand(n_val, 4).astype("float32")
    y = np.random.rand(m_val, 4).astype("float32")
    out = vm["main"](x, y)
    np.testing.assert_allclose(out, np.concatenate([2 * x, y]) * n_val, rtol=1e-6)
    assert vm.stats["kernel_calls"] > 0


def test_vm_parameter_check_names_variable(vm):
    with pytest.raises(MatchError, match=r"parameter x.*expected shape \(n, 4\)"):
        vm["main"](np.zeros((3, 5), "float32"), np.zeros((2, 4), "float32"))
    with pytest.raises(MatchError, match="dtype float32"):
        vm["main"](np.zeros((3, 4), "float64"), np.zeros((2, 4), "float32"))


def test_vm_match_cast_failure_names_binding(vm):
    with pytest.raises(MatchError, match=r"match_cast y2.*\(2, 5\)"):
        vm["main"](np.zeros((3, 4), "float32"), np.zeros((2, 5), "float32"))


def test_vm_rejects_unknown_kernel():
    program, _ = lower_to_vm(build_module())
    with pytest.raises(VMError, match="kernel 'add'"):
        VirtualMachine(program, {})


def test_lowering_rejects_unlowered_op():
    bb = BlockBuilder()
    x = Var("x", SI.tensor((n, 4)))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(ops.exp(x))
        bb.emit_func_output(out)
    with pytest.raises(LoweringError, match="binding gv calls op 'exp'"):
        lower_to_vm(bb.get())


def test_prim_value_and_constants():
    bb = BlockBuilder()
    x = Var("x", SI.tensor((n,)))
    with bb.function("main", [x]):
        k = bb.emit(PrimValue(n * 2 + 1))
        bb.emit_func_output(k)
    program, _ = lower_to_vm(bb.get())
    vm = VirtualMachine(program, {})
    assert vm["main"](np.zeros(5, "float32")) == 11


@pytest.mark.parametrize("text,env,value", [("2 * n + (m // 4)", {"n": 3, "m": 9}, 8), ("min(n, 16)", {"n": 40}, 16),
                                             ("n % 3 - 1", {"n": 7}, 0), (12, {}, 12)])  # fmt: skip
def test_symbolic_evaluator(text, env, value):
    assert compile_expr(text)(env) == value


@pytest.mark.parametrize("text", ["__import__('os')", "n ** 2", "n.real", "lambda: 1", "1.5"])
def test_symbolic_evaluator_rejects_code(text):
    with pytest.raises(SymbolicError):
        compile_expr(text)
