// The in-browser engine: loads a webgpu artifact, runs its VM program on the visitor's GPU and
// answers chats through an OpenAI-shaped API, with no server doing inference.
//
//     import { createEngine } from "/web/runtime/engine.js";
//     const engine = await createEngine("/artifact/", { onProgress: (p) => console.log(p) });
//     const chunks = await engine.chat.completions.create({ messages, stream: true });
//     for await (const chunk of chunks) out.textContent += chunk.choices[0].delta.content ?? "";

import { loadArtifact } from "./artifact.js";
import { ITEMSIZE, WebGPUError, halfToFloat, requestDevice } from "./device.js";
import { loadKernels, needsF16 } from "./kernels.js";
import { PagedKVCache, kvExterns } from "./kv_cache.js";
import { generator, sample } from "./sampler.js";
import { Tokenizer } from "./tokenizer.js";
import { VirtualMachine } from "./vm.js";

export { WebGPUError } from "./device.js";

const SEQ = 0; // the page holds one conversation: one sequence in the cache

/**
 * Load the artifact at `artifactUrl` and prepare it on this browser's GPU.
 * Options: `version` (cache key of the artifact's files), `onProgress({phase, fraction, text})`,
 * `useCache` (default true), `maxStorageBufferBindingSize` (check the build against a smaller
 * device than this one).
 */
export async function createEngine(artifactUrl, options = {}) {
  const { onProgress = () => {}, version = "", useCache = true } = options;
  const start = performance.now();
  const mb = (n) => (n / 1e6).toFixed(1);
  const artifact = await loadArtifact(artifactUrl, {
    version,
    useCache,
    onProgress: (p) => onProgress({ phase: "download", fraction: p.fraction, text: `${p.fromCache ? "Reading" : "Downloading"} ${p.file}: ${mb(p.loaded)} / ${mb(p.total)} MB` }),
  });
  const downloaded = performance.now();
  const { manifest, kernels: kernelFiles } = artifact;
  const device = await requestDevice({ needF16: needsF16(kernelFiles.specs), maxBindingBytes: options.maxStorageBufferBindingSize });
  checkSizes(artifact, device);
  onProgress({ phase: "gpu", fraction: 1, text: `Compiling ${kernelFiles.specs.length} kernels for ${device.name}` });
  const kernels = await loadKernels(kernelFiles, device);
  const upload = ({ shape, dtype, bytes }, what) => {
    const t = device.persistent(shape, dtype, what);
    device.write(t, bytes);
    return t;
  };
  const params = manifest.params.map((name) => upload(artifact.params[name], `parameter ${name}`));
  const constants = {};
  for (const [name, t] of Object.entries(artifact.constants)) constants[name] = upload(t, `constant ${name}`);
  const vm = new VirtualMachine(artifact.executable.program, kernels, kvExterns(device), constants, device);
  const engine = new Engine(artifact, device, vm, params);
  await device.queue.onSubmittedWorkDone();
  engine.loadStats = {
    seconds: (performance.now() - start) / 1000,
    downloadSeconds: (downloaded - start) / 1000,
    downloadedBytes: artifact.stats.downloadedBytes,
    cachedBytes: artifact.stats.cachedBytes,
  };
  onProgress({ phase: "ready", fraction: 1, text: `Ready in ${engine.loadStats.seconds.toFixed(1)} s` });
  return engine;
}

/** Every weight and KV pool must fit one storage binding of this adapter: say which does not. */
function checkSizes(artifact, device) {
  const limit = device.maxBindingBytes;
  const advice = "this adapter cannot run this build; use a smaller model or quantization, or a GPU with larger limits";
  for (const name of artifact.manifest.params) {
    const { shape, dtype, bytes } = artifact.params[name];
    if (bytes.length > limit) {
      throw new WebGPUError(`parameter ${name} (${shape} ${dtype}) takes ${bytes.length} bytes, more than one storage binding may hold on this adapter (maxStorageBufferBindingSize ${limit}): ${advice}`);
    }
  }
  const cfg = artifact.manifest.model_config, opts = artifact.manifest.build_options;
  const pages = Math.ceil(opts.context_window / opts.kv_page_size) + 1;
  const pool = pages * opts.kv_page_size * cfg.num_key_value_heads * cfg.head_dim * ITEMSIZE[opts.kv_dtype];
  if (pool > limit) {
    throw new WebGPUError(`a KV cache pool (${pages} pages of ${opts.kv_page_size} tokens) takes ${pool} bytes, more than one storage binding may hold on this adapter (maxStorageBufferBindingSize ${limit}): ${advice}`);
  }
}

