"""The WebGPU target: tir -> WGSL shaders and host launch plans, run through wgpu.

Compiler side: `llm_deploy.targets.webgpu.codegen.codegen(prim_funcs, WebGPUOptions())`, with the
default GPU schedules of `gpu_rules.py` for programs nobody bound to threads.
Runtime side (compiler-free): `runtime.load`, `runtime.default_device`, `WebGPUDevice`,
`GPUTensor`, `KernelModule`.
"""
