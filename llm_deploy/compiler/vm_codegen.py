"""Lower graph functions to the VM's program: data, not Python code.

Expects a legalized module: graph functions whose calls are `call_tir`, `call_extern` or calls
of other graph functions. Outputs of destination-passing calls become explicit `alloc`s with
symbolic shapes, evaluated by the VM from the symbolic values bound at run time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler.expr import (
    Call,
    Constant,
    Expr,
    ExternFunc,
    Function,
    GetItem,
    GlobalVar,
    If,
    MatchCast,
    Op,
    PrimValue,
    SeqExpr,
    ShapeExpr,
    StringImm,
    Tuple,
    Var,
    VarBinding,
)
from llm_deploy.compiler.module import IRModule


class LoweringError(ValueError):
    """A graph function that the VM cannot run yet (e.g. an op left without a lowering)."""


def info_to_json(info: SI.StructInfo) -> dict[str, Any]:
    match info:
        case SI.TensorInfo(shape, dtype, ndim):
            return {
                "kind": "tensor",
                "shape": None if shape is None else [_dim(d) for d in shape],
                "ndim": ndim,
                "dtype": dtype,
            }
        case SI.ShapeInfo(values, ndim):
            return {
                "kind": "shape",
                "values": None if values is None else [_dim(d) for d in values],
                "ndim": ndim,
            }
        case SI.PrimInfo(dtype, value):
            return {"kind": "prim", "dtype": dtype, "value": None if value is None else _dim(value)}
        case SI.TupleInfo(fields):
            return {"kind": "tuple", "fields": [info_to_json(f) for f in fields]}
    return {"kind": "object"}


def _dim(d: S.PrimExpr) -> int | str:
    return d.value if isinstance(d, S.IntImm) else S.to_str(d)


class _FunctionLowering:
    def __init__(self, name: str, func: Function, constants: dict[str, np.ndarray]):
        self.name = name
        self.func = func
        self.constants = constants
        self.counter = 0
        # The memory plan (passes/memory_plan.py): outputs placed in storage allocated once.
        plan = func.attrs.get("memory_plan")
        self.storage = tuple(plan["storage"]) if plan is not None else ()
        self.planned = dict(plan["tensors"].items()) if plan is not None else {}
        self.kills = dict(plan["kill"].items()) if plan is not None else {}

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"%{hint}{self.counter}"

    def lower(self) -> dict[str, Any]:
        instrs: list[dict] = [
            {"op": "alloc_storage", "dst": f"%storage{k}", "bytes": nbytes, "key": f"{self.name}/{k}"}
            for k, nbytes in enumerate(self.storage)
        ]
        ret = self.seq(self.func.body, instrs)
        return {
            "params": [p.name for p in self.func.params],
            "param_infos": [info_to_json(p.info) for p in self.func.params],
            "instrs": instrs,
            "ret": ret,
            "ret_info": info_to_json(self.func.ret_info),
        }

    def seq(self, seq: SeqExpr, out: list[dict]) -> str:
        for block in seq.blocks:
            for b in block.bindings:
                if isinstance(b, MatchCast):
                    src = self.operand(b.value, out)
                    out.append({"op": "match", "src": src, "dst": b.var.name, "info": info_to_json(b.info)})
                else:
                    assert isinstance(b, VarBinding)
                    self.binding(b.var, b.value, out)
                if b.var.name in self.kills:
                    out.append({"op": "free", "regs": list(self.kills[b.var.name])})
        return self.operand(seq.body, out)

    def binding(self, var: Var, value: Expr, out: list[dict]) -> None:
        dst = var.name
        match value:
            case Call(op=Op("call_tir"), args=args, sinfo_args=(out_info,)):
                kernel = args[0]
                assert isinstance(kernel, GlobalVar)
                ins, outs = self.dps_operands(args, out_info, dst, out)
                scalars = [_dim(d) for d in args[2].values] if len(args) > 2 else []  # type: ignore[attr-defined]
                out.append(
                    {"op": "call_tir", "kernel": kernel.name, "args": ins, "outs": outs, "scalars": scalars}
                )
                self.pack_outputs(dst, outs, out_info, out)
            case Call(op=Op("call_extern" | "call_extern_pure"), args=args, sinfo_args=(out_info,)):
                callee = args[0]
                assert isinstance(callee, ExternFunc)
                ins, outs = self.dps_operands(args, out_info, dst, out)
                out.append({"op": "call_extern", "name": callee.name, "args": ins, "outs": outs})
                self.pack_outputs(dst, outs, out_info, out)
            case Call(op=Op("call_extern_value"), args=(ExternFunc(name), Tuple(fields))):
                args = [self.operand(a, out) for a in fields]
                out.append({"op": "call_extern_value", "name": name, "args": args, "dst": dst})
            case Call(op=Op("reshape"), args=(src, ShapeExpr(values))):
                # A view of the same storage (rewrite_reshape made only row-major copies into these).
                shape = [_dim(v) for v in values]
                out.append({"op": "reshape", "src": self.operand(src, out), "dst": dst, "shape": shape})
            case Call(op=GlobalVar(callee), args=args):
                out.append(
                    {"op": "call", "func": callee, "args": [self.operand(a, out) for a in args], "dst": dst}
                )
            case Call(op=Op(opname)):
                raise LoweringError(
                    f"{self.name}: binding {dst} calls op {opname!r}, which has no lowering here; "
                    "legalize the module (or register a lowering / an extern for it) before building"
                )
            case If(cond, then_branch, else_branch):
                c = self.operand(cond, out)
                then_ins: list[dict] = []
                else_ins: list[dict] = []
                then_ret = self.seq(then_branch, then_ins)
                else_ret = self.seq(else_branch, else_ins)
                out.append(
                    {"op": "if", "cond": c, "dst": dst, "then": then_ins, "else": else_ins,
                     "then_ret": then_ret, "else_ret": else_ret}
                )  # fmt: skip
            case _:
                src = self.operand(value, out)
                out.append({"op": "copy", "src": src, "dst": dst})

    def dps_operands(self, args, out_info, dst: str, out: list[dict]) -> tuple[list[str], list[str]]:
        call_args = args[1]
        assert isinstance(call_args, Tuple)
        ins = [self.operand(a, out) for a in call_args.fields]
        infos = out_info.fields if isinstance(out_info, SI.TupleInfo) else (out_info,)
        outs = []
        for i, info in enumerate(infos):
            if not isinstance(info, SI.TensorInfo) or info.shape is None or info.dtype is None:
                raise LoweringError(
                    f"{self.name}: binding {dst}: output {i} needs a known shape and dtype, got {info}"
                )
            reg = dst if len(infos) == 1 and not isinstance(out_info, SI.TupleInfo) else f"{dst}#{i}"
            shape = [_dim(d) for d in info.shape]
            if reg in self.planned:
                out.append(
                    {"op": "alloc_tensor", "dst": reg, "storage": f"%storage{self.planned[reg]}", "offset": 0,
                     "shape": shape, "dtype": info.dtype}
                )  # fmt: skip
            else:
                out.append({"op": "alloc", "dst": reg, "shape": shape, "dtype": info.dtype})
            outs.append(reg)
        return ins, outs

    def pack_outputs(self, dst: str, outs: list[str], out_info, out: list[dict]) -> None:
        if isinstance(out_info, SI.TupleInfo):
            out.append({"op": "tuple", "dst": dst, "fields": outs})

    def operand(self, expr: Expr, out: list[dict]) -> str:
        match expr:
            case Var(name):
                return name
            case Constant(data):
                key = f"const.{self.name}.{len(self.constants)}"
                self.constants[key] = data
                reg = self.fresh("const")
                out.append({"op": "const", "dst": reg, "name": key})
                return reg
            case ShapeExpr(values):
                reg = self.fresh("shape")
                out.append({"op": "shape", "dst": reg, "values": [_dim(v) for v in values]})
                return reg
            case PrimValue(value):
                reg = self.fresh("prim")
                out.append({"op": "prim", "dst": reg, "value": _dim(value)})
                return reg
            case StringImm(value):
                reg = self.fresh("str")
                out.append({"op": "string", "dst": reg, "value": value})
                return reg
            case Tuple(fields):
                regs = [self.operand(f, out) for f in fields]
                reg = self.fresh("tuple")
                out.append({"op": "tuple", "dst": reg, "fields": regs})
                return reg
            case GetItem(tup, index):
                src = self.operand(tup, out)
                reg = self.fresh("item")
                out.append({"op": "get_item", "dst": reg, "src": src, "index": index})
                return reg
        raise LoweringError(f"{self.name}: cannot pass {type(expr).__name__} as a VM operand")


def lower_to_vm(mod: IRModule) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The VM program of every graph function of `mod`, and the constants it refers to."""
    constants: dict[str, np.ndarray] = {}
    functions = {
        name: _FunctionLowering(name, f, constants).lower()
        for name, f in mod.items()
        if isinstance(f, Function)
    }
    return {"functions": functions}, constants
