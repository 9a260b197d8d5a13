"""Bind the model's KV-cache ops to a cache implementation; the model definition does not change.

    mod = lower_kv_cache(mod)                    # kind="paged_kernels": compiled attention kernels
    mod = lower_kv_cache(mod, kind="extern")     # the runtime cache's numpy functions (= bind_kv_cache)

"paged_kernels": each `kv_cache_attention` becomes one call of a tensor program (append K/V into
the layer's pools through the page table, then ragged attention; kv_cache/kernels.py), compiled
by the target like every other kernel. The kernel reads the cache's own arrays, which reach the
graph as values of `call_extern_value` (not DPS: only the cache knows their sizes), named by a
match_cast: the step arrays once per block, the pools once per layer.

    kv_step_raw = call_extern_value(extern("kv_cache.step_arrays"), (cache,), out_sinfo=Tuple[...])
    kv_step = match_cast(kv_step_raw, Tuple[Tensor[(n,), "int32"], Tensor[(n,), "int64"],
                         Tensor[(n,), "int32"], Tensor[(kv_indptr,), "int32"], Tensor[(kv_pages,), "int32"]])
    kv_positions = kv_step[0] ...                 # the step's arrays, by name
    positions = kv_positions                      # was kv_cache_positions(cache, ids)
    kv_pools_l0 = match_cast(call_extern_value(extern("kv_cache.layer_pools"), (cache, 0), ...),
                             Tuple[Tensor[(kv_num_pages, kv_page_size, KV, d), kv_dtype], ...])
    l0_attn = call_tir(kv_cache_paged_attention, (q, k, v, k_pool, v_pool, kv_positions, ...), ...)

The match_cast checks at run time that the step has as many tokens as the model was given
(`n`), and that every layer's pools have the same pages. The pools' dtype is the build's
`kv_dtype` (the module attr of that name, else the activations' dtype). A call whose shapes are
not known (head counts, head_dim) keeps the extern.

"extern": both ops become destination-passing calls of the runtime cache (`kv_cache.positions`,
`kv_cache.attention`), which run numpy on the host: the reference to compare kernels against.
"""

from __future__ import annotations

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler.expr import (
    Binding,
    BindingBlock,
    Call,
    DataflowBlock,
    DataflowVar,
    Expr,
    Function,
    GetItem,
    MatchCast,
    Op,
    PrimValue,
    Var,
    VarBinding,
    info_of,
)
from llm_deploy.compiler.functor import ExprMutator, ExprVisitor
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops import builtin
from llm_deploy.compiler.passes.legalize import ModuleFuncs
from llm_deploy.compiler.struct_info import TensorInfo, TupleInfo
from llm_deploy.kv_cache.externs import STEP_ARRAYS
from llm_deploy.kv_cache.kernels import paged_attention_func

EXTERN_NAMES = {"kv_cache_positions": "kv_cache.positions", "kv_cache_attention": "kv_cache.attention"}
KINDS = ("paged_kernels", "extern")
# The step arrays' dtypes, in the order of STEP_ARRAYS; the first three have one entry per token.
STEP_DTYPES = {
    "positions": "int32",
    "append_slots": "int64",
    "token_seq": "int32",
    "page_indptr": "int32",
    "page_indices": "int32",
}
KERNEL_NAME = "kv_cache_paged_attention"


def _kv_call(binding: Binding) -> Call | None:
    value = binding.value
    if isinstance(binding, VarBinding) and isinstance(value, Call) and isinstance(value.op, Op):
        if value.op.name in EXTERN_NAMES:
            return value
    return None


def _extern_binding(var: Var, call: Call) -> VarBinding:
    args = list(call.args)
    if call.op.name == "kv_cache_attention":  # type: ignore[attr-defined]
        args.append(PrimValue(call.attrs["layer"]))
    extern = builtin.call_extern(EXTERN_NAMES[call.op.name], args, var.info, pure=True)  # type: ignore[attr-defined]
    return VarBinding(var, extern)


class _BindCache(ExprMutator):
    def visit_binding(self, binding):
        call = _kv_call(binding)
        if call is None:
            return super().visit_binding(binding)
        return [_extern_binding(binding.var, self.visit_expr(call))]  # type: ignore[arg-type]


def bind_kv_cache(mod: IRModule) -> IRModule:
    """Rewrite every KV-cache op of every graph function into a call of the runtime cache."""
    return _rewrite_functions(mod, lambda name, func: _BindCache().visit_function(func))


