// The WebGPU device in the page: adapter checks with messages a visitor can act on, tensors in
// GPU buffers, and a recorder that turns a step's dispatches and copies into one submission
// (the browser twin of llm_deploy/targets/webgpu/device.py).
//
// How a step stays cheap, as in the Python device:
// - Nothing is submitted until a readback: every dispatch and copy of a step goes into one
//   command buffer.
// - Each dispatch's symbolic dims take a 256-byte slot of one uniform arena, bound with a
//   dynamic offset and written once per step, so bind groups do not change with the dims.
// - Buffers a step allocates return to a pool (by size) when the step is submitted; the k-th
//   allocation of a size takes the same buffer every step, so bind groups are cached.

export const UNIFORM_SLOT = 256;
export const MAX_UNIFORMS = UNIFORM_SLOT / 4;
export const F16_FEATURE = "shader-f16";
const BIND_GROUP_CACHE = 4096;

export class WebGPUError extends Error {}

export const ITEMSIZE = {
  float32: 4, float16: 2, int32: 4, uint32: 4, int8: 1, uint8: 1, bool: 1, int16: 2, uint16: 2, int64: 8, uint64: 8,
};
export const wordBytes = (dtype) => (dtype === "float16" ? 2 : 4);
const prod = (shape) => shape.reduce((a, b) => a * b, 1);
const ceilTo = (x, m) => Math.ceil(x / m) * m;

// The limits a model needs raised above WebGPU's defaults (asked at the adapter's maximum).
const LIMITS = [
  "maxBufferSize", "maxStorageBufferBindingSize", "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize", "maxComputeInvocationsPerWorkgroup", "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY", "maxComputeWorkgroupSizeZ", "maxComputeWorkgroupsPerDimension",
];

/**
 * A device on the browser's adapter. `needF16`: the build computes in float16 (the adapter must
 * offer shader-f16). `maxBindingBytes`: use at most this much per storage binding (to check a
 * build against a smaller device than this one).
 */
export async function requestDevice({ needF16 = false, maxBindingBytes = Infinity } = {}) {
  if (!globalThis.navigator?.gpu) {
    throw new WebGPUError(
      "WebGPU is not available in this browser (navigator.gpu is missing" +
        (globalThis.isSecureContext === false ? "; the page is not a secure context: open it over https or on localhost" : "") +
        "). Use a recent Chrome, Edge or Safari with WebGPU enabled (on Linux Chromium: --enable-unsafe-webgpu).",
    );
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    throw new WebGPUError(
      "WebGPU is not available: the browser offers no GPU adapter (WebGPU is disabled or the GPU is blocklisted). " +
        "Enable WebGPU (chrome://flags/#enable-unsafe-webgpu, or --enable-unsafe-webgpu on Linux Chromium) or try another browser.",
    );
  }
  const info = adapter.info || {};
  const name = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" ") || "this adapter";
  if (needF16 && !adapter.features.has(F16_FEATURE)) {
    throw new WebGPUError(
      `This model was built to compute in float16, which needs the WebGPU feature '${F16_FEATURE}'; ` +
        `the adapter (${name}) lacks it. Rebuild with float32 (--quantization q0f32 or a *f32* quantization, ` +
        "--kv-dtype float32) to run on this adapter, or use a browser and GPU with shader-f16.",
    );
  }
  const requiredLimits = {};
  for (const key of LIMITS) if (key in adapter.limits) requiredLimits[key] = adapter.limits[key];
  const device = await adapter.requestDevice({
    requiredFeatures: needF16 ? [F16_FEATURE] : [],
    requiredLimits,
  });
  return new Device(adapter, device, name, maxBindingBytes);
}

let nextId = 1;
const ids = new WeakMap();
const idOf = (obj) => {
  let id = ids.get(obj);
  if (id === undefined) ids.set(obj, (id = nextId++));
  return id;
};

/** An n-d array in a device buffer: `size` bytes from `offset` may be bound (>= nbytes). */
export class Tensor {
  constructor(device, shape, dtype, buffer, size, offset = 0) {
    this.device = device;
    this.shape = shape;
    this.dtype = dtype;
    this.buffer = buffer;
    this.size = size;
    this.offset = offset;
  }
  get nbytes() {
    return prod(this.shape) * ITEMSIZE[this.dtype];
  }
}

