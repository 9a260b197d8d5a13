"""Lowerings of the layout ops: each output element reads one input element at a mapped index."""

from __future__ import annotations

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te, tir
from llm_deploy.compiler.expr import Call
from llm_deploy.compiler.ops.common import normalize_axis
from llm_deploy.compiler.ops.lower_common import (
    Lowered,
    all_known,
    broadcast_index,
    flat_index,
    known,
    lowered,
    output_names,
    placeholders,
    tensor_fields,
    unravel,
)
from llm_deploy.compiler.ops.operands import as_axes, normalize_axes
from llm_deploy.compiler.ops.registry import InferContext, register_legalize
from llm_deploy.compiler.shape import IntImm, PrimExpr
from llm_deploy.compiler.struct_info import ShapeInfo, StructInfo, TupleInfo


def _copy(call: Call, infos: list[StructInfo], out_info: StructInfo, read) -> Lowered | None:
    """One output read from the first operand: `read(X, out_shape, idx)` gives the element."""
    x, out = known(infos[0]), known(out_info)
    if x is None or out is None:
        return None
    (X,) = placeholders([x])
    Y = te.compute(out.shape, lambda *idx: read(X, out.shape, idx), "Out")
    return lowered(call.args[:1], [X], [Y])


@register_legalize("permute_dims")
def _lower_permute_dims(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext):
    axes = call.attrs["axes"]

    def read(X, shape, idx):
        perm = tuple(reversed(range(X.ndim))) if axes is None else normalize_axes(call, axes, X.ndim)
        inverse = [0] * X.ndim
        for k, a in enumerate(perm):  # output dim k is input dim a
            inverse[a] = idx[k]
        return X[tuple(inverse)]

    return _copy(call, infos, out_info, read)


@register_legalize("reshape")
def _lower_reshape(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext):
    def read(X, shape, idx):
        if tuple(X.shape) == tuple(shape):
            return X[idx]
        return X[unravel(flat_index(shape, idx), X.shape)]

    return _copy(call, infos, out_info, read)


@register_legalize("broadcast_to")
def _lower_broadcast_to(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext):
    return _copy(call, infos, out_info, broadcast_index)


@register_legalize("expand_dims")
def _lower_expand_dims(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext):
    def read(X, shape, idx):
        axes = normalize_axes(call, as_axes(call.attrs["axis"]), len(shape))
        return X[tuple(i for k, i in enumerate(idx) if k not in axes)]

    return _copy(call, infos, out_info, read)


@register_legalize("squeeze")
def _lower_squeeze(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext):
    x, out = known(infos[0]), known(out_info)
    if x is None or out is None:
        return None
    axes = as_axes(call.attrs["axis"])
    if axes is None:
        dropped = {k for k, d in enumerate(x.shape) if ctx.analyzer.can_prove_equal(d, 1)}  # type: ignore[arg-type]
    else:
        dropped = set(normalize_axes(call, axes, x.ndim))
    if x.ndim - len(dropped) != out.ndim:
        return None  # deduction knew more than this analyzer does: leave the op high-level

    def read(X, shape, idx):
        rest = iter(idx)
        return X[tuple(IntImm(0) if k in dropped else next(rest) for k in range(X.ndim))]

    return _copy(call, infos, out_info, read)


@register_legalize("concat")
def _lower_concat(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext):
    args, fields = tensor_fields(call.args[0], infos[0])
    parts, out = all_known(fields), known(out_info)
    if parts is None or out is None:
        return None
    inputs = placeholders(parts)
    axis = normalize_axis(call, call.attrs["axis"], out.ndim)
    starts = [S.IntImm(0)]
    for t in inputs[:-1]:
        starts.append(S.add(starts[-1], t.shape[axis]))

    def element(*idx):
        def part(k: int):
            shifted = tuple(S.sub(i, starts[k]) if a == axis else i for a, i in enumerate(idx))
            value = inputs[k][shifted]
            if k == len(inputs) - 1:
                return value
            # lazy: the other parts' reads would be out of bounds
            return te.if_then_else(tir.binary("lt", idx[axis], starts[k + 1]), value, part(k + 1))

        return part(0)

    Y = te.compute(out.shape, element, "Out")
    return lowered(args, inputs, [Y])


@register_legalize("split")
def _lower_split(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext):
    x = known(infos[0])
    if x is None or not isinstance(out_info, TupleInfo):
        return None
    outs = all_known(list(out_info.fields))
    if outs is None:
        return None
    (X,) = placeholders([x])
    axis = normalize_axis(call, call.attrs["axis"], x.ndim)
    results, start = [], S.IntImm(0)
    for o, name in zip(outs, output_names(len(outs))):

        def element(*idx, start=start):
            return X[tuple(S.add(i, start) if a == axis else i for a, i in enumerate(idx))]

        results.append(te.compute(o.shape, element, name))
        start = S.add(start, o.shape[axis])  # type: ignore[index]
    return lowered(call.args[:1], [X], results)


@register_legalize("strided_slice")
def _lower_strided_slice(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext):
    begin_info = infos[1]
    if not isinstance(begin_info, ShapeInfo) or begin_info.values is None:
        return None
    axes = call.attrs["axes"]
    strides = tuple(call.attrs["strides"] or (1,) * len(axes))

    def read(X, shape, idx):
        start: dict[int, tuple[PrimExpr, int]] = {}
        for a, b, s in zip(normalize_axes(call, axes, X.ndim), begin_info.values, strides):
            dim = X.shape[a]
            if isinstance(b, IntImm) and b.value < 0:
                b = S.add(dim, b)
            start[a] = (ctx.analyzer.simplify(S.minimum(S.maximum(b, 0), dim)), s)
        return X[
            tuple(S.add(start[a][0], S.mul(i, start[a][1])) if a in start else i for a, i in enumerate(idx))
        ]

    return _copy(call, infos, out_info, read)


@register_legalize("take")
def _lower_take(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext):
    operands, out = all_known(infos), known(out_info)
    if operands is None or out is None:
        return None
    X, I = placeholders(operands)
    axis = normalize_axis(call, call.attrs["axis"], X.ndim)

    def element(*idx):
        row = I[tuple(idx[axis : axis + I.ndim])]  # a loaded index: let-bound in the loop body
        return X[(*idx[:axis], row, *idx[axis + I.ndim :])]

    Y = te.compute(out.shape, element, "Out")
    return lowered(call.args, [X, I], [Y])
