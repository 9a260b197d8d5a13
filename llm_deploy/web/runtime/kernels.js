// WebGPU kernels in the page: each shader of kernels.wgsl compiled into a pipeline once, and a
// kernel call that checks its arguments, binds the symbolic dims and records the host plan's
// dispatches (the browser twin of llm_deploy/targets/webgpu/kernels.py; the plan format is
// written by targets/webgpu/codegen.py).

import { compileExpr } from "./symbolic.js";
import { MAX_UNIFORMS, Tensor, WebGPUError, wordBytes } from "./device.js";

const KERNELS_FORMAT = "llm_deploy.webgpu_kernels/1";
let nextPipeline = 1;

class Pipeline {
  constructor(kernel, index, shader) {
    this.id = nextPipeline++;
    this.kernel = kernel;
    this.index = index;
    this.shader = shader;
    this.uniforms = shader.uniforms;
  }

  /** Check the shader against the device's limits, then compile it (asynchronously). */
  async create(device, code) {
    const { shader, kernel, index } = this;
    const lim = device.limits;
    if (this.uniforms.length > MAX_UNIFORMS) throw new WebGPUError(`kernel ${kernel}: ${this.uniforms.length} dims exceed the ${MAX_UNIFORMS} a dispatch may pass`);
    const wg = shader.workgroup;
    if (wg[0] > lim.maxComputeWorkgroupSizeX || wg[1] > lim.maxComputeWorkgroupSizeY || wg[2] > lim.maxComputeWorkgroupSizeZ || wg[0] * wg[1] * wg[2] > lim.maxComputeInvocationsPerWorkgroup) {
      throw new WebGPUError(`kernel ${kernel}: workgroup size (${wg}) exceeds this adapter's limits (maxComputeInvocationsPerWorkgroup ${lim.maxComputeInvocationsPerWorkgroup})`);
    }
    const storage = shader.bindings.reduce((s, b) => s + b.chunks, 0) + (shader.merged.length ? 1 : 0);
    if (storage > lim.maxStorageBuffersPerShaderStage) {
      throw new WebGPUError(`kernel ${kernel}: ${storage} storage buffers exceed this adapter's ${lim.maxStorageBuffersPerShaderStage} per shader stage`);
    }
    const entries = [];
    const visibility = GPUShaderStage.COMPUTE;
    if (this.uniforms.length) entries.push({ binding: 0, visibility, buffer: { type: "uniform", hasDynamicOffset: true } });
    let binding = 0;
    for (const b of shader.bindings) {
      for (let c = 0; c < b.chunks; c++) entries.push({ binding: ++binding, visibility, buffer: { type: b.writable ? "storage" : "read-only-storage" } });
    }
    if (shader.merged.length) entries.push({ binding: ++binding, visibility, buffer: { type: "read-only-storage" } });
    const gpu = device.device;
    const module = gpu.createShaderModule({ code, label: `${kernel}#${index}` });
    this.layout = gpu.createBindGroupLayout({ entries });
    try {
      this.pipeline = await gpu.createComputePipelineAsync({
        layout: gpu.createPipelineLayout({ bindGroupLayouts: [this.layout] }),
        compute: { module, entryPoint: "main" },
      });
    } catch (e) {
      const info = await module.getCompilationInfo();
      const messages = info.messages.map((m) => `${m.type} at ${m.lineNum}:${m.linePos}: ${m.message}`).join("\n");
      throw new WebGPUError(`kernel ${kernel}, shader ${index}: the device rejected it: ${e.message}\n${messages}`);
    }
    device.stats.pipelines++;
  }
}

class Kernel {
  constructor(spec, device) {
    this.spec = spec;
    this.name = spec.name;
    this.device = device;
    this.params = spec.signature.params;
    this.dims = this.params.map((p) => (p.kind === "buffer" ? p.shape.map((d) => [d, compileExpr(d)]) : null));
    this.plan = compilePlan(spec.plan);
    this.grids = spec.shaders.map((s) => s.grid.map(compileExpr));
    this.pipelines = spec.shaders.map((s, i) => new Pipeline(spec.name, i, s));
    this.resolved = new Map(); // argument shapes -> the plan's steps for them
  }