export class Device {
  constructor(adapter, device, name, maxBindingBytes = Infinity) {
    this.adapter = adapter;
    this.device = device;
    this.name = name;
    this.queue = device.queue;
    this.limits = device.limits;
    this.hasF16 = device.features.has(F16_FEATURE);
    this.maxBindingBytes = Math.min(device.limits.maxStorageBufferBindingSize, maxBindingBytes);
    this.stats = { submissions: 0, dispatches: 0, pipelines: 0, bindGroups: 0, buffers: 0, uploads: 0 };
    this.lost = device.lost.then((e) => e);
    this._usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    this._free = new Map(); // size -> buffers free for a step
    this._stepBuffers = []; // [size, buffer] taken by this step, back to the pool at submission
    this._commands = [];
    this._uniforms = [];
    this._arena = null;
    this._arenaSlots = 0;
    this._bindGroups = new Map();
    this._dummy = null;
  }

  // -- memory
  _create(size, what) {
    if (size > this.limits.maxBufferSize) {
      throw new WebGPUError(`${what} takes ${size} bytes, more than this adapter's maxBufferSize (${this.limits.maxBufferSize}); this GPU cannot hold the model`);
    }
    this.stats.buffers++;
    return this.device.createBuffer({ size, usage: this._usage });
  }

  /** A tensor that lives as long as the page (weights, KV pools), zero-filled. */
  persistent(shape, dtype, what = "a tensor") {
    const size = ceilTo(Math.max(prod(shape) * ITEMSIZE[dtype], 4), 4);
    return new Tensor(this, shape, dtype, this._create(ceilTo(size, 256), what), size);
  }

  /** A tensor for this step only: from the pool, back to it when the step is submitted. */
  alloc(shape, dtype) {
    const size = ceilTo(Math.max(prod(shape) * ITEMSIZE[dtype], 16), 256);
    const pool = this._free.get(size);
    const buffer = pool && pool.length ? pool.shift() : this._create(size, `a ${dtype} tensor of shape (${shape})`);
    this._stepBuffers.push([size, buffer]);
    return new Tensor(this, shape, dtype, buffer, size);
  }

  /** A block planned tensors are views of (the VM allocates it once, then reuses it). */
  allocStorage(nbytes) {
    const size = ceilTo(Math.max(nbytes, 16), 256);
    return new Tensor(this, [size], "uint8", this._create(size, "a planned block"), size);
  }

  /** A tensor at byte `offset` of `storage`; bindings start at multiples of 256, so a tensor
   * planned elsewhere gets a buffer of its own. */
  view(storage, offset, shape, dtype) {
    const nbytes = prod(shape) * ITEMSIZE[dtype];
    if (offset + nbytes > storage.size) {
      throw new WebGPUError(`a ${dtype} tensor of shape (${shape}) does not fit its planned storage of ${storage.size} bytes: the call's sizes exceed the bounds the program was built for (its context window)`);
    }
    if (offset % 256) return this.alloc(shape, dtype);
    const size = Math.min(storage.size - offset, ceilTo(Math.max(nbytes, 4), 4));
    return new Tensor(this, shape, dtype, storage.buffer, size, storage.offset + offset);
  }

  reshape(t, shape) {
    if (prod(shape) !== prod(t.shape)) throw new WebGPUError(`cannot reshape a tensor of shape (${t.shape}) to (${shape})`);
    return new Tensor(this, shape, t.dtype, t.buffer, t.size, t.offset);
  }

  /** Fill `t` from a typed array of its bytes. Written before the step's submission: only for
   * tensors no earlier work of the step reads (fresh step tensors, weights at load). */
  write(t, data) {
    let bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (bytes.length % 4) {
      const padded = new Uint8Array(ceilTo(bytes.length, 4));
      padded.set(bytes);
      bytes = padded;
    }
    if (bytes.length) this.queue.writeBuffer(t.buffer, t.offset, bytes, 0, bytes.length);
    this.stats.uploads++;
  }

  /** Fill `t` from `data` in the step's command stream (after the work recorded so far), for
   * tensors that earlier dispatches of the step may use (planned blocks). */
  writeInStream(t, data) {
    const staging = this.upload([data.byteLength], "uint8", data);
    this.copy(staging, 0, t, 0, ceilTo(data.byteLength, 4));
  }

  /** A step tensor holding `data`. */
  upload(shape, dtype, data) {
    const t = this.alloc(shape, dtype);
    this.write(t, data);
    return t;
  }

  /** Copy bytes between tensors in the step's command stream (multiples of 4). */
  copy(src, srcOffset, dst, dstOffset, nbytes) {
    if (nbytes <= 0) return;
    this._commands.push(["copy", src.buffer, src.offset + srcOffset, dst.buffer, dst.offset + dstOffset, nbytes]);
  }

