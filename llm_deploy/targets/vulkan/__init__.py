"""The Vulkan target: tir -> GLSL compute shaders -> SPIR-V (glslang), run through Vulkan.

Compiler side: `llm_deploy.targets.vulkan.codegen.codegen(prim_funcs, VulkanOptions())`, with the
WebGPU target's default GPU schedules for programs nobody bound to threads.
Runtime side (compiler-free): `runtime.load`, `runtime.default_device`, `VulkanDevice`,
`KernelModule` (tensors are the WebGPU runtime's `GPUTensor`).
"""
