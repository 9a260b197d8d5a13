"""Quantize: weight parameters become packed arrays, and the ops that read them fused kernels.

    def decode(ids, cache, ..., layers_0_q_proj: Tensor[(576, 576), "float32"], ...):
        lv = linear(h, layers_0_q_proj)
becomes, for q4f16_1,
    def decode(ids, cache, ..., layers_0_q_proj_qweight: Tensor[(576, 72), "uint32"],
               layers_0_q_proj_scale: Tensor[(576, 18), "float16"], ...):
        lv = dequantize_linear(h, layers_0_q_proj_qweight, layers_0_q_proj_scale,
                               packing="group:4:32:float16", shape=(576, 576))

A weight is a 2-d float parameter used only as `linear`'s weight or `take`'s table (axis 0);
the tied LM head is both, and both read the same packed arrays. Every binding keeps its var and
struct info, so the symbolic sequence length and everything downstream are untouched. The packed
parameters take the weight's place in the parameter list, in the order of `packing.arrays`.

The module attribute `quantization` records what the converter needs:
    {"name": "q4f16_1", "params": {"layers.0.q_proj": {"packing": key, "shape": (N, K),
                                                         "arrays": ("layers.0.q_proj.qweight", ...)}}}
keyed by the function attribute `params`' names when a function has them (the model's weight
names), else by the IR names; the functions' `params` attributes list the packed names instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from llm_deploy.compiler.expr import Call, Function, Op, Var
from llm_deploy.compiler.functor import ExprMutator, ExprVisitor
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops.quantized import dequantize_linear, dequantize_take
from llm_deploy.compiler.struct_info import TensorInfo, tensor
from llm_deploy.quantization.formats import Packing, Quantization, QuantizationError, get_quantization


def quantize(
    mod: IRModule, quantization: str | Quantization, source_types: Mapping[str, str] | None = None
) -> IRModule:
    """Rewrite every weight parameter of every graph function into `quantization`'s packing.

    `source_types` maps a weight (model name or IR name) to its GGML type name, for formats that
    keep each tensor's own format (gguf).
    """
    q = get_quantization(quantization) if isinstance(quantization, str) else quantization
    source_types = dict(source_types or {})
    funcs = {name: f for name, f in mod.items() if isinstance(f, Function)}
    weights = _weights(funcs.values())
    plan: dict[str, tuple[str, Packing]] = {}  # IR name -> (model name, packing)
    for ir_name, (model_name, info) in weights.items():
        shape = tuple(int(d.value) for d in info.shape)  # type: ignore[union-attr]
        source = source_types.get(model_name, source_types.get(ir_name))
        packing = q.packing_of(model_name, shape, source)  # type: ignore[arg-type]
        if packing is None:
            continue
        try:
            packing.check(shape, f"weight {model_name}")  # type: ignore[arg-type]
        except QuantizationError:
            if q.per_tensor:
                raise
            continue  # a shape the groups do not divide stays float, as in MLC-LLM
        plan[ir_name] = (model_name, packing)

    record = {}
    out = mod
    for name, f in funcs.items():
        new = _rewrite(f, plan)
        if new is not f:
            out = out.with_function(name, new)
    for ir_name, (model_name, packing) in plan.items():
        shape = tuple(int(d.value) for d in weights[ir_name][1].shape)  # type: ignore[union-attr]
        record[model_name] = {
            "packing": packing.key,
            "shape": shape,
            "arrays": tuple(f"{model_name}.{s.suffix}" for s in packing.arrays(shape)),  # type: ignore[arg-type]
        }
    return out.with_attrs(quantization={"name": q.name, "params": record})


def _model_names(f: Function) -> dict[str, str]:
    """IR param name -> the model's weight name, from the function's `params` attribute."""
    names = list(f.attrs.get("params", ()))
    weight_params = f.params[len(f.params) - len(names) :] if names else ()
    return {p.name: n for p, n in zip(weight_params, names)}


def _weights(funcs) -> dict[str, tuple[str, TensorInfo]]:
    """Parameters that are weights in every function that has them: IR name -> (model name, info)."""
    found: dict[str, tuple[str, TensorInfo]] = {}
    rejected: set[str] = set()
    for f in funcs:
        model_names = _model_names(f)
        uses = _Uses({p.name for p in f.params})
        uses.visit_expr(f.body)
        for p in f.params:
            info = p.info
            static = (
                isinstance(info, TensorInfo)
                and info.ndim == 2
                and info.dtype in ("float32", "float16")
                and info.shape is not None
                and all(hasattr(d, "value") for d in info.shape)
            )
            if not static or p.name in uses.other or p.name not in uses.weight:
                rejected.add(p.name)
            elif p.name not in found:
                found[p.name] = (model_names.get(p.name, p.name), info)  # type: ignore[assignment]
    return {k: v for k, v in found.items() if k not in rejected}


def _is_weight_use(call: Call, k: int) -> bool:
    """Operand k of `call` reads a weight the fused kernels can take over."""
    if not isinstance(call.op, Op):
        return False
    match call.op.name:
        case "linear":
            return k == 1 and call.attrs["out_dtype"] is None
        case "take":
            return k == 0 and call.attrs["axis"] == 0
    return False


class _Uses(ExprVisitor):
    """Which params are read as weights, and which are read any other way."""

    def __init__(self, params: set[str]):
        self.params = params
        self.weight: set[str] = set()
        self.other: set[str] = set()

    def visit_expr(self, expr) -> None:
        if isinstance(expr, Call):
            self.visit_expr(expr.op)
            for k, a in enumerate(expr.args):
                if isinstance(a, Var) and a.name in self.params and _is_weight_use(expr, k):
                    self.weight.add(a.name)
                else:
                    self.visit_expr(a)
            return
        super().visit_expr(expr)

    def visit_var_use(self, var: Var) -> None:
        if var.name in self.params:
            self.other.add(var.name)


def _rewrite(f: Function, plan: Mapping[str, tuple[str, Packing]]) -> Function:
    mine = {p.name: p for p in f.params if p.name in plan}
    if not mine:
        return f
    packed: dict[str, tuple[list[Var], Packing, tuple[int, int]]] = {}
    params: list[Var] = []
    for p in f.params:
        if p.name not in mine:
            params.append(p)
            continue
        _, packing = plan[p.name]
        shape = tuple(int(d.value) for d in p.info.shape)  # type: ignore[union-attr]
        arrays = [Var(f"{p.name}_{s.suffix}", tensor(s.shape, s.dtype)) for s in packing.arrays(shape)]  # type: ignore[arg-type]
        packed[p.name] = (arrays, packing, shape)  # type: ignore[assignment]
        params += arrays
    body = _Fuse(packed).visit_seq(f.body)
    attrs = f.attrs
    if "params" in attrs:
        names = []
        model_names = _model_names(f)
        for p in f.params:
            if p.name in packed:
                arrays, packing, shape = packed[p.name]
                names += [f"{model_names.get(p.name, p.name)}.{s.suffix}" for s in packing.arrays(shape)]
            elif p.name in model_names:
                names.append(model_names[p.name])
        attrs = attrs.replace(params=tuple(names))
    return Function(tuple(params), body, f.ret_info, f.pure, attrs)


class _Fuse(ExprMutator):
    def __init__(self, packed: Mapping[str, tuple[list[Var], Packing, tuple[int, int]]]):
        super().__init__()
        self.packed = packed

    def visit_expr(self, expr):
        if isinstance(expr, Call) and isinstance(expr.op, Op) and expr.op.name in ("linear", "take"):
            k = 1 if expr.op.name == "linear" else 0
            w = expr.args[k]
            if isinstance(w, Var) and w.name in self.packed and _is_weight_use(expr, k):
                arrays, packing, shape = self.packed[w.name]
                if expr.op.name == "linear":
                    return dequantize_linear(self.visit_expr(expr.args[0]), arrays, packing.key, shape)
                return dequantize_take(self.visit_expr(expr.args[1]), arrays, packing.key, shape)
        return super().visit_expr(expr)
