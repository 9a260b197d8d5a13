"""The WebGPU runtime, as the artifact loader and other targets import it: the device
(device.py) and the kernels (kernels.py). Imports nothing from the compiler.
"""

from llm_deploy.targets.webgpu.device import (
    F16_FEATURE,
    MAX_UNIFORMS,
    UNIFORM_SLOT,
    DTypeName,
    GPUTensor,
    KernelCallError,
    WebGPUDevice,
    WebGPUError,
    _bucket,
    _collect,
    _rebuild,
    default_device,
    dtype_name,
    request_device,
)
from llm_deploy.targets.webgpu.kernels import FORMAT, Kernel, KernelModule, Pipeline, load

__all__ = [
    "F16_FEATURE",
    "FORMAT",
    "MAX_UNIFORMS",
    "UNIFORM_SLOT",
    "DTypeName",
    "GPUTensor",
    "Kernel",
    "KernelCallError",
    "KernelModule",
    "Pipeline",
    "WebGPUDevice",
    "WebGPUError",
    "_bucket",
    "_collect",
    "_rebuild",
    "default_device",
    "dtype_name",
    "load",
    "request_device",
]
