"""The Vulkan runtime: instance, device, memory, descriptor sets and compute pipelines through the
PyPI `vulkan` binding, with one command buffer per forward step.

    device = default_device()                    # the first Vulkan device (lavapipe on a CPU box)
    module = load("dist/model")                   # kernels.json + kernels.spv, no compiler
    x = device.from_host(array, persistent=True)  # weights: written once
    module["add"](x, y, out)                      # records a dispatch, runs nothing yet
    device.to_host(out)                           # one command buffer, one submission, one wait

The structure is the WebGPU runtime's (its tensors, argument checks and host plans are reused):
kernels record; `flush` (a readback) records every dispatch and copy of the step into one
command buffer with a barrier between dependent commands, submits it and waits on a fence.
Symbolic dims go in push constants. Buffers come from a pool keyed by size class, the k-th
allocation of a step taking the k-th buffer of the last one, so descriptor sets (cached by the
buffers they bind) and pipelines (one per shader, with its subgroup choice specialized) are
reused. Memory is host-visible and stays mapped: readbacks read it after the fence; uploads
during a step are copies from a staging arena in the command stream (a pooled buffer may still
be read by an earlier dispatch of the same step).

Imports nothing from the compiler.
"""

from __future__ import annotations

import json
import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_deploy.runtime.vm import Device
from llm_deploy.targets.webgpu import runtime as wgrt
from llm_deploy.targets.webgpu.dtypes import dtype as device_dtype
from llm_deploy.targets.webgpu.runtime import GPUTensor, KernelCallError, _bucket, _collect, _rebuild

FORMAT = "llm_deploy.vulkan_kernels/1"
DESCRIPTOR_CACHE = 4096
SUBGROUP_SHUFFLE_BIT = 0x10  # VK_SUBGROUP_FEATURE_SHUFFLE_BIT


class VulkanError(RuntimeError):
    """No device, a missing feature, a limit exceeded, a shader the driver rejects."""


_DEFAULT: VulkanDevice | None = None


def default_device() -> VulkanDevice:
    """The process's Vulkan device, created on first use (`LLM_DEPLOY_VULKAN_DEVICE`: its index;
    `LLM_DEPLOY_VULKAN_SUBGROUPS=0`: never use subgroup operations)."""
    global _DEFAULT
    if _DEFAULT is None:
        index = int(os.environ.get("LLM_DEPLOY_VULKAN_DEVICE", "0"))
        subgroups = os.environ.get("LLM_DEPLOY_VULKAN_SUBGROUPS", "1") != "0"
        _DEFAULT = VulkanDevice(index, subgroups=subgroups)
    return _DEFAULT


class _Buffer:
    """A VkBuffer with its own host-visible memory, mapped for the buffer's life."""

    __slots__ = ("handle", "memory", "size", "host", "__weakref__")

    def __init__(self, handle: Any, memory: Any, size: int, host: np.ndarray):
        self.handle, self.memory, self.size, self.host = handle, memory, size, host