  /** Record the kernel's dispatches for `args` (tensors and ints, in parameter order). */
  call(args) {
    if (args.length !== this.params.length) throw new WebGPUError(`kernel ${this.name} takes ${this.params.length} arguments, got ${args.length}`);
    const bufs = {};
    const key = [];
    this.params.forEach((p, i) => {
      const a = args[i];
      if (p.kind === "buffer") {
        if (!(a instanceof Tensor) || a.dtype !== p.dtype) throw this.badArg(i, a);
        bufs[p.name] = a;
        key.push(a.shape.join("x"));
      } else {
        key.push(String(a));
      }
    });
    // Calls with the shapes of an earlier call (every decode step) replay its resolved plan.
    const k = key.join(",");
    let steps = this.resolved.get(k);
    if (!steps) {
      steps = [];
      this.resolve(this.plan, this.bind(args), steps);
      if (this.resolved.size > 256) this.resolved.clear();
      this.resolved.set(k, steps);
    }
    for (const step of steps) {
      if (step[0] === "alloc") bufs[step[1]] = this.device.alloc(step[2], step[3]);
      else this.dispatch(step, bufs);
    }
  }

  bind(args) {
    const env = {};
    this.params.forEach((p, i) => { if (p.kind === "scalar") env[p.name] = Number(args[i]); });
    this.params.forEach((p, i) => {
      if (p.kind !== "buffer") return;
      if (args[i].shape.length !== p.shape.length) throw this.badArg(i, args[i]);
      p.shape.forEach((d, di) => {
        if (typeof d === "string" && /^[A-Za-z_]\w*$/.test(d) && !(d in env)) env[d] = args[i].shape[di];
      });
    });
    this.params.forEach((p, i) => {
      if (p.kind === "buffer" && this.dims[i].some(([, ev], di) => ev(env) !== args[i].shape[di])) throw this.badArg(i, args[i], env);
    });
    return env;
  }

  resolve(plan, env, out) {
    const limit = this.device.limits.maxComputeWorkgroupsPerDimension;
    for (const op of plan) {
      if (op[0] === "dispatch") {
        const index = op[1];
        const shader = this.spec.shaders[index];
        let grid = this.grids[index].map((g) => g(env));
        if (Math.min(...grid) <= 0) continue;
        if (shader.linear && grid[0] > limit) grid = [limit, Math.ceil(grid[0] / limit), 1];
        if (Math.max(...grid) > limit) throw new WebGPUError(`kernel ${this.name}: grid (${grid}) exceeds ${limit} workgroups per dimension`);
        const values = shader.uniforms.slice(0, shader.uniforms.length - shader.merged.length).map((u) => env[u]);
        out.push(["dispatch", this.pipelines[index], shader, grid, values]);
      } else if (op[0] === "alloc") {
        out.push(["alloc", op[1], op[3].map((d) => d(env)), op[2]]);
      } else {
        this.resolve(op[1](env) ? op[2] : op[3], env, out);
      }
    }
  }