export class Engine {
  constructor(artifact, device, vm, params) {
    const cfg = artifact.manifest.model_config, opts = artifact.manifest.build_options;
    Object.assign(this, { artifact, device, vm, params });
    this.model = artifact.manifest.model;
    this.vocabSize = cfg.vocab_size;
    this.contextWindow = opts.context_window;
    this.prefillChunk = opts.prefill_chunk;
    this.stopTokenIds = artifact.chatConfig.stop_token_ids || [];
    this.defaults = artifact.chatConfig.default_sampling || {};
    this.tokenizer = new Tokenizer(artifact.tokenizerJson, artifact.tokenizerConfig);
    this.cache = new PagedKVCache(device, {
      numLayers: cfg.num_hidden_layers, numKvHeads: cfg.num_key_value_heads, headDim: cfg.head_dim,
      pageSize: opts.kv_page_size, numPages: Math.ceil(opts.context_window / opts.kv_page_size) + 1, dtype: opts.kv_dtype,
    });
    this.cache.addSequence(SEQ);
    this.cached = []; // the tokens whose K/V the cache holds
    this.lastStats = null;
    // seconds spent running the VM (recording a step's dispatches) and in submission and readback
    this.timing = { recordSeconds: 0, gpuSeconds: 0, steps: 0 };
    this._queue = Promise.resolve(); // requests run one at a time
    this.chat = { completions: { create: (request) => this._create(request) } };
  }

  /** Forget the conversation held in the cache. */
  resetChat() {
    this.cache.popn(SEQ, this.cached.length);
    this.cached = [];
  }

  // -- forward steps: one submission and one readback each
  async _step(fn, ids, withPositions) {
    const step = this.cache.beginForward([SEQ], [ids.length]);
    try {
      const d = this.device;
      const args = [d.upload([ids.length], "int32", Int32Array.from(ids))];
      if (withPositions) args.push(d.upload([1], "int32", step.lastTokenIndices));
      const t0 = performance.now();
      const logits = this.vm.fn(fn)(...args, this.cache, ...this.params);
      const t1 = performance.now();
      const [raw] = await d.flush([logits]);
      this.timing.recordSeconds += (t1 - t0) / 1000;
      this.timing.gpuSeconds += (performance.now() - t1) / 1000;
      this.timing.steps++;
      this.cache.endForward();
      this.cached.push(...ids);
      return logits.dtype === "float16" ? Float32Array.from(raw, halfToFloat) : raw;
    } catch (e) {
      this.cache.cancelForward();
      throw e;
    }
  }

  /** Logits after the prompt (prefilled in chunks of the build's prefill_chunk), reusing the
   * cached tokens it starts with. */
  async prefill(promptIds) {
    let keep = 0;
    while (keep < this.cached.length && keep < promptIds.length && this.cached[keep] === promptIds[keep]) keep++;
    keep = Math.min(keep, promptIds.length - 1); // at least one token runs, for its logits
    this.cache.popn(SEQ, this.cached.length - keep);
    this.cached.length = keep;
    let row = null;
    for (let s = keep; s < promptIds.length; s += this.prefillChunk) {
      row = await this._step("prefill", promptIds.slice(s, s + this.prefillChunk), true);
    }
    return row;
  }

  async decode(token) {
    return this._step("decode", [token], false);
  }