class VulkanDevice(Device):
    """A Vulkan compute queue with a buffer pool and a recorder of one command buffer per step."""

    def __init__(self, index: int = 0, subgroups: bool = True):
        import vulkan as vk

        super().__init__("vulkan")
        self.vk = vk
        app = vk.VkApplicationInfo(
            sType=vk.VK_STRUCTURE_TYPE_APPLICATION_INFO,
            pApplicationName="llm_deploy",
            applicationVersion=0,
            pEngineName="llm_deploy",
            engineVersion=0,
            apiVersion=vk.VK_MAKE_VERSION(1, 2, 0),
        )
        try:
            self.instance = vk.vkCreateInstance(
                vk.VkInstanceCreateInfo(
                    sType=vk.VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, pApplicationInfo=app
                ),
                None,
            )
            physical = vk.vkEnumeratePhysicalDevices(self.instance)
        except Exception as e:
            raise VulkanError(
                f"no Vulkan driver ({e}); install one, or Mesa's lavapipe (apt mesa-vulkan-drivers libvulkan1)"
            ) from e
        if not 0 <= index < len(physical):
            raise VulkanError(f"Vulkan device {index} requested; {len(physical)} found")
        self.physical = physical[index]
        props = vk.vkGetPhysicalDeviceProperties(self.physical)
        self.device_name = props.deviceName
        lim = props.limits
        self.limits = {
            "max-compute-workgroups-per-dimension": int(lim.maxComputeWorkGroupCount[0]),
            "max-workgroup-size": tuple(int(x) for x in lim.maxComputeWorkGroupSize),
            "max-invocations": int(lim.maxComputeWorkGroupInvocations),
            "max-shared-bytes": int(lim.maxComputeSharedMemorySize),
            "max-storage-buffers": int(lim.maxPerStageDescriptorStorageBuffers),
            "max-storage-buffer-range": int(lim.maxStorageBufferRange),
            "max-push-constants": int(lim.maxPushConstantsSize),
            "offset-alignment": int(lim.minStorageBufferOffsetAlignment),
        }
        # subgroups and 16-bit types, as the device reports them
        sg = vk.VkPhysicalDeviceSubgroupProperties(
            sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES
        )
        vk.vkGetPhysicalDeviceProperties2(
            self.physical,
            vk.VkPhysicalDeviceProperties2(sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, pNext=sg),
        )
        shuffles = bool(sg.supportedOperations & SUBGROUP_SHUFFLE_BIT) and bool(
            sg.supportedStages & vk.VK_SHADER_STAGE_COMPUTE_BIT
        )
        size = int(sg.subgroupSize)
        usable = subgroups and shuffles and size > 1 and size & (size - 1) == 0
        self.subgroup_size = size if usable else 0
        f12 = vk.VkPhysicalDeviceVulkan12Features(
            sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES
        )
        f11 = vk.VkPhysicalDeviceVulkan11Features(
            sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES, pNext=f12
        )
        vk.vkGetPhysicalDeviceFeatures2(
            self.physical,
            vk.VkPhysicalDeviceFeatures2(sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, pNext=f11),
        )
        self.has_f16 = bool(f12.shaderFloat16 and f11.storageBuffer16BitAccess)
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(self.physical)
        family = next((i for i, q in enumerate(families) if q.queueFlags & vk.VK_QUEUE_COMPUTE_BIT), None)
        if family is None:
            raise VulkanError(f"{self.device_name} has no compute queue")
        want12 = vk.VkPhysicalDeviceVulkan12Features(
            sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES, shaderFloat16=int(self.has_f16)
        )
        want11 = vk.VkPhysicalDeviceVulkan11Features(
            sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
            pNext=want12,
            storageBuffer16BitAccess=int(self.has_f16),
        )
        queue_info = vk.VkDeviceQueueCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
            queueFamilyIndex=family,
            queueCount=1,
            pQueuePriorities=[1.0],
        )
        self.device = vk.vkCreateDevice(
            self.physical,
            vk.VkDeviceCreateInfo(
                sType=vk.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                pNext=want11,
                queueCreateInfoCount=1,
                pQueueCreateInfos=[queue_info],
            ),
            None,
        )
        self.queue = vk.vkGetDeviceQueue(self.device, family, 0)
        mem = vk.vkGetPhysicalDeviceMemoryProperties(self.physical)
        host = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        types = [i for i in range(mem.memoryTypeCount) if mem.memoryTypes[i].propertyFlags & host == host]
        if not types:
            raise VulkanError(f"{self.device_name} has no host-visible coherent memory")
        local = [
            i for i in types if mem.memoryTypes[i].propertyFlags & vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT
        ]
        self.memory_type = (local or types)[0]
        self.command_pool = vk.vkCreateCommandPool(
            self.device,
            vk.VkCommandPoolCreateInfo(
                sType=vk.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                queueFamilyIndex=family,
            ),
            None,
        )
        self.command_buffer = vk.vkAllocateCommandBuffers(
            self.device,
            vk.VkCommandBufferAllocateInfo(
                sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                commandPool=self.command_pool,
                level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                commandBufferCount=1,
            ),
        )[0]
        self.fence = vk.vkCreateFence(
            self.device, vk.VkFenceCreateInfo(sType=vk.VK_STRUCTURE_TYPE_FENCE_CREATE_INFO), None
        )
        self.descriptor_pool = vk.vkCreateDescriptorPool(
            self.device,
            vk.VkDescriptorPoolCreateInfo(
                sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                flags=vk.VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT,
                maxSets=DESCRIPTOR_CACHE,
                poolSizeCount=1,
                pPoolSizes=[
                    vk.VkDescriptorPoolSize(
                        type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=DESCRIPTOR_CACHE * 8
                    )
                ],
            ),
            None,
        )
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "submissions",
                "readbacks",
                "dispatches",
                "uploads",
                "pipelines",
                "descriptor_sets",
                "buffers",
                "host_fallbacks",
            ),
            0,
        )
        self._free: dict[int, dict[int, _Buffer]] = {}
        self._allocs = 0
        self._this_step: dict[int, _Buffer] = {}
        self._last_step: dict[int, _Buffer] = {}
        self._commands: list[tuple] = []
        self._staging = bytearray()
        self._upload_arena: _Buffer | None = None
        self._sets: OrderedDict[tuple, tuple] = OrderedDict()
        self._dummy: _Buffer | None = None

    def __repr__(self) -> str:
        return f"VulkanDevice({self.device_name}, subgroup size {self.subgroup_size or 'unused'})"

    @property
    def kv_cache_type(self) -> type:
        from llm_deploy.targets.webgpu.externs import DevicePagedKVCache

        return DevicePagedKVCache

    @property
    def max_binding_bytes(self) -> int:
        return self.limits["max-storage-buffer-range"]

    # -- memory
    def _new_buffer(self, size: int) -> _Buffer:
        vk = self.vk
        usage = (
            vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT
            | vk.VK_BUFFER_USAGE_TRANSFER_SRC_BIT
            | vk.VK_BUFFER_USAGE_TRANSFER_DST_BIT
        )
        handle = vk.vkCreateBuffer(
            self.device,
            vk.VkBufferCreateInfo(
                sType=vk.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                size=size,
                usage=usage,
                sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE,
            ),
            None,
        )
        req = vk.vkGetBufferMemoryRequirements(self.device, handle)
        try:
            memory = vk.vkAllocateMemory(
                self.device,
                vk.VkMemoryAllocateInfo(
                    sType=vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                    allocationSize=req.size,
                    memoryTypeIndex=self.memory_type,
                ),
                None,
            )
        except Exception as e:
            vk.vkDestroyBuffer(self.device, handle, None)
            raise VulkanError(f"{self.device_name}: cannot allocate a buffer of {size} bytes: {e}") from e
        vk.vkBindBufferMemory(self.device, handle, memory, 0)
        host = np.frombuffer(vk.vkMapMemory(self.device, memory, 0, size, 0), dtype=np.uint8)
        self.stats["buffers"] += 1
        buf = _Buffer(handle, memory, size, host)
        weakref.finalize(buf, _destroy, vk, self.device, handle, memory)
        return buf

    def _buffer(self, size: int, fresh: bool = False) -> _Buffer:
        if fresh:
            return self._new_buffer(size)
        k = self._allocs
        self._allocs += 1
        pool = self._free.get(size)
        if pool:
            last = self._last_step.get(k)
            buffer = pool.pop(id(last)) if last is not None and id(last) in pool else pool.popitem()[1]
        else:
            buffer = self._new_buffer(size)
        self._this_step[k] = buffer
        return buffer

    def _release(self, size: int, buffer: _Buffer) -> None:
        self._free.setdefault(size, {})[id(buffer)] = buffer

    def alloc(self, shape: tuple[int, ...], dtype: str, fresh: bool = False) -> GPUTensor:
        """An uninitialized tensor from the pool (back to it when dropped). `fresh`: a new buffer."""
        device_dtype(str(dtype))
        size = _bucket(math.prod(shape) * np.dtype(dtype).itemsize)
        t = GPUTensor(self, shape, dtype, self._buffer(size, fresh), size)
        if not fresh:
            weakref.finalize(t, self._release, size, t.buffer)
        return t

    def alloc_storage(self, nbytes: int) -> GPUTensor:
        size = -(-max(nbytes, 16) // 256) * 256
        return GPUTensor(self, (size,), "uint8", self._buffer(size, fresh=True), size)

    def view(self, storage: GPUTensor, offset: int, shape: tuple[int, ...], dtype: str) -> GPUTensor:
        """A tensor at byte `offset` of `storage` (a fresh buffer when the offset is not aligned
        for a binding)."""
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if offset + nbytes > storage.size_bytes:
            raise VulkanError(
                f"a {dtype} tensor of shape {shape} does not fit its storage of {storage.size_bytes} bytes"
            )
        if offset % 256:
            return self.alloc(shape, dtype)
        size = min(storage.size_bytes - offset, -(-max(nbytes, 4) // 4) * 4)
        return GPUTensor(self, shape, dtype, storage.buffer, size, storage.offset + offset, storage)

    def reshape(self, value: GPUTensor, shape: tuple[int, ...]) -> GPUTensor:
        if math.prod(shape) != value.size:
            raise VulkanError(f"cannot reshape a tensor of shape {value.shape} to {shape}")
        return GPUTensor(
            self, shape, value.dtype.name, value.buffer, value.size_bytes, value.offset, value.base or value
        )

    def from_host(self, array: Any, persistent: bool = False) -> Any:
        """`array` on the device: persistent tensors are written into their mapped memory at once,
        others are copied in the step's command stream. Non-arrays pass through."""
        if isinstance(array, GPUTensor) or not isinstance(array, np.ndarray):
            return array
        t = self.alloc(array.shape, array.dtype.name, fresh=persistent)
        self.write(t, array, immediate=persistent)
        return t

    def write(self, tensor: GPUTensor, array: np.ndarray, immediate: bool = False) -> None:
        if tuple(array.shape) != tensor.shape:
            raise KernelCallError(
                f"cannot write an array of shape {array.shape} into a tensor of shape {tensor.shape}"
            )
        data = np.ascontiguousarray(array, dtype=tensor.dtype).reshape(-1).view(np.uint8)
        if not data.size:
            return
        if immediate:
            tensor.buffer.host[tensor.offset : tensor.offset + data.size] = data
            return
        size = -(-data.size // 4) * 4
        offset = len(self._staging)
        self._staging += data.tobytes()
        self._staging += b"\0" * (-len(self._staging) % 256)
        self._commands.append(("copy", offset, tensor.buffer, tensor.offset, size))
        self.stats["uploads"] += 1

    def copy(self, src: GPUTensor, src_offset: int, dst: GPUTensor, dst_offset: int, nbytes: int) -> None:
        if nbytes <= 0:
            return
        if (src_offset | dst_offset | nbytes) % 4:
            raise VulkanError(
                f"device copies move whole words: offsets {src_offset}, {dst_offset}, size {nbytes}"
            )
        self._commands.append(
            ("move", src.buffer, src.offset + src_offset, dst.buffer, dst.offset + dst_offset, nbytes)
        )

    def dummy(self) -> _Buffer:
        if self._dummy is None:
            self._dummy = self._new_buffer(256)
        return self._dummy

    # -- recording
    def record_dispatch(
        self, pipeline: Pipeline, resources: list[tuple[Any, int, int]], uniforms: Sequence[int], grid: tuple
    ) -> None:
        self._commands.append(("dispatch", pipeline, tuple(resources), tuple(int(u) for u in uniforms), grid))
        self.stats["dispatches"] += 1

    def flush(self, readbacks: Sequence[GPUTensor] = ()) -> list[np.ndarray]:
        """Record everything of the step into the command buffer, submit it, wait, and return
        host copies of `readbacks`."""
        if self._commands:
            self._submit()
        out = []
        for t in readbacks:
            raw = t.buffer.host[t.offset : t.offset + t.nbytes].copy()
            out.append(raw.view(t.dtype).reshape(t.shape))
            self.stats["readbacks"] += 1
        self._last_step, self._this_step, self._allocs = self._this_step, {}, 0
        return out

    def _submit(self) -> None:
        vk = self.vk
        if self._staging:
            if self._upload_arena is None or self._upload_arena.size < len(self._staging):
                cap = max(
                    len(self._staging), 2 * (self._upload_arena.size if self._upload_arena else 0), 1 << 16
                )
                self._upload_arena = self._new_buffer(cap)
            self._upload_arena.host[: len(self._staging)] = np.frombuffer(bytes(self._staging), np.uint8)
        cb = self.command_buffer
        vk.vkResetCommandBuffer(cb, 0)
        vk.vkBeginCommandBuffer(
            cb,
            vk.VkCommandBufferBeginInfo(
                sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
            ),
        )
        compute = vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | vk.VK_PIPELINE_STAGE_TRANSFER_BIT
        barrier = vk.VkMemoryBarrier(
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
            srcAccessMask=vk.VK_ACCESS_SHADER_WRITE_BIT | vk.VK_ACCESS_TRANSFER_WRITE_BIT,
            dstAccessMask=vk.VK_ACCESS_SHADER_READ_BIT
            | vk.VK_ACCESS_SHADER_WRITE_BIT
            | vk.VK_ACCESS_TRANSFER_READ_BIT
            | vk.VK_ACCESS_TRANSFER_WRITE_BIT,
        )
        bind_point = vk.VK_PIPELINE_BIND_POINT_COMPUTE
        for i, cmd in enumerate(self._commands):
            if i:
                vk.vkCmdPipelineBarrier(cb, compute, compute, 0, 1, [barrier], 0, None, 0, None)
            if cmd[0] == "dispatch":
                _, pipeline, resources, uniforms, grid = cmd
                vk.vkCmdBindPipeline(cb, bind_point, pipeline.pipeline)
                vk.vkCmdBindDescriptorSets(
                    cb, bind_point, pipeline.layout, 0, 1, [self._set(pipeline, resources)], 0, None
                )
                if uniforms:
                    data = vk.ffi.new("int32_t[]", list(uniforms))
                    vk.vkCmdPushConstants(
                        cb, pipeline.layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, 4 * len(uniforms), data
                    )
                vk.vkCmdDispatch(cb, *grid)
            elif cmd[0] == "copy":
                _, offset, buffer, dst_offset, size = cmd
                region = vk.VkBufferCopy(srcOffset=offset, dstOffset=dst_offset, size=size)
                vk.vkCmdCopyBuffer(cb, self._upload_arena.handle, buffer.handle, 1, [region])
            else:
                _, src, so, dst, do, size = cmd
                vk.vkCmdCopyBuffer(
                    cb, src.handle, dst.handle, 1, [vk.VkBufferCopy(srcOffset=so, dstOffset=do, size=size)]
                )
        host = vk.VkMemoryBarrier(
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
            srcAccessMask=vk.VK_ACCESS_SHADER_WRITE_BIT | vk.VK_ACCESS_TRANSFER_WRITE_BIT,
            dstAccessMask=vk.VK_ACCESS_HOST_READ_BIT,
        )
        vk.vkCmdPipelineBarrier(cb, compute, vk.VK_PIPELINE_STAGE_HOST_BIT, 0, 1, [host], 0, None, 0, None)
        vk.vkEndCommandBuffer(cb)
        vk.vkQueueSubmit(
            self.queue,
            1,
            [
                vk.VkSubmitInfo(
                    sType=vk.VK_STRUCTURE_TYPE_SUBMIT_INFO, commandBufferCount=1, pCommandBuffers=[cb]
                )
            ],
            self.fence,
        )
        vk.vkWaitForFences(self.device, 1, [self.fence], vk.VK_TRUE, 2**63 - 1)
        vk.vkResetFences(self.device, 1, [self.fence])
        self.stats["submissions"] += 1
        self._commands.clear()
        self._staging = bytearray()

    def _set(self, pipeline: Pipeline, resources: tuple[tuple[Any, int, int], ...]) -> Any:
        key = (id(pipeline), tuple((id(b), o, s) for b, o, s in resources))
        hit = self._sets.get(key)
        if hit is not None:
            self._sets.move_to_end(key)
            return hit[0]
        vk = self.vk
        if len(self._sets) >= DESCRIPTOR_CACHE:
            _, (old, _) = self._sets.popitem(last=False)
            vk.vkFreeDescriptorSets(self.device, self.descriptor_pool, 1, [old])
        info = vk.VkDescriptorSetAllocateInfo(
            sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
            descriptorPool=self.descriptor_pool,
            descriptorSetCount=1,
            pSetLayouts=[pipeline.set_layout],
        )
        try:
            ds = vk.vkAllocateDescriptorSets(self.device, info)[0]
        except (vk.VkErrorOutOfPoolMemory, vk.VkErrorFragmentedPool):
            # sets binding many buffers used up the pool's descriptors: drop the older half
            for _ in range(len(self._sets) // 2):
                _, (old, _) = self._sets.popitem(last=False)
                vk.vkFreeDescriptorSets(self.device, self.descriptor_pool, 1, [old])
            ds = vk.vkAllocateDescriptorSets(self.device, info)[0]
        infos = [vk.VkDescriptorBufferInfo(buffer=b.handle, offset=o, range=s) for b, o, s in resources]
        writes = [
            vk.VkWriteDescriptorSet(
                sType=vk.VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
                dstSet=ds,
                dstBinding=i,
                dstArrayElement=0,
                descriptorCount=1,
                descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                pBufferInfo=[info],
            )
            for i, info in enumerate(infos)
        ]
        if writes:
            vk.vkUpdateDescriptorSets(self.device, len(writes), writes, 0, None)
        self._sets[key] = (ds, [r[0] for r in resources])  # keeps the buffers (and their ids) alive
        self.stats["descriptor_sets"] += 1
        return ds

    def to_host(self, value: Any) -> Any:
        tensors: list[GPUTensor] = []
        _collect(value, tensors)
        if not tensors:
            return value
        return _rebuild(value, iter(self.flush(tensors)))

    def adapt_extern(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The KV cache's device externs (shared with the WebGPU target), else the host function
        over host copies (counted in `stats["host_fallbacks"]`)."""
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


def _destroy(vk: Any, device: Any, handle: Any, memory: Any) -> None:
    try:
        vk.vkDestroyBuffer(device, handle, None)
        vk.vkFreeMemory(device, memory, None)
    except Exception:  # interpreter shutdown: the driver may be gone already
        pass


# ---------------------------------------------------------------------------------------------
# Kernels


class Pipeline:
    """A SPIR-V shader as a compute pipeline (descriptor set layout, push constant range, the
    subgroup path specialized on or off for this device)."""

    def __init__(self, device: VulkanDevice, kernel: str, index: int, shader: Mapping[str, Any]):
        vk = device.vk
        self.uniforms = list(shader["uniforms"])
        lim = device.limits
        if 4 * len(self.uniforms) > lim["max-push-constants"]:
            raise VulkanError(
                f"kernel {kernel}: {len(self.uniforms)} dims exceed this device's push constants"
            )
        if shader["f16"] and not device.has_f16:
            raise VulkanError(
                f"kernel {kernel} computes in float16, which {device.device_name} lacks (shaderFloat16, "
                "storageBuffer16BitAccess); build with a float32 quantization to run on it"
            )
        wg = shader["workgroup"]
        if (
            any(w > m for w, m in zip(wg, lim["max-workgroup-size"]))
            or math.prod(wg) > lim["max-invocations"]
        ):
            raise VulkanError(f"kernel {kernel}: workgroup size {wg} exceeds this device's limits")
        count = sum(b["chunks"] for b in shader["bindings"]) + bool(shader["merged"])
        if count > lim["max-storage-buffers"]:
            raise VulkanError(
                f"kernel {kernel}: {count} storage buffers exceed this device's {lim['max-storage-buffers']}"
            )
        # the subgroup size the shader's butterflies assume (0: the workgroup-memory tree only)
        self.subgroup_size = device.subgroup_size if shader.get("subgroup_lanes") else 0
        self.subgroups = self.subgroup_size > 1
        code = shader["spirv"]
        self.module = vk.vkCreateShaderModule(
            device.device,
            vk.VkShaderModuleCreateInfo(
                sType=vk.VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, codeSize=len(code), pCode=code
            ),
            None,
        )
        bindings = [
            vk.VkDescriptorSetLayoutBinding(
                binding=i,
                descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                descriptorCount=1,
                stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT,
            )
            for i in range(count)
        ]
        self.set_layout = vk.vkCreateDescriptorSetLayout(
            device.device,
            vk.VkDescriptorSetLayoutCreateInfo(
                sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                bindingCount=len(bindings),
                pBindings=bindings or None,
            ),
            None,
        )
        ranges = [
            vk.VkPushConstantRange(
                stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT, offset=0, size=4 * len(self.uniforms)
            )
        ]
        self.layout = vk.vkCreatePipelineLayout(
            device.device,
            vk.VkPipelineLayoutCreateInfo(
                sType=vk.VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                setLayoutCount=1,
                pSetLayouts=[self.set_layout],
                pushConstantRangeCount=1 if self.uniforms else 0,
                pPushConstantRanges=ranges if self.uniforms else None,
            ),
            None,
        )
        spec = None
        if shader.get("subgroup_lanes"):
            self._spec_data = vk.ffi.new("int32_t[]", [self.subgroup_size])
            spec = vk.VkSpecializationInfo(
                mapEntryCount=1,
                pMapEntries=[vk.VkSpecializationMapEntry(constantID=0, offset=0, size=4)],
                dataSize=4,
                pData=self._spec_data,
            )
        stage = vk.VkPipelineShaderStageCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
            stage=vk.VK_SHADER_STAGE_COMPUTE_BIT,
            module=self.module,
            pName="main",
            pSpecializationInfo=spec,
        )
        try:
            self.pipeline = vk.vkCreateComputePipelines(
                device.device,
                None,
                1,
                [
                    vk.VkComputePipelineCreateInfo(
                        sType=vk.VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
                        stage=stage,
                        layout=self.layout,
                    )
                ],
                None,
            )[0]
        except Exception as e:
            raise VulkanError(
                f"kernel {kernel}, shader {index}: the device rejected it: {e}\n{shader.get('glsl', '')}"
            ) from e
        device.stats["pipelines"] += 1


class Kernel(wgrt.Kernel):
    """The WebGPU runtime's kernel (argument checks, dims, host plan, chunked and merged
    bindings) with Vulkan pipelines."""

    def pipelines(self) -> list[Pipeline]:  # type: ignore[override]
        if self._pipelines is None:
            device = self.module.device
            self._pipelines = [Pipeline(device, self.name, i, s) for i, s in enumerate(self.spec["shaders"])]
        return self._pipelines

    def __repr__(self) -> str:
        return f"<vulkan Kernel {self.signature}>"


class KernelModule:
    """Kernels of one build; pipelines are created on the module's device at first call."""

    def __init__(self, specs: Sequence[Mapping[str, Any]], device: VulkanDevice | None = None):
        self.specs = list(specs)
        self._device = device
        self.kernels = {s["name"]: Kernel(s, self) for s in self.specs}

    @property
    def device(self) -> VulkanDevice:
        if self._device is None:
            self._device = default_device()
        return self._device

    def prepare(self) -> KernelModule:
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
        """Every shader's GLSL, each after a `// kernel <name> shader <i>` line."""
        return "\n".join(
            f"// kernel {k['name']} shader {i}\n{s.get('glsl', '')}"
            for k in self.specs
            for i, s in enumerate(k["shaders"])
        )

    def spirv(self) -> list[bytes]:
        return [s["spirv"] for k in self.specs for s in k["shaders"]]

    def save(self, folder: str | Path, stem: str = "kernels") -> None:
        """`<stem>.spv` (every shader's SPIR-V, back to back), `<stem>.comp` (their GLSL, for
        reading) and `<stem>.json` (signatures, bindings, host plans, SPIR-V offsets)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        blob, specs = bytearray(), []
        for k in self.specs:
            shaders = []
            for s in k["shaders"]:
                shaders.append(
                    {
                        **{key: v for key, v in s.items() if key not in ("spirv", "glsl")},
                        "spirv_at": [len(blob), len(s["spirv"])],
                    }
                )
                blob += s["spirv"]
            specs.append({**k, "shaders": shaders})
        (folder / f"{stem}.spv").write_bytes(bytes(blob))
        (folder / f"{stem}.comp").write_text(self.sources())
        (folder / f"{stem}.json").write_text(json.dumps({"format": FORMAT, "kernels": specs}, indent=1))


def load(
    folder: str | Path,
    stem: str = "kernels",
    num_threads: int | None = None,
    device: VulkanDevice | None = None,
) -> KernelModule:
    """Kernels saved by `KernelModule.save` (`num_threads` is the CPU loader's knob, unused)."""
    folder = Path(folder)
    manifest = json.loads((folder / f"{stem}.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder / stem}.json: format {manifest.get('format')!r}, expected {FORMAT!r}")
    blob = (folder / f"{stem}.spv").read_bytes()
    specs = []
    for k in manifest["kernels"]:
        shaders = []
        for s in k["shaders"]:
            at, n = s["spirv_at"]
            if at + n > len(blob):
                raise ValueError(f"{folder / stem}.spv is shorter than kernel {k['name']} needs")
            shaders.append({**s, "spirv": blob[at : at + n]})
        specs.append({**k, "shaders": shaders})
    return KernelModule(specs, device)
