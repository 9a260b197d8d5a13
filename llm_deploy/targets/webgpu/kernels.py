"""WebGPU kernels at run time: shaders compiled into pipelines once per device, and a kernel
call that checks its arguments, binds the symbolic dims and records the host plan's dispatches
(see codegen.py for the plan), saved as `kernels.wgsl` + `kernels.json`.

    module = load("dist/model")      # no compiler
    module["add"](x, y, out)         # records a dispatch on the module's device

Imports nothing from the compiler.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_deploy.runtime.symbolic import compile_expr
from llm_deploy.targets.llvm.abi import KernelSignature
from llm_deploy.targets.webgpu.device import (
    F16_FEATURE,
    MAX_UNIFORMS,
    GPUTensor,
    KernelCallError,
    WebGPUDevice,
    WebGPUError,
    default_device,
)
from llm_deploy.targets.webgpu.dtypes import dtype as device_dtype

FORMAT = "llm_deploy.webgpu_kernels/1"
RESOLVED_PLANS = 256  # per kernel: the plans resolved for as many different argument shapes


class Pipeline:
    """A compiled shader: its pipeline and bind group layout, created once per device."""

    def __init__(self, device: WebGPUDevice, kernel: str, index: int, shader: Mapping[str, Any]):
        wgpu = device.wgpu
        self.uniforms = list(shader["uniforms"])
        if len(self.uniforms) > MAX_UNIFORMS:
            raise WebGPUError(
                f"kernel {kernel}: {len(self.uniforms)} dims exceed the {MAX_UNIFORMS} a dispatch may pass"
            )
        if shader["f16"] and not device.has_f16:
            raise WebGPUError(
                f"kernel {kernel} computes in float16, which needs the WebGPU feature {F16_FEATURE!r}; "
                f"the adapter {device.info.get('device', '?')} ({device.info.get('backend_type', '?')}) lacks it. "
                "Build with float32 (q0f32 / a *f32* quantization) to run on this adapter"
            )
        wg = shader["workgroup"]
        lim = device.limits
        if (
            wg[0] > lim["max-compute-workgroup-size-x"]
            or wg[1] > lim["max-compute-workgroup-size-y"]
            or wg[2] > lim["max-compute-workgroup-size-z"]
            or math.prod(wg) > lim["max-compute-invocations-per-workgroup"]
        ):
            raise WebGPUError(f"kernel {kernel}: workgroup size {wg} exceeds this device's limits")
        storage = sum(b["chunks"] for b in shader["bindings"]) + bool(shader["merged"])
        if storage > lim["max-storage-buffers-per-shader-stage"]:
            raise WebGPUError(
                f"kernel {kernel}: {storage} storage buffers exceed this device's "
                f"{lim['max-storage-buffers-per-shader-stage']} per shader stage"
            )
        entries = []
        if self.uniforms:
            entries.append(
                {
                    "binding": 0,
                    "visibility": wgpu.ShaderStage.COMPUTE,
                    "buffer": {"type": wgpu.BufferBindingType.uniform, "has_dynamic_offset": True},
                }
            )
        binding = 0
        for b in shader["bindings"]:
            kind = (
                wgpu.BufferBindingType.storage if b["writable"] else wgpu.BufferBindingType.read_only_storage
            )
            for _ in range(b["chunks"]):
                binding += 1
                entries.append(
                    {"binding": binding, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": kind}}
                )
        if shader["merged"]:
            kind = wgpu.BufferBindingType.read_only_storage
            entries.append(
                {"binding": binding + 1, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": kind}}
            )
        try:
            module = device.device.create_shader_module(code=shader["code"], label=f"{kernel}#{index}")
            self.layout = device.device.create_bind_group_layout(entries=entries)
            layout = device.device.create_pipeline_layout(bind_group_layouts=[self.layout])
            self.pipeline = device.device.create_compute_pipeline(
                layout=layout, compute={"module": module, "entry_point": "main"}
            )
        except Exception as e:  # wgpu raises its own error types for validation failures
            raise WebGPUError(
                f"kernel {kernel}, shader {index}: the device rejected it: {e}\n{shader['code']}"
            ) from e
        device.stats["pipelines"] += 1


class Kernel:
    """A kernel callable as `kernel(*tensors_and_ints)` in its parameter order: checks the
    arguments, binds the symbolic dims and records the kernel's dispatches."""

    def __init__(self, spec: Mapping[str, Any], module: KernelModule):
        self.spec = spec
        self.name = spec["name"]
        self.signature = KernelSignature.from_json(spec["signature"])
        self.module = module
        self._pipelines: list[Pipeline] | None = None
        sig = self.signature
        self._params = [(p.name, p.kind, p.dtype, p.shape) for p in sig.params]
        self._dims = {
            p.name: [(i, compile_expr(d), d) for i, d in enumerate(p.shape)]
            for p in sig.params
            if p.kind == "buffer"
        }
        self._plan = _compile_plan(spec["plan"])
        self._resolved: dict[tuple, list[tuple]] = {}  # argument shapes -> the plan's steps for them
        self._grids = [[compile_expr(g) for g in s["grid"]] for s in spec["shaders"]]

    def __repr__(self) -> str:
        return f"<webgpu Kernel {self.signature}>"

    def pipelines(self) -> list[Pipeline]:
        if self._pipelines is None:
            device = self.module.device
            self._pipelines = [Pipeline(device, self.name, i, s) for i, s in enumerate(self.spec["shaders"])]
        return self._pipelines

    def __call__(self, *args: Any) -> None:
        if len(args) != len(self._params):
            raise KernelCallError(
                f"kernel {self.signature} takes {len(self._params)} arguments, got {len(args)}"
            )
        device = self.module.device
        bufs: dict[str, GPUTensor] = {}
        for i, (a, (name, kind, dt, _)) in enumerate(zip(args, self._params)):
            if kind == "buffer":
                if type(a) is not GPUTensor and not isinstance(a, GPUTensor) or a.dtype != dt:
                    raise self._bad_arg(i, a)
                if a.device is not device:
                    raise KernelCallError(
                        f"kernel {self.name}: argument {i} ({name}) lives on another device"
                    )
                bufs[name] = a
        # Calls with the same shapes (every decode step) replay the plan resolved for them:
        # dims bound and checked, branches taken, grids and uniforms computed once.
        key = tuple(a.shape if kind == "buffer" else int(a) for a, (_, kind, _, _) in zip(args, self._params))
        steps = self._resolved.get(key)
        if steps is None:
            env = self._bind(args, bufs)
            steps = []
            self._resolve(self._plan, env, device, self.pipelines(), steps)
            if len(self._resolved) >= RESOLVED_PLANS:
                self._resolved.clear()
            self._resolved[key] = steps
        for step in steps:
            if step[0] == "alloc":
                bufs[step[1]] = device.alloc(step[2], step[3])
            else:
                self._dispatch(step, bufs, device)

    def _bind(self, args: Sequence[Any], bufs: dict[str, GPUTensor]) -> dict[str, int]:
        """The symbolic values of a call, every buffer's shape checked against them."""
        env: dict[str, int] = {}
        for a, (name, kind, _, _) in zip(args, self._params):
            if kind == "scalar":
                env[name] = int(a)
        for i, (name, kind, _, shape) in enumerate(self._params):
            if kind == "buffer":
                a = bufs[name]
                if len(a.shape) != len(shape):
                    raise self._bad_arg(i, a)
                for di, d in enumerate(shape):
                    if isinstance(d, str) and d.isidentifier() and d not in env:
                        env[d] = a.shape[di]
        for i, (name, kind, _, _) in enumerate(self._params):
            if kind == "buffer":
                for di, ev, _ in self._dims[name]:
                    if ev(env) != bufs[name].shape[di]:
                        raise self._bad_arg(i, bufs[name], env)
        return env

    def _resolve(self, plan: list, env: dict[str, int], device: WebGPUDevice, pipelines, out: list) -> None:
        """The plan's steps for these dims: allocations with their shapes, dispatches with
        their grids and uniforms, branches taken."""
        for op in plan:
            kind = op[0]
            if kind == "dispatch":
                index = op[1]
                shader = self.spec["shaders"][index]
                grid = [g(env) for g in self._grids[index]]
                if min(grid) <= 0:
                    continue
                limit = device.limits["max-compute-workgroups-per-dimension"]
                if shader["linear"] and grid[0] > limit:
                    grid = [limit, -(-grid[0] // limit), 1]
                if max(grid) > limit:
                    raise WebGPUError(
                        f"kernel {self.name}: grid {grid} exceeds {limit} workgroups per dimension"
                    )
                values = [
                    env[u] for u in shader["uniforms"][: len(shader["uniforms"]) - len(shader["merged"])]
                ]
                out.append(("dispatch", pipelines[index], shader, tuple(grid), values))
            elif kind == "alloc":
                _, name, dt, dims = op
                out.append(("alloc", name, tuple(d(env) for d in dims), dt))
            else:
                _, cond, then_plan, else_plan = op
                self._resolve(then_plan if cond(env) else else_plan, env, device, pipelines, out)

    def _dispatch(self, step: tuple, bufs: dict[str, GPUTensor], device: WebGPUDevice) -> None:
        _, pipeline, shader, grid, values = step
        resources = []
        max_binding = device.max_binding_bytes
        values = list(values)
        for b in shader["bindings"]:
            t = bufs[b["buffer"]]
            if b["chunks"] == 1:
                if t.size_bytes > max_binding:
                    raise WebGPUError(
                        f"kernel {self.name}: {b['buffer']} {t.shape} takes {t.size_bytes} bytes, more than "
                        f"one storage binding may hold on this device ({max_binding}); use shorter inputs"
                    )
                resources.append((t.buffer, t.offset, t.size_bytes))
                continue
            chunk = b["chunk_words"] * device_dtype(b["dtype"]).word_bytes
            if chunk > max_binding:
                raise WebGPUError(
                    f"kernel {self.name}: {b['buffer']} is bound in chunks of {chunk} bytes, more than this "
                    f"device's storage bindings hold ({max_binding}); rebuild with a smaller max_binding_bytes"
                )
            for c in range(b["chunks"]):
                offset = c * chunk
                size = min(chunk, t.size_bytes - offset)
                resources.append(
                    (t.buffer, t.offset + offset, size) if size > 0 else (device.dummy(), 0, 256)
                )
        if shader["merged"]:
            # small read-only inputs copied side by side into one binding, read at word offsets
            parts = [bufs[name] for name in shader["merged"]]
            sizes = [-(-max(t.nbytes, 4) // 256) * 256 for t in parts]
            merged = device.alloc((sum(sizes),), "uint8")
            offset = 0
            for t, size in zip(parts, sizes):
                device.copy(t, 0, merged, offset, -(-t.nbytes // 4) * 4)
                values.append(offset // 4)
                offset += size
            resources.append((merged.buffer, merged.offset, merged.size_bytes))
        device.record_dispatch(pipeline, resources, values, grid)

    def _bad_arg(self, i: int, arg: Any, env: Mapping[str, int] | None = None) -> KernelCallError:
        p = self.signature.params[i]
        want = f"a {p.dtype} GPUTensor of shape ({', '.join(map(str, p.shape))})"
        found = repr(arg) if isinstance(arg, GPUTensor) else type(arg).__name__
        where = "" if not env else " with " + ", ".join(f"{k}={v}" for k, v in env.items())
        return KernelCallError(
            f"kernel {self.signature}: argument {i} ({p.name}) must be {want}{where}, found {found}"
        )


def _compile_plan(plan: list[Mapping[str, Any]]) -> list[tuple]:
    out: list[tuple] = []
    for op in plan:
        match op["op"]:
            case "dispatch":
                out.append(("dispatch", op["shader"]))
            case "alloc":
                out.append(("alloc", op["buffer"], op["dtype"], [compile_expr(d) for d in op["shape"]]))
            case "if":
                out.append(
                    ("if", _compile_cond(op["cond"]), _compile_plan(op["then"]), _compile_plan(op["else"]))
                )
            case other:
                raise ValueError(f"unknown plan op {other!r}")
    return out


_COMPARE = {
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
}  # fmt: skip


def _compile_cond(c: list) -> Callable[[Mapping[str, int]], bool]:
    op = c[0]
    if op in _COMPARE:
        fn, a, b = _COMPARE[op], compile_expr(c[1]), compile_expr(c[2])
        return lambda env: fn(a(env), b(env))
    if op == "not":
        inner = _compile_cond(c[1])
        return lambda env: not inner(env)
    x, y = _compile_cond(c[1]), _compile_cond(c[2])
    if op == "and":
        return lambda env: x(env) and y(env)
    if op == "or":
        return lambda env: x(env) or y(env)
    raise ValueError(f"unknown condition {op!r}")


def check_features(module: KernelModule, device: WebGPUDevice) -> None:
    if module.needs_f16 and not device.has_f16:
        kernels = [k["name"] for k in module.specs if any(s["f16"] for s in k["shaders"])]
        raise WebGPUError(
            f"this build computes in float16 (kernels {', '.join(kernels[:3])}{', ...' if len(kernels) > 3 else ''}), "
            f"which needs the WebGPU feature {F16_FEATURE!r}; the adapter {device.info.get('device', '?')} "
            f"({device.info.get('backend_type', '?')}) lacks it. Build with float32 (for the KV cache: "
            "--kv-dtype float32) to run on this adapter"
        )


class KernelModule:
    """Kernels of one build. Pipelines are created on the module's device at first call."""

    def __init__(self, specs: Sequence[Mapping[str, Any]], device: WebGPUDevice | None = None):
        self.specs = list(specs)
        self._device = device
        self.kernels = {s["name"]: Kernel(s, self) for s in self.specs}

    @property
    def device(self) -> WebGPUDevice:
        """The device the kernels run on (the process's default unless given); a module that
        computes in float16 is refused here, by name of the feature, on a device without it."""
        if self._device is None:
            device = default_device()
            check_features(self, device)
            self._device = device
        return self._device

    def prepare(self) -> KernelModule:
        """Create every pipeline now (errors such as a missing feature show at load, not mid-step)."""
        for k in self.kernels.values():
            k.pipelines()
        return self

    @property
    def needs_f16(self) -> bool:
        return any(s["f16"] for k in self.specs for s in k["shaders"])

    def __getitem__(self, name: str) -> Kernel:
        if name not in self.kernels:
            raise KeyError(f"no kernel {name!r}; this module has {', '.join(sorted(self.kernels))}")
        return self.kernels[name]

    def __contains__(self, name: object) -> bool:
        return name in self.kernels

    def sources(self) -> str:
        """Every shader, in order, each after a `// kernel <name> shader <i>` line."""
        parts = []
        for k in self.specs:
            for i, s in enumerate(k["shaders"]):
                parts.append(f"// kernel {k['name']} shader {i}\n{s['code']}")
        return "\n".join(parts)

    def save(self, folder: str | Path, stem: str = "kernels") -> None:
        """`<stem>.wgsl` (the shaders) and `<stem>.json` (signatures, bindings and host plans)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.wgsl").write_text(self.sources())
        specs = [
            {**k, "shaders": [{key: v for key, v in s.items() if key != "code"} for s in k["shaders"]]}
            for k in self.specs
        ]
        (folder / f"{stem}.json").write_text(json.dumps({"format": FORMAT, "kernels": specs}, indent=1))


def load(
    folder: str | Path,
    stem: str = "kernels",
    num_threads: int | None = None,
    device: WebGPUDevice | None = None,
) -> KernelModule:
    """Kernels saved by `KernelModule.save`; pipelines are created on `device` (default: the
    process's) when first called. `num_threads` is the CPU loader's knob, unused here."""
    folder = Path(folder)
    manifest = json.loads((folder / f"{stem}.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder / stem}.json: format {manifest.get('format')!r}, expected {FORMAT!r}")
    codes = _split_sources((folder / f"{stem}.wgsl").read_text())
    specs = []
    for k in manifest["kernels"]:
        shaders = []
        for i, s in enumerate(k["shaders"]):
            key = (k["name"], i)
            if key not in codes:
                raise ValueError(f"{folder / stem}.wgsl has no shader {i} of kernel {k['name']}")
            shaders.append({**s, "code": codes[key]})
        specs.append({**k, "shaders": shaders})
    return KernelModule(specs, device)


def _split_sources(text: str) -> dict[tuple[str, int], str]:
    out: dict[tuple[str, int], str] = {}
    key, lines = None, []
    for line in text.split("\n"):
        if line.startswith("// kernel ") and " shader " in line:
            if key is not None:
                out[key] = "\n".join(lines)
            name, index = line[len("// kernel ") :].rsplit(" shader ", 1)
            key, lines = (name, int(index)), []
        else:
            lines.append(line)
    if key is not None:
        out[key] = "\n".join(lines)
    return out