  dispatch([, pipeline, shader, grid, values], bufs) {
    const device = this.device;
    const resources = [];
    values = [...values];
    for (const b of shader.bindings) {
      const t = bufs[b.buffer];
      if (b.chunks === 1) {
        if (t.size > device.maxBindingBytes) {
          throw new WebGPUError(`kernel ${this.name}: ${b.buffer} (${t.shape}) takes ${t.size} bytes, more than one storage binding may hold on this adapter (maxStorageBufferBindingSize ${device.maxBindingBytes}); use shorter inputs or a smaller model`);
        }
        resources.push([t.buffer, t.offset, t.size]);
        continue;
      }
      const chunk = b.chunk_words * wordBytes(b.dtype);
      if (chunk > device.maxBindingBytes) {
        throw new WebGPUError(`kernel ${this.name}: ${b.buffer} is bound in chunks of ${chunk} bytes, more than this adapter's storage bindings hold (maxStorageBufferBindingSize ${device.maxBindingBytes}); rebuild with a smaller max_binding_bytes`);
      }
      for (let c = 0; c < b.chunks; c++) {
        const offset = c * chunk;
        const size = Math.min(chunk, t.size - offset);
        resources.push(size > 0 ? [t.buffer, t.offset + offset, size] : [device.dummy(), 0, 256]);
      }
    }
    if (shader.merged.length) {
      // small read-only inputs copied side by side into one binding, read at word offsets
      const parts = shader.merged.map((name) => bufs[name]);
      const sizes = parts.map((t) => Math.ceil(Math.max(t.nbytes, 4) / 256) * 256);
      const merged = device.alloc([sizes.reduce((a, b) => a + b, 0)], "uint8");
      let offset = 0;
      parts.forEach((t, i) => {
        device.copy(t, 0, merged, offset, Math.ceil(t.nbytes / 4) * 4);
        values.push(offset / 4);
        offset += sizes[i];
      });
      resources.push([merged.buffer, merged.offset, merged.size]);
    }
    device.recordDispatch(pipeline, resources, values, grid);
  }

  badArg(i, arg, env) {
    const p = this.params[i];
    const found = arg instanceof Tensor ? `a ${arg.dtype} tensor of shape (${arg.shape})` : typeof arg;
    const where = env ? ` with ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(", ")}` : "";
    return new WebGPUError(`kernel ${this.name}: argument ${i} (${p.name}) must be a ${p.dtype} tensor of shape (${p.shape})${where}, found ${found}`);
  }
}

const COMPARE = { lt: (a, b) => a < b, le: (a, b) => a <= b, eq: (a, b) => a === b, ne: (a, b) => a !== b, gt: (a, b) => a > b, ge: (a, b) => a >= b };

function compileCond(c) {
  const op = c[0];
  if (op in COMPARE) {
    const fn = COMPARE[op], a = compileExpr(c[1]), b = compileExpr(c[2]);
    return (env) => fn(a(env), b(env));
  }
  if (op === "not") {
    const inner = compileCond(c[1]);
    return (env) => !inner(env);
  }
  const x = compileCond(c[1]), y = compileCond(c[2]);
  if (op === "and") return (env) => x(env) && y(env);
  if (op === "or") return (env) => x(env) || y(env);
  throw new WebGPUError(`unknown condition ${JSON.stringify(op)} in a kernel plan`);
}

function compilePlan(plan) {
  return plan.map((op) => {
    switch (op.op) {
      case "dispatch": return ["dispatch", op.shader];
      case "alloc": return ["alloc", op.buffer, op.dtype, op.shape.map(compileExpr)];
      case "if": return ["if", compileCond(op.cond), compilePlan(op.then), compilePlan(op.else)];
      default: throw new WebGPUError(`unknown plan op ${JSON.stringify(op.op)} in kernels.json`);
    }
  });
}

/** The artifact's kernels on `device`, every pipeline created now (a bad shader or a limit
 * shows at load, not mid-reply): {name: (...args) => void}. */
export async function loadKernels({ specs, sources, format }, device, onPipeline = () => {}) {
  if (format !== KERNELS_FORMAT) throw new WebGPUError(`kernels.json: format ${JSON.stringify(format)}, expected ${KERNELS_FORMAT}`);
  const kernels = {};
  const jobs = [];
  for (const spec of specs) {
    const kernel = new Kernel(spec, device);
    kernels[spec.name] = (...args) => kernel.call(args);
    kernel.pipelines.forEach((p, i) => {
      const code = sources[`${spec.name}#${i}`];
      if (code === undefined) throw new WebGPUError(`kernels.wgsl has no shader ${i} of kernel ${spec.name}`);
      jobs.push(p.create(device, code).then(() => onPipeline(p)));
    });
  }
  await Promise.all(jobs);
  return kernels;
}

export function needsF16(specs) {
  return specs.some((k) => k.shaders.some((s) => s.f16));
}