  dummy() {
    return (this._dummy ||= this._create(256, "a placeholder"));
  }

  // -- recording
  recordDispatch(pipeline, resources, uniforms, grid) {
    let slot = null;
    if (pipeline.uniforms.length) {
      slot = this._uniforms.length;
      this._uniforms.push(uniforms);
    }
    this._commands.push(["dispatch", pipeline, resources, slot, grid]);
    this.stats.dispatches++;
  }

  /** Submit everything recorded as one command buffer; read back `readbacks` (tensors) as typed arrays. */
  async flush(readbacks = []) {
    this._writeArena();
    const encoder = this.device.createCommandEncoder();
    let pass = null;
    let current = null;
    for (const cmd of this._commands) {
      if (cmd[0] === "dispatch") {
        const [, pipeline, resources, slot, grid] = cmd;
        if (!pass) [pass, current] = [encoder.beginComputePass(), null];
        if (pipeline !== current) pass.setPipeline((current = pipeline).pipeline);
        pass.setBindGroup(0, this._bindGroup(pipeline, resources), slot === null ? [] : [slot * UNIFORM_SLOT]);
        pass.dispatchWorkgroups(...grid);
      } else {
        if (pass) [pass, current] = [pass.end(), null];
        encoder.copyBufferToBuffer(...cmd.slice(1));
      }
    }
    if (pass) pass.end();
    const reads = readbacks.map((t) => {
      const size = ceilTo(Math.max(t.nbytes, 4), 4);
      const rb = this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      encoder.copyBufferToBuffer(t.buffer, t.offset, rb, 0, size);
      return [t, rb];
    });
    this.queue.submit([encoder.finish()]);
    this.stats.submissions++;
    this._commands = [];
    this._uniforms = [];
    for (const [size, buffer] of this._stepBuffers) {
      if (!this._free.has(size)) this._free.set(size, []);
      this._free.get(size).push(buffer);
    }
    this._stepBuffers = [];
    return Promise.all(
      reads.map(async ([t, rb]) => {
        await rb.mapAsync(GPUMapMode.READ);
        const bytes = rb.getMappedRange().slice(0, t.nbytes);
        rb.unmap();
        rb.destroy();
        return typedArray(t.dtype, bytes);
      }),
    );
  }

  _writeArena() {
    if (!this._uniforms.length) return;
    if (this._uniforms.length > this._arenaSlots) {
      this._arenaSlots = Math.max(this._uniforms.length, 2 * this._arenaSlots, 64);
      this._arena = this.device.createBuffer({
        size: this._arenaSlots * UNIFORM_SLOT,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      });
      this._bindGroups.clear(); // they bound the old arena
    }
    const data = new Int32Array(this._uniforms.length * MAX_UNIFORMS);
    this._uniforms.forEach((row, i) => data.set(row, i * MAX_UNIFORMS));
    this.queue.writeBuffer(this._arena, 0, data);
  }

  _bindGroup(pipeline, resources) {
    const key = `${pipeline.id}|${resources.map(([b, o, s]) => `${idOf(b)}:${o}:${s}`).join(",")}`;
    let group = this._bindGroups.get(key);
    if (group) return group;
    const entries = [];
    if (pipeline.uniforms.length) {
      entries.push({ binding: 0, resource: { buffer: this._arena, offset: 0, size: ceilTo(4 * pipeline.uniforms.length, 16) } });
    }
    resources.forEach(([buffer, offset, size], i) => entries.push({ binding: i + 1, resource: { buffer, offset, size } }));
    group = this.device.createBindGroup({ layout: pipeline.layout, entries });
    this.stats.bindGroups++;
    if (this._bindGroups.size >= BIND_GROUP_CACHE) this._bindGroups.clear();
    this._bindGroups.set(key, group);
    return group;
  }
}

export function typedArray(dtype, bytes) {
  switch (dtype) {
    case "float32": return new Float32Array(bytes);
    case "int32": return new Int32Array(bytes);
    case "uint32": return new Uint32Array(bytes);
    case "int64": return new BigInt64Array(bytes);
    case "uint64": return new BigUint64Array(bytes);
    case "float16": return new Uint16Array(bytes); // raw halves: see halfToFloat
    case "int16": return new Int16Array(bytes);
    case "uint16": return new Uint16Array(bytes);
    case "int8": return new Int8Array(bytes);
    default: return new Uint8Array(bytes);
  }
}

/** float16 bits -> number. */
export function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}
