"""The operator registry: each op declares its attributes and how its struct info is deduced.

Lowerings (to tensor programs) register beside the deduction with `register_legalize`; the
numpy semantics live in the interpreter's table. One name, one definition, many interpretations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_deploy.compiler.expr import Attrs, Call, Expr, Op
from llm_deploy.compiler.shape import Analyzer
from llm_deploy.compiler.struct_info import StructInfo

if TYPE_CHECKING:
    from llm_deploy.compiler.module import IRModule


class ShapeError(ValueError):
    """Shapes that provably conflict at build time; the message names the op, operands and dims."""


REQUIRED = object()  # marks an attribute without a default


@dataclass
class InferContext:
    analyzer: Analyzer = field(default_factory=Analyzer)
    module: IRModule | None = None


InferFn = Callable[[Call, list[StructInfo], InferContext], StructInfo]


@dataclass
class OpDef:
    name: str
    infer: InferFn
    attrs: dict[str, Any]
    pure: bool = True
    legalize: Callable | None = None
    doc: str = ""


OPS: dict[str, OpDef] = {}


def register_op(
    name: str, *, attrs: dict[str, Any] | None = None, pure: bool = True
) -> Callable[[InferFn], InferFn]:
    """Register `name` with its deduction function `infer(call, arg_infos, ctx) -> StructInfo`."""

    def deco(infer: InferFn) -> InferFn:
        if name in OPS:
            raise ValueError(f"op {name!r} is registered twice")
        OPS[name] = OpDef(name, infer, dict(attrs or {}), pure, doc=(infer.__doc__ or "").strip())
        return infer

    return deco


def register_legalize(name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        get_op(name).legalize = fn
        return fn

    return deco


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"no operator named {name!r}") from None


def make_call(name: str, args: Sequence[Expr], sinfo_args: Sequence[StructInfo] = (), **attrs: Any) -> Call:
    """Build a call of a registered op, checking attribute names and filling defaults."""
    op = get_op(name)
    unknown = set(attrs) - set(op.attrs)
    if unknown:
        raise TypeError(
            f"{name}: unknown attribute(s) {sorted(unknown)}; it takes {sorted(op.attrs) or 'none'}"
        )
    full = {}
    for key, default in op.attrs.items():
        if key in attrs:
            full[key] = attrs[key]
        elif default is REQUIRED:
            raise TypeError(f"{name}: missing required attribute {key!r}")
        else:
            full[key] = default
    return Call(Op(name), tuple(args), Attrs.of(full), tuple(sinfo_args))


def is_pure(call: Call) -> bool:
    return isinstance(call.op, Op) and get_op(call.op.name).pure