  /** Token by token: yields {token, text (the new text), finishReason (on the last)}. */
  async *generate(promptIds, params = {}) {
    const p = { ...this.defaults, ...params };
    const temperature = Number(p.temperature ?? 1), top_p = Number(p.top_p ?? 1);
    if (!(temperature >= 0 && temperature <= 2)) throw new RangeError(`temperature must be in [0, 2], got ${p.temperature}`);
    if (!(top_p > 0 && top_p <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${p.top_p}`);
    if (!promptIds.length) throw new RangeError("the prompt is empty: nothing to condition on");
    let maxTokens = Math.min(Number(p.max_tokens || this.contextWindow), this.contextWindow - promptIds.length);
    if (maxTokens < 1) throw new RangeError(`the prompt has ${promptIds.length} tokens; the context window is ${this.contextWindow}`);
    const rng = generator(p.seed);
    const stats = (this.lastStats = { promptTokens: promptIds.length, completionTokens: 0, tokenIds: [], promptIds: [...promptIds], prefillSeconds: 0, decodeSeconds: 0, finishReason: null });
    const t0 = performance.now();
    let logits = await this.prefill(promptIds);
    stats.prefillSeconds = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    const generated = [];
    let shown = "";
    for (;;) {
      const token = sample(logits, { temperature, top_p }, rng);
      stats.tokenIds.push(token);
      stats.completionTokens++;
      const stop = this.stopTokenIds.includes(token);
      if (!stop) generated.push(token);
      const finishReason = stop ? "stop" : generated.length >= maxTokens ? "length" : null;
      let text = this.tokenizer.decode(generated);
      if (!finishReason && text.endsWith("\uFFFD")) text = shown; // a character still incomplete
      const delta = text.slice(shown.length);
      shown = text;
      if (finishReason) {
        stats.decodeSeconds = (performance.now() - t1) / 1000;
        stats.finishReason = finishReason;
        stats.decodeTps = stats.completionTokens > 1 ? (stats.completionTokens - 1) / stats.decodeSeconds : 0;
        stats.prefillTps = stats.promptTokens / stats.prefillSeconds;
        yield { token, text: delta, finishReason };
        return;
      }
      yield { token, text: delta, finishReason: null };
      logits = await this.decode(token);
    }
  }

  // -- the OpenAI-shaped API
  /** Resolves, when every earlier holder has released it, to a function that releases it. */
  _lock() {
    const earlier = this._queue;
    let release;
    this._queue = new Promise((r) => (release = r));
    return earlier.then(() => release);
  }

  async _create(request) {
    const { messages, stream = false, ...params } = request || {};
    if (!Array.isArray(messages) || !messages.length) throw new TypeError("chat.completions.create: `messages` must be a non-empty array of {role, content}");
    const sampling = {};
    for (const k of ["temperature", "top_p", "max_tokens", "seed"]) if (params[k] !== undefined && params[k] !== null) sampling[k] = params[k];
    const promptIds = this.tokenizer.applyChatTemplate(messages);
    const id = `chatcmpl-${Math.random().toString(36).slice(2, 14)}`;
    const created = Math.floor(Date.now() / 1000);
    const chunk = (delta, finishReason, usage) => ({
      id, object: "chat.completion.chunk", created, model: this.model,
      choices: [{ index: 0, delta, finish_reason: finishReason }], ...(usage ? { usage } : {}),
    });
    const usage = (stats) => ({ prompt_tokens: stats.promptTokens, completion_tokens: stats.completionTokens, total_tokens: stats.promptTokens + stats.completionTokens });
    const engine = this;
    // One request at a time (one conversation in the cache): a stream takes the engine when it
    // is first read and gives it back when it ends or its reader stops early.
    async function* chunks() {
      const release = await engine._lock();
      try {
        yield chunk({ role: "assistant", content: "" }, null);
        for await (const step of engine.generate(promptIds, sampling)) {
          if (step.text) yield chunk({ content: step.text }, null);
          if (step.finishReason) yield chunk({}, step.finishReason, usage(engine.lastStats));
        }
      } finally {
        release();
      }
    }
    if (stream) return chunks();
    let content = "", finish = null, last = null;
    for await (const c of chunks()) {
      content += c.choices[0].delta.content || "";
      finish = c.choices[0].finish_reason || finish;
      last = c;
    }
    return {
      id, object: "chat.completion", created, model: this.model,
      choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: finish }], usage: last.usage,
    };
  }
}
