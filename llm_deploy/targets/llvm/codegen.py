"""tir PrimFuncs -> one LLVM module -> optimized for the host -> object file -> loaded kernels.

    codegen({"add": prim_func, ...}, LLVMOptions()) -> KernelModule

The stages, in order: `build_ir` (llvmlite.ir, one internal function per kernel plus the packed
entry point of abi.py), link the thread pool, set triple and data layout, verify, O3 with the
new pass manager for the host CPU, `emit_object`, and load that object into an MCJIT engine.
The JIT path and the artifact path are one path: what runs in tests is the object an artifact
stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import llvmlite.binding as llvm
from llvmlite import ir

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.ops.lower_int_dot import microkernel_type
from llm_deploy.targets.llvm import microkernels
from llm_deploy.targets.llvm import threadpool as pool
from llm_deploy.targets.llvm.abi import PY_DATA_OFFSET, PY_PREFIX, KernelSignature, ParamSpec, symbol_of
from llm_deploy.targets.llvm.dtypes import I64, PTR, dtype
from llm_deploy.targets.llvm.emitter import CodegenError, FunctionEmitter, ModuleState
from llm_deploy.targets.llvm.host import HostTarget, host, target_machine
from llm_deploy.targets.llvm.ops import Ops
from llm_deploy.targets.llvm.runtime import KernelModule


@dataclass(frozen=True)
class LLVMOptions:
    """How kernels are compiled. Defaults: optimized for this host's CPU, its features and width."""

    opt_level: int = 3
    cpu: str | None = None  # None: the host's (e.g. "znver3")
    features: str | None = None  # LLVM feature string; None: the host's
    vector_bits: int | None = None  # None: 512 with AVX-512, 256 with AVX, else 128
    vector_lanes: int | None = None  # force the lanes of vectorized loops
    fast_math: tuple[str, ...] = ("contract",)  # LLVM fast-math flags on float arithmetic
    unroll_limit: int = 64  # `unrolled` loops up to this constant extent are fully unrolled
    stack_limit: int = 1 << 16  # bytes; larger or symbolic allocations use malloc
    noalias: bool = True  # buffers of one call never overlap (destination passing style)
    num_threads: int | None = None  # threads of parallel loops; None: os.cpu_count()

    def target(self) -> HostTarget:
        h = host()
        return HostTarget(
            h.triple, self.cpu or h.cpu, self.features if self.features is not None else h.features
        )

    def lanes_bits(self, target: HostTarget) -> int:
        if self.vector_bits:
            return self.vector_bits
        feats = target.enabled_features
        return 512 if "avx512f" in feats else 256 if "avx" in feats else 128


def signature_of(name: str, f: T.PrimFunc) -> KernelSignature:
    """The kernel's ABI signature: parameters, and the order of its symbolic variables."""
    buffer_names = [b.name for b in f.buffers]
    if len(set(buffer_names)) != len(buffer_names):
        raise CodegenError(f"kernel {name}: buffer parameters need distinct names, found {buffer_names}")
    names = [s.name for s in f.scalars]
    bare = set(names)
    params = []
    for p in f.params:
        if isinstance(p, S.SymVar):
            params.append(ParamSpec(p.name, "scalar"))
            continue
        dtype(p.dtype)  # fails early on dtypes the target lacks
        for dim in p.shape:
            if isinstance(dim, S.SymVar):
                bare.add(dim.name)
            for v in sorted(S.free_vars(dim)):
                if v not in names:
                    names.append(v)
        shape = tuple(d.value if isinstance(d, S.IntImm) else S.to_str(d) for d in p.shape)
        params.append(ParamSpec(p.name, "buffer", p.dtype, shape))
    unbound = [v for v in names if v not in bare]
    if unbound:
        raise CodegenError(
            f"kernel {name}: {', '.join(unbound)} appear only inside shape expressions, so no argument's "
            "shape binds them; make them scalar parameters or add a buffer with that dim"
        )
    return KernelSignature(name, tuple(params), tuple(names))


def _emit_kernel(state: ModuleState, name: str, f: T.PrimFunc, sig: KernelSignature) -> None:
    buffers = f.buffers
    impl = state.function(
        f"{symbol_of(name)}.impl", ir.VoidType(), [PTR] * len(buffers) + [I64] * len(sig.vars), "internal"
    )
    em = FunctionEmitter(state, impl, name)
    for buf, arg in zip(buffers, impl.args):
        arg.name = buf.name
        if state.noalias:
            arg.add_attribute("noalias")
        em.bufs[buf.name] = arg
    scalars = {s.name for s in f.scalars}
    for v, arg in zip(sig.vars, impl.args[len(buffers) :]):
        arg.name = v
        # A dim is a size, never negative; that lets index math use unsigned division.
        em.bind(v, arg, lo=-S.INF if v in scalars else 0)
    if "microkernel" in f.attrs:
        _call_microkernel(state, em, name, f)
    else:
        em.stmt(f.body)
    em.finish()

    entry = state.function(symbol_of(name), ir.VoidType(), [PTR, PTR])
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    bufs_arg, vars_arg = entry.args
    args = [
        b.load(b.gep(bufs_arg, [ir.Constant(I64, i)], inbounds=True, source_etype=PTR), typ=PTR)
        for i in range(len(buffers))
    ]
    args += [
        b.load(b.gep(vars_arg, [ir.Constant(I64, j)], inbounds=True, source_etype=I64), typ=I64)
        for j in range(len(sig.vars))
    ]
    b.call(impl, args)
    b.ret_void()

    # The Python entry: numpy array objects in, data pointers read at numpy's field offset.
    py = state.function(PY_PREFIX + name, ir.VoidType(), [PTR] * len(buffers) + [I64] * len(sig.vars))
    b = ir.IRBuilder(py.append_basic_block("entry"))
    offset = b.load(_py_data_offset(state.module), typ=I64)
    data = [
        b.load(b.gep(obj, [offset], source_etype=ir.IntType(8)), typ=PTR) for obj in py.args[: len(buffers)]
    ]
    b.call(impl, [*data, *py.args[len(buffers) :]])
    b.ret_void()


