"""The WebGPU runtime: a device (wgpu), tensors kept in GPU buffers, and kernels that record
dispatches into one submission per step.

    device = default_device()                    # wgpu picks Vulkan, Metal, D3D12 or GL
    module = load("dist/model")                   # kernels.json + kernels.wgsl, no compiler
    x = device.from_host(array, persistent=True)  # weights: uploaded once
    module["add"](x, y, out)                      # records a dispatch, runs nothing yet
    device.to_host(out)                           # one submission, one readback

How a step stays cheap:
- Kernels record; nothing reaches the GPU until a readback (`to_host`) or `flush`, which encodes
  every recorded dispatch and copy into one command buffer and submits it once.
- Symbolic dims of every dispatch go to one uniform arena, a 256-byte slot per dispatch bound
  with a dynamic offset, written with one `write_buffer` per step: bind groups do not change
  when the dims do.
- Buffers come from a pool keyed by size: the same sequence of allocations in the next step gets
  the same buffers, so bind groups (cached by the buffers they bind) and pipelines (created once
  per shader) are reused. A buffer freed mid-step may be reused by a later dispatch of the same
  step: all work is in one ordered command stream, and uploads during a step are copies in that
  stream (from a staging arena), never `write_buffer`s that would jump ahead of it.

Imports nothing from the compiler.
"""

from __future__ import annotations

import json
import math
import os
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_deploy.runtime.symbolic import compile_expr
from llm_deploy.runtime.vm import Device
from llm_deploy.targets.llvm.abi import KernelSignature
from llm_deploy.targets.webgpu.dtypes import dtype as device_dtype

FORMAT = "llm_deploy.webgpu_kernels/1"
UNIFORM_SLOT = 256  # bytes per dispatch in the uniform arena: any adapter's offset alignment
MAX_UNIFORMS = UNIFORM_SLOT // 4
F16_FEATURE = "shader-f16"
BIND_GROUP_CACHE = 4096
PLACEMENTS = 1 << 16  # remembered (allocation, size) -> buffer placements
RESOLVED_PLANS = 256  # per kernel: the plans resolved for as many different argument shapes


class WebGPUError(RuntimeError):
    """No adapter, a missing feature, a limit exceeded, a shader the driver rejects."""


class KernelCallError(ValueError):
    """Arguments that do not match a kernel's signature."""


# ---------------------------------------------------------------------------------------------
# Device selection


_DEFAULT: WebGPUDevice | None = None