def lower_kv_cache(mod: IRModule, kind: str = "paged_kernels", kv_dtype: str | None = None) -> IRModule:
    """Rewrite the model's KV-cache ops into `kind`'s implementation (see the module doc)."""
    if kind == "extern":
        return bind_kv_cache(mod)
    if kind != "paged_kernels":
        raise ValueError(f"lower_kv_cache: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    funcs = ModuleFuncs(mod)
    kv_dtype = kv_dtype or mod.attrs.get("kv_dtype")
    for name, func in list(funcs.funcs.items()):
        if isinstance(func, Function):
            new = _LowerToKernels(funcs, func, kv_dtype).visit_function(func)
            if new is not func:
                funcs.funcs[name] = new
    return funcs.module()


def _rewrite_functions(mod: IRModule, rewrite) -> IRModule:
    out = mod
    for name, func in mod.items():
        if isinstance(func, Function):
            new = rewrite(name, func)
            if new is not func:
                out = out.with_function(name, new)
    return out


class _Names(ExprVisitor):
    """Fresh var and symbolic-var names for one function (nothing it binds or uses already)."""

    def __init__(self, func: Function):
        self.taken: set[str] = set()
        self.visit_expr(func)

    def visit_var_def(self, var: Var) -> None:
        self.taken.add(var.name)
        self.taken |= SI.free_vars(var.info)

    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self.taken:
            i += 1
            name = f"{hint}_{i}"
        self.taken.add(name)
        return name


class _LowerToKernels(ExprMutator):
    def __init__(self, funcs: ModuleFuncs, func: Function, kv_dtype: str | None):
        super().__init__()
        self.funcs = funcs
        self.kv_dtype = kv_dtype
        self.names = _Names(func)
        # symbolic dims the match_casts bind: one set per function, so a later block re-checks them
        self.dims = {
            d: S.var(self.names.fresh(f"kv_{d}")) for d in ("indptr", "pages", "num_pages", "page_size")
        }
        self.step: dict[str, Var] | None = None  # the current block's step arrays, once fetched
        self.dataflow = False

    def visit_block(self, block: BindingBlock) -> BindingBlock:
        outer = self.step, self.dataflow
        self.step, self.dataflow = None, isinstance(block, DataflowBlock)
        try:
            return super().visit_block(block)
        finally:
            self.step, self.dataflow = outer

    def visit_binding(self, binding: Binding) -> list[Binding]:
        call = _kv_call(binding)
        if call is None:
            return super().visit_binding(binding)
        call = self.visit_expr(call)  # type: ignore[assignment]
        infos = [info_of(a) for a in call.args]
        if call.op.name == "kv_cache_positions":  # type: ignore[attr-defined]
            tokens = _dims(infos[1], 1)
            if tokens is None:
                return [_extern_binding(binding.var, call)]
            pre = self.fetch_step(call.args[0], tokens[0])
            return [*pre, VarBinding(binding.var, self.step["positions"])]  # type: ignore[index]
        q, k, v = (_dims(i, 3) for i in infos[1:])
        if q is None or k is None or v is None or not all(isinstance(x, S.IntImm) for x in (*q[1:], *k[1:])):
            return [_extern_binding(binding.var, call)]
        dtype = infos[1].dtype  # type: ignore[union-attr]
        kv_dtype = self.kv_dtype or dtype
        pre = self.fetch_step(call.args[0], q[0])
        pools = self.fetch_pools(call.args[0], int(call.attrs["layer"]), k[1], k[2], kv_dtype, pre)
        kernel = paged_attention_func(q[1].value, k[1].value, k[2].value, dtype, kv_dtype)  # type: ignore[union-attr]
        gv = self.funcs.add_prim_func(kernel, KERNEL_NAME)
        step = self.step
        assert step is not None
        args = [*call.args[1:4], *pools, *(step[name] for name in STEP_ARRAYS)]
        return [*pre, VarBinding(binding.var, builtin.call_tir(gv, args, binding.var.info))]

    # -- the cache's arrays as graph values
    def new_var(self, hint: str, info: SI.StructInfo) -> Var:
        name = self.names.fresh(hint)
        return DataflowVar(name, info) if self.dataflow else Var(name, info)

    def fetch(self, extern: str, args: list[Expr], info: TupleInfo, hint: str, out: list[Binding]) -> Var:
        """`hint = match_cast(call_extern_value(extern, args), info)`, appended to `out`."""
        unknown = TupleInfo(tuple(TensorInfo(None, f.dtype, f.ndim) for f in info.fields))  # type: ignore[attr-defined]
        raw = self.new_var(f"{hint}_raw", unknown)
        out.append(VarBinding(raw, builtin.call_extern_value(extern, args, unknown)))
        var = self.new_var(hint, info)
        out.append(MatchCast(var, raw, info))
        return var

    def fetch_step(self, cache: Expr, tokens: S.PrimExpr) -> list[Binding]:
        if self.step is not None:
            return []
        shapes = {"page_indptr": (self.dims["indptr"],), "page_indices": (self.dims["pages"],)}
        info = TupleInfo(
            tuple(TensorInfo(shapes.get(name, (tokens,)), STEP_DTYPES[name]) for name in STEP_ARRAYS)
        )
        out: list[Binding] = []
        step = self.fetch("kv_cache.step_arrays", [cache], info, "kv_step", out)
        self.step = {}
        for i, name in enumerate(STEP_ARRAYS):
            var = self.new_var(f"kv_{name}", info.fields[i])
            out.append(VarBinding(var, GetItem(step, i)))
            self.step[name] = var
        return out

    def fetch_pools(
        self,
        cache: Expr,
        layer: int,
        kv_heads: S.PrimExpr,
        head_dim: S.PrimExpr,
        dtype: str,
        out: list[Binding],
    ) -> list[Var]:
        pool = TensorInfo((self.dims["num_pages"], self.dims["page_size"], kv_heads, head_dim), dtype)
        args = [cache, PrimValue(S.const(layer))]
        pools = self.fetch("kv_cache.layer_pools", args, TupleInfo((pool, pool)), f"kv_pools_l{layer}", out)
        result = []
        for i, which in enumerate(("k", "v")):
            var = self.new_var(f"kv_{which}_pool_l{layer}", pool)
            out.append(VarBinding(var, GetItem(pools, i)))
            result.append(var)
        return result


def _dims(info: SI.StructInfo, ndim: int) -> tuple[S.PrimExpr, ...] | None:
    if isinstance(info, TensorInfo) and info.shape is not None and info.dtype is not None:
        return info.shape if len(info.shape) == ndim else None
    return None