def _call_microkernel(state: ModuleState, em: FunctionEmitter, name: str, f: T.PrimFunc) -> None:
    """The body is a call of the hand-written kernel (microkernels.py), linked in by `optimize`.
    Buffers: X, each weight's packed arrays, each weight's output (one or more weights)."""
    ggml_type = microkernel_type(f)
    bufs = f.buffers
    per_part = len(microkernels.arrays_of(ggml_type)) + 1 if ggml_type in microkernels.TYPES else 0
    if not per_part or (len(bufs) - 1) % per_part:
        raise CodegenError(f"kernel {name}: no microkernel {f.attrs['microkernel']!r} for these buffers")
    x, outs = bufs[0], bufs[-((len(bufs) - 1) // per_part) :]  # one output per weight, last
    parts = tuple(int(o.shape[1].value) for o in outs)  # type: ignore[union-attr]
    symbol = microkernels.symbol(name)
    state.microkernels[symbol] = (ggml_type, parts, int(x.shape[1].value))  # type: ignore[union-attr]
    fn = state.function(symbol, ir.VoidType(), [PTR] * len(bufs) + [I64])
    em.b.call(fn, [em.bufs[b.name] for b in bufs] + [em.index(x.shape[0])])


def _py_data_offset(module: ir.Module) -> ir.GlobalVariable:
    g = module.globals.get(PY_DATA_OFFSET)
    if g is None:
        g = ir.GlobalVariable(module, I64, PY_DATA_OFFSET)
        g.initializer = ir.Constant(I64, 16)  # CPython's PyObject header; the loader re-measures it
    return g


def build_ir(
    prim_funcs: Mapping[str, T.PrimFunc], options: LLVMOptions | None = None
) -> tuple[str, dict[str, KernelSignature], list[str]]:
    """LLVM IR text of the kernels (before optimization, without the pool and microkernels),
    their signatures, and notes on loops that could not be vectorized."""
    state, sigs = _build_module(prim_funcs, options or LLVMOptions())
    return str(state.module), sigs, state.notes


def _build_module(
    prim_funcs: Mapping[str, T.PrimFunc], options: LLVMOptions
) -> tuple[ModuleState, dict[str, KernelSignature]]:
    target = options.target()
    module = ir.Module(name="llm_deploy_kernels")
    state = ModuleState(
        module=module,
        ops=Ops(module, options.fast_math),
        vector_bits=options.lanes_bits(target),
        vector_lanes=options.vector_lanes,
        unroll_limit=options.unroll_limit,
        stack_limit=options.stack_limit,
        noalias=options.noalias,
    )
    sigs = {}
    for name, f in prim_funcs.items():
        if not isinstance(f, T.PrimFunc):
            raise CodegenError(f"kernel {name}: expected a tir.PrimFunc, found {type(f).__name__}")
        sigs[name] = signature_of(name, f)
        _emit_kernel(state, name, f, sigs[name])
    return state, sigs


def microkernel_ir(state: ModuleState, target: HostTarget) -> list[str]:
    """The module of the microkernels `state`'s kernels call (none: no module)."""
    if not state.microkernels:
        return []
    avx2 = "avx2" in target.enabled_features and target.triple.startswith("x86_64")
    return [microkernels.module_ir(state.microkernels, avx2)]


def optimize(
    text: str, target: HostTarget, opt_level: int = 3, extra: list[str] | None = None
) -> tuple[llvm.ModuleRef, llvm.TargetMachine]:
    """Parse, link the thread pool and the `extra` modules (microkernels), verify, and run the
    O<opt_level> pipeline for `target`."""
    tm = target_machine(target, opt_level)
    # A context of its own: codegen calls in several threads compile in parallel (llvmlite
    # releases the GIL inside LLVM).
    context = llvm.create_context()
    mod = llvm.parse_assembly(text, context)
    mod.link_in(llvm.parse_assembly(pool.pool_ir(target.triple), context))
    for other in extra or []:
        linked = llvm.parse_assembly(other, context)
        defined = [f.name for f in linked.functions if not f.is_declaration]
        mod.link_in(linked)
        for name in defined:
            mod.get_function(name).linkage = "internal"
    # Only the kernels and the pool's control functions stay visible to the loader.
    mod.get_function(pool.PARALLEL_FOR).linkage = "internal"
    mod.triple = target.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    if opt_level > 0:
        pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(mod, pb)
    return mod, tm


def codegen(prim_funcs: Mapping[str, T.PrimFunc], options: LLVMOptions | None = None) -> KernelModule:
    """Compile the kernels for this host and load them; `.object_code` is what an artifact stores."""
    options = options or LLVMOptions()
    state, sigs = _build_module(prim_funcs, options)
    text, target = str(state.module), options.target()
    mod, tm = optimize(text, target, options.opt_level, microkernel_ir(state, target))
    km = KernelModule(tm.emit_object(mod), sigs, target, options.num_threads)
    km.ir, km.optimized_ir, km.notes = text, str(mod), state.notes
    return km
