"""The WebGPU device: wgpu device selection, tensors kept in GPU buffers, and a recorder that
turns a step's dispatches, uploads and copies into one submission.

    device = default_device()                    # wgpu picks Vulkan, Metal, D3D12 or GL
    x = device.from_host(array, persistent=True)  # weights: uploaded once
    ... kernels record dispatches (kernels.py) ...
    device.to_host(out)                           # one submission, one readback

How a step stays cheap:
- Nothing reaches the GPU until a readback (`to_host`) or `flush`, which encodes every recorded
  dispatch and copy into one command buffer and submits it once.
- Symbolic dims of every dispatch go to one uniform arena, a 256-byte slot per dispatch bound
  with a dynamic offset, written with one `write_buffer` per step: bind groups do not change
  when the dims do.
- Buffers come from a pool keyed by size, the k-th allocation of a step taking the buffer it had
  last time: a step like an earlier one binds the same buffers, so bind groups (cached by the
  buffers they bind) are reused. A buffer freed mid-step may be reused by a later dispatch of
  the same step: all work is in one ordered command stream, and uploads during a step are copies
  in that stream (from a staging arena), never `write_buffer`s that would jump ahead of it.

Imports nothing from the compiler.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_deploy.runtime.vm import Device
from llm_deploy.targets.webgpu.dtypes import dtype as device_dtype

if TYPE_CHECKING:
    from llm_deploy.targets.webgpu.kernels import Pipeline

UNIFORM_SLOT = 256  # bytes per dispatch in the uniform arena: any adapter's offset alignment
MAX_UNIFORMS = UNIFORM_SLOT // 4
F16_FEATURE = "shader-f16"
BIND_GROUP_CACHE = 4096
PLACEMENTS = 1 << 16  # remembered (allocation, size) -> buffer placements


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