def default_device() -> WebGPUDevice:
    """The process's WebGPU device, created on first use. `LLM_DEPLOY_WEBGPU_BACKEND` (Vulkan,
    Metal, D3D12, OpenGL) forces wgpu's backend; otherwise wgpu chooses."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = request_device(os.environ.get("LLM_DEPLOY_WEBGPU_BACKEND") or None)
    return _DEFAULT


def request_device(backend: str | None = None, f16: bool = True) -> WebGPUDevice:
    """A new device on the best adapter, with every limit the adapter has and `shader-f16` when
    it offers it (`f16=False`: without, as on an adapter lacking it)."""
    import wgpu

    if backend is not None:
        from wgpu.backends.wgpu_native import extras

        extras.set_instance_extras(backends=[backend])
    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    if adapter is None:
        raise WebGPUError(
            "no WebGPU adapter found"
            + (f" for the {backend} backend" if backend else "")
            + "; install a GPU driver or Mesa's lavapipe (apt mesa-vulkan-drivers libvulkan1)"
        )
    features = [F16_FEATURE] if f16 and F16_FEATURE in adapter.features else []
    limits = {k: v for k, v in adapter.limits.items() if not k.startswith("max-bind-groups-plus")}
    device = adapter.request_device_sync(required_features=features, required_limits=limits)
    return WebGPUDevice(adapter, device)


# ---------------------------------------------------------------------------------------------
# Tensors


def _bucket(nbytes: int) -> int:
    """Pool size class: 256-byte steps up to 4 KiB, then eighths of a power of two."""
    n = max(nbytes, 16)
    if n <= 4096:
        return -(-n // 256) * 256
    step = (1 << (n.bit_length() - 1)) // 8
    return -(-n // step) * step


class DTypeName(str):
    """A dtype's name that also answers `.name` and `.itemsize` like a numpy dtype: comparing
    and printing it costs a string's work, not numpy's (the VM checks every argument's dtype
    on every call, hundreds per step)."""

    itemsize: int

    @property
    def name(self) -> str:
        return str(self)


_DTYPE_NAMES: dict[str, DTypeName] = {}


def dtype_name(dtype: Any) -> DTypeName:
    key = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    found = _DTYPE_NAMES.get(key)
    if found is None:
        d = np.dtype(key)
        found = _DTYPE_NAMES[key] = _DTYPE_NAMES[d.name] = DTypeName(d.name)
        found.itemsize = d.itemsize
    return found


class GPUTensor:
    """An n-d array in a device buffer. `shape` and `dtype` are what numpy would say."""

    __slots__ = ("shape", "dtype", "device", "buffer", "offset", "size_bytes", "base", "__weakref__")

    def __init__(
        self,
        device: WebGPUDevice,
        shape: tuple[int, ...],
        dtype: str,
        buffer: Any,
        size_bytes: int,
        offset: int = 0,
        base: GPUTensor | None = None,
    ):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype_name(dtype)
        self.device = device
        self.buffer = buffer
        self.offset = offset  # bytes into the buffer (a multiple of 256: bindings start there)
        self.size_bytes = size_bytes  # bytes from offset that kernels may bind (>= nbytes)
        self.base = base  # the tensor owning the buffer, kept alive by its views

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def numpy(self) -> np.ndarray:
        return self.device.to_host(self)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"GPUTensor(shape={self.shape}, dtype={self.dtype.name}, device={self.device.name})"


# ---------------------------------------------------------------------------------------------
# The device


class WebGPUDevice(Device):
    """A wgpu device with a buffer pool and a recorder of one submission per step."""

    def __init__(self, adapter: Any, device: Any):
        import wgpu

        super().__init__("webgpu")
        self.wgpu = wgpu
        self.adapter = adapter
        self.device = device
        self.queue = device.queue
        self.features = set(device.features)
        self.limits = dict(device.limits)
        self.max_binding_bytes = int(self.limits["max-storage-buffer-binding-size"])
        self.info = dict(adapter.info)
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "submissions", "readbacks", "dispatches", "uploads", "pipelines", "bind_groups",
                "buffers", "host_fallbacks",
            ),
            0,
        )  # fmt: skip
        # seconds spent encoding and submitting, and waiting for the GPU (readbacks)
        self.timing: dict[str, float] = {"encode_s": 0.0, "wait_s": 0.0}
        self._free: dict[int, dict[int, Any]] = {}  # size -> free buffers by id
        self._allocs = 0  # allocations in this step
        self._placed: dict[tuple[int, int], Any] = {}  # (k-th allocation, size) -> its last buffer
        self._commands: list[tuple] = []
        self._uniforms: list[np.ndarray] = []
        self._staging = bytearray()
        self._uniform_arena: Any = None
        self._uniform_capacity = 0
        self._upload_arena: Any = None
        self._upload_capacity = 0
        self._read_buffers: dict[int, list[Any]] = {}
        self._bind_groups: OrderedDict[tuple, Any] = OrderedDict()
        self._dummy: Any = None
        self._usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST

    def __repr__(self) -> str:
        return f"WebGPUDevice({self.info.get('device', '?')}, {self.info.get('backend_type', '?')})"

    @property
    def kv_cache_type(self) -> type:
        """The paged KV cache a model runner on this device uses (its pools live here)."""
        from llm_deploy.targets.webgpu.externs import DevicePagedKVCache

        return DevicePagedKVCache

    @property
    def has_f16(self) -> bool:
        return F16_FEATURE in self.features

    # -- memory
    def _buffer(self, size: int, fresh: bool = False) -> Any:
        # The k-th allocation of a step takes the buffer that the k-th allocation of that size
        # had last time, when it is free: a step shaped like an earlier one (a decode after a
        # prefill of another length) binds the same buffers, so its bind groups are cached.
        if size > self.limits["max-buffer-size"]:
            raise WebGPUError(
                f"a tensor of {size} bytes exceeds this device's maxBufferSize ({self.limits['max-buffer-size']})"
            )
        if fresh:  # persistent tensors are no part of a step's allocations
            self.stats["buffers"] += 1
            return self.device.create_buffer(size=size, usage=self._usage)
        k = self._allocs
        self._allocs += 1
        pool = self._free.get(size)
        if pool:
            last = self._placed.get((k, size))
            buffer = pool.pop(id(last)) if last is not None and id(last) in pool else pool.popitem()[1]
        else:
            self.stats["buffers"] += 1
            buffer = self.device.create_buffer(size=size, usage=self._usage)
        if len(self._placed) > PLACEMENTS:
            self._placed.clear()
        self._placed[(k, size)] = buffer
        return buffer

    def _release(self, size: int, buffer: Any) -> None:
        self._free.setdefault(size, {})[id(buffer)] = buffer

    def alloc(self, shape: tuple[int, ...], dtype: str, fresh: bool = False) -> GPUTensor:
        """An uninitialized tensor from the pool (returned to it when the tensor is dropped).
        `fresh`: a new buffer, never one that work recorded in this step may still use."""
        device_dtype(str(dtype))  # fails early on dtypes WebGPU cannot hold
        size = _bucket(math.prod(shape) * np.dtype(dtype).itemsize)
        t = GPUTensor(self, shape, dtype, self._buffer(size, fresh), size)
        weakref.finalize(t, self._release, size, t.buffer)
        return t

    def alloc_storage(self, nbytes: int) -> GPUTensor:
        """A block that planned tensors are views of (allocated once by the VM, then reused)."""
        size = -(-max(nbytes, 16) // 256) * 256
        return GPUTensor(self, (size,), "uint8", self._buffer(size, fresh=True), size)

    def view(self, storage: GPUTensor, offset: int, shape: tuple[int, ...], dtype: str) -> GPUTensor:
        """A tensor at byte `offset` of `storage`. Bindings must start at multiples of 256 bytes;
        a tensor planned at another offset gets a buffer of its own (the same values, only less
        memory saved)."""
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if offset + nbytes > storage.size_bytes:
            raise WebGPUError(
                f"a {dtype} tensor of shape {shape} does not fit its storage of {storage.size_bytes} bytes"
            )
        if offset % 256:
            return self.alloc(shape, dtype)
        size = min(storage.size_bytes - offset, -(-max(nbytes, 4) // 4) * 4)
        return GPUTensor(self, shape, dtype, storage.buffer, size, storage.offset + offset, storage)

    def reshape(self, value: GPUTensor, shape: tuple[int, ...]) -> GPUTensor:
        """The same elements under another shape: the same buffer."""
        if math.prod(shape) != value.size:
            raise WebGPUError(f"cannot reshape a tensor of shape {value.shape} to {shape}")
        return GPUTensor(
            self, shape, value.dtype.name, value.buffer, value.size_bytes, value.offset, value.base or value
        )

    def from_host(self, array: Any, persistent: bool = False) -> Any:
        """`array` on the device. Persistent tensors (weights, constants) are written at once and
        live as long as the tensor; others are copied in the step's command stream. Ints and
        other non-arrays pass through."""
        if isinstance(array, GPUTensor) or not isinstance(array, np.ndarray):
            return array
        t = self.alloc(array.shape, array.dtype.name, fresh=persistent)
        self.write(t, array, immediate=persistent)
        return t

    def write(self, tensor: GPUTensor, array: np.ndarray, immediate: bool = False) -> None:
        """Fill `tensor` from a host array of its shape and dtype."""
        if tuple(array.shape) != tensor.shape:
            raise KernelCallError(
                f"cannot write an array of shape {array.shape} into a tensor of shape {tensor.shape}"
            )
        data = np.ascontiguousarray(array, dtype=tensor.dtype).tobytes()
        if len(data) % 4:
            data += b"\0" * (4 - len(data) % 4)
        if not data:
            return
        if immediate:
            self.queue.write_buffer(tensor.buffer, tensor.offset, data)
            return
        offset = len(self._staging)
        self._staging += data
        self._staging += b"\0" * (-len(self._staging) % 256)
        self._commands.append(("copy", offset, tensor, len(data)))
        self.stats["uploads"] += 1

    def copy(self, src: GPUTensor, src_offset: int, dst: GPUTensor, dst_offset: int, nbytes: int) -> None:
        """Copy bytes between tensors, in the step's command stream (offsets, sizes: multiples of 4)."""
        if nbytes <= 0:
            return
        if (src_offset | dst_offset | nbytes) % 4:
            raise WebGPUError(
                f"device copies move whole words: offsets {src_offset}, {dst_offset}, size {nbytes}"
            )
        if src.buffer is dst.buffer:  # WebGPU never copies within one buffer: bounce through another
            bounce = self.alloc((nbytes,), "uint8")
            self.copy(src, src_offset, bounce, 0, nbytes)
            self.copy(bounce, 0, dst, dst_offset, nbytes)
            return
        self._commands.append(
            ("move", src.buffer, src.offset + src_offset, dst.buffer, dst.offset + dst_offset, nbytes)
        )

    # -- recording
    def record_dispatch(
        self,
        pipeline: Pipeline,
        resources: list[tuple[Any, int, int]],
        uniforms: Sequence[int],
        grid: tuple[int, int, int],
    ) -> None:
        slot = None
        if pipeline.uniforms:
            slot = len(self._uniforms)
            row = np.zeros(MAX_UNIFORMS, np.int32)
            row[: len(uniforms)] = uniforms
            self._uniforms.append(row)
        self._commands.append(("dispatch", pipeline, tuple(resources), slot, grid))
        self.stats["dispatches"] += 1

    def dummy(self) -> Any:
        if self._dummy is None:
            self._dummy = self.device.create_buffer(size=256, usage=self._usage)
        return self._dummy

    # -- submission
    def flush(self, readbacks: Sequence[GPUTensor] = ()) -> list[np.ndarray]:
        """Encode everything recorded (and copies of `readbacks` to mappable buffers) into one
        command buffer, submit it, and return the read-back arrays."""
        if not self._commands and not readbacks:
            return []
        wgpu = self.wgpu
        start = time.perf_counter()
        self._write_arenas()
        encoder = self.device.create_command_encoder()
        cpass = current = None
        for cmd in self._commands:
            if cmd[0] == "dispatch":
                _, pipeline, resources, slot, grid = cmd
                if cpass is None:
                    cpass, current = encoder.begin_compute_pass(), None
                if pipeline is not current:  # a layer's kernels repeat: runs of one pipeline are common
                    cpass.set_pipeline(pipeline.pipeline)
                    current = pipeline
                offsets = [] if slot is None else [slot * UNIFORM_SLOT]
                cpass.set_bind_group(0, self._bind_group(pipeline, resources), offsets)
                cpass.dispatch_workgroups(*grid)
            else:
                if cpass is not None:
                    cpass.end()
                    cpass = None
                if cmd[0] == "copy":  # an upload from the staging arena
                    _, offset, tensor, size = cmd
                    encoder.copy_buffer_to_buffer(
                        self._upload_arena, offset, tensor.buffer, tensor.offset, size
                    )
                else:
                    encoder.copy_buffer_to_buffer(*cmd[1:])
        if cpass is not None:
            cpass.end()
        reads = []
        for t in readbacks:
            size = max(4, -(-t.nbytes // 4) * 4)
            rb = self._read_buffer(size)
            encoder.copy_buffer_to_buffer(t.buffer, t.offset, rb, 0, size)
            reads.append((t, rb, size))
        self.queue.submit([encoder.finish()])
        submitted = time.perf_counter()
        self.timing["encode_s"] += submitted - start
        self.stats["submissions"] += 1
        self._allocs = 0
        self._commands.clear()
        self._uniforms.clear()
        self._staging = bytearray()
        out = []
        for t, rb, size in reads:
            rb.map_sync(wgpu.MapMode.READ)
            raw = np.frombuffer(rb.read_mapped(), dtype=np.uint8)[: t.nbytes].copy()
            rb.unmap()
            self._read_buffers.setdefault(size, []).append(rb)
            out.append(raw.view(t.dtype).reshape(t.shape))
            self.stats["readbacks"] += 1
        self.timing["wait_s"] += time.perf_counter() - submitted
        return out

    def to_host(self, value: Any) -> Any:
        """Host copies of the device tensors in `value` (a tensor or a tuple): one submission."""
        tensors: list[GPUTensor] = []
        _collect(value, tensors)
        if not tensors:
            return value
        return _rebuild(value, iter(self.flush(tensors)))

    def _read_buffer(self, size: int) -> Any:
        pool = self._read_buffers.get(size)
        if pool:
            return pool.pop()
        wgpu = self.wgpu
        return self.device.create_buffer(
            size=size, usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST
        )

    def _write_arenas(self) -> None:
        wgpu = self.wgpu
        if self._uniforms:
            data = np.concatenate(self._uniforms).tobytes()
            if len(data) > self._uniform_capacity:
                cap = max(len(data), 2 * self._uniform_capacity, 64 * UNIFORM_SLOT)
                self._uniform_arena = self.device.create_buffer(
                    size=cap, usage=wgpu.BufferUsage.UNIFORM | wgpu.BufferUsage.COPY_DST
                )
                self._uniform_capacity = cap
                self._bind_groups.clear()  # they bound the old arena
            self.queue.write_buffer(self._uniform_arena, 0, data)
        if self._staging:
            if len(self._staging) > self._upload_capacity:
                cap = max(len(self._staging), 2 * self._upload_capacity, 1 << 16)
                self._upload_arena = self.device.create_buffer(
                    size=cap, usage=wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
                )
                self._upload_capacity = cap
            self.queue.write_buffer(self._upload_arena, 0, bytes(self._staging))

    def _bind_group(self, pipeline: Pipeline, resources: tuple[tuple[Any, int, int], ...]) -> Any:
        key = (id(pipeline), tuple((id(b), o, s) for b, o, s in resources))
        hit = self._bind_groups.get(key)
        if hit is not None:
            self._bind_groups.move_to_end(key)
            return hit[0]
        entries = []
        binding = 0
        if pipeline.uniforms:
            size = -(-4 * len(pipeline.uniforms) // 16) * 16
            entries.append(
                {"binding": 0, "resource": {"buffer": self._uniform_arena, "offset": 0, "size": size}}
            )
        for buffer, offset, size in resources:
            binding += 1
            entries.append(
                {"binding": binding, "resource": {"buffer": buffer, "offset": offset, "size": size}}
            )
        group = self.device.create_bind_group(layout=pipeline.layout, entries=entries)
        self.stats["bind_groups"] += 1
        # the value keeps the buffers alive, so their ids in the key stay theirs
        self._bind_groups[key] = (group, [r[0] for r in resources])
        if len(self._bind_groups) > BIND_GROUP_CACHE:
            self._bind_groups.popitem(last=False)
        return group

    # -- externs
    def adapt_extern(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The device's version of a library function: its own when it has one (the KV cache's),
        else the host function over host copies (counted in `stats["host_fallbacks"]`)."""
        from llm_deploy.targets.webgpu.externs import GPU_EXTERNS

        if name in GPU_EXTERNS:
            return GPU_EXTERNS[name](self)

        def on_host(*args: Any) -> None:
            host = [self.to_host(a) if isinstance(a, GPUTensor) else a for a in args]
            host = [a.copy() if isinstance(a, np.ndarray) else a for a in host]
            fn(*host)
            self.stats["host_fallbacks"] += 1
            for a, h in zip(args, host):
                if isinstance(a, GPUTensor):
                    self.write(a, h)

        return on_host


def _collect(value: Any, out: list[GPUTensor]) -> None:
    # Module-level (not a closure calling itself): a self-referencing closure is a reference
    # cycle that would keep the step's tensors, and their pooled buffers, alive until a GC.
    if isinstance(value, GPUTensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for x in value:
            _collect(x, out)


def _rebuild(value: Any, arrays: Any) -> Any:
    if isinstance(value, GPUTensor):
        return next(arrays)
    if isinstance(value, (tuple, list)):
        return type(value)(_rebuild(x, arrays) for x in value)
    return value


# ---------------------------------------------------------------------------------------------
# Kernels


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


class KernelModule:
    """Kernels of one build. Pipelines are created on the module's device at first call."""

    def __init__(self, specs: Sequence[Mapping[str, Any]], device: WebGPUDevice | None = None):
        self.specs = list(specs)
        self._device = device
        self.kernels = {s["name"]: Kernel(s, self) for s in self.specs}

    @property
    def device(self) -> WebGPUDevice:
        if self._device is None:
            self._device = default_device()
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
