// Loading an artifact folder over HTTP (see llm_deploy/runtime/artifact.py for its layout):
// the JSON files, the WGSL kernels and the weights, with progress, kept in the browser's Cache
// API so a second visit downloads nothing. Entries are keyed by the artifact's version (the
// server's fingerprint of its files): a rebuilt artifact is downloaded again, and the old
// version's entries are dropped.

import { parseSafetensors } from "./safetensors.js";

const CACHE_NAME = "llm_deploy-artifacts";
const JSON_FILES = ["manifest.json", "executable.json", "kernels.json", "chat_config.json", "tokenizer.json", "tokenizer_config.json"];

export class ArtifactError extends Error {}

/**
 * The artifact at `baseUrl` (ending in "/"): {manifest, executable, kernels: {specs, sources},
 * chatConfig, tokenizerJson, tokenizerConfig, params: safetensors tensors, constants, stats}.
 * `onProgress({file, loaded, total, fraction, fromCache})` is called as bytes arrive.
 */
export async function loadArtifact(baseUrl, { version = "", onProgress = () => {}, useCache = true } = {}) {
  const base = new URL(baseUrl, location.href);
  const store = useCache && globalThis.caches ? await openCache(base, version) : null;
  const stats = { downloadedBytes: 0, cachedBytes: 0, files: {}, cacheError: null };
  const sizes = {};
  const report = (file, loaded, total, fromCache) => {
    sizes[file] = { loaded, total };
    const all = Object.values(sizes);
    const sum = (k) => all.reduce((s, x) => s + (x[k] || 0), 0);
    onProgress({ file, loaded, total, fromCache, fraction: sum("total") ? sum("loaded") / sum("total") : 0 });
  };
  const get = (file) => fetchFile(base, file, version, store, report, stats);

  const decoder = new TextDecoder();
  const texts = await Promise.all([...JSON_FILES, "kernels.wgsl"].map(async (f) => decoder.decode(await get(f))));
  const json = {};
  JSON_FILES.forEach((f, i) => {
    try {
      json[f] = JSON.parse(texts[i]);
    } catch (e) {
      throw new ArtifactError(`${base}${f} is not JSON: ${e.message}`);
    }
  });
  const manifest = json["manifest.json"];
  if (manifest.format !== "llm_deploy.artifact/1") {
    throw new ArtifactError(`${base}manifest.json: format ${JSON.stringify(manifest.format)}, expected "llm_deploy.artifact/1"`);
  }
  if (manifest.target !== "webgpu") {
    throw new ArtifactError(`${base} was built for --target ${manifest.target}; the browser runs --target webgpu artifacts (rebuild with --target webgpu)`);
  }
  const executable = json["executable.json"];
  const usesConstants = JSON.stringify(executable.program).includes('"op":"const"');
  const [paramsBytes, constantsBytes] = await Promise.all([
    get("params/params.safetensors"),
    usesConstants ? get("constants.safetensors") : null,
  ]);
  const params = parseSafetensors(paramsBytes.buffer, `${base}params/params.safetensors`);
  for (const name of manifest.params) {
    if (!(name in params)) throw new ArtifactError(`${base}params/params.safetensors: parameter '${name}' is missing`);
  }
  return {
    url: base.href,
    manifest,
    executable,
    kernels: { specs: json["kernels.json"].kernels, format: json["kernels.json"].format, sources: splitSources(texts[JSON_FILES.length]) },
    chatConfig: json["chat_config.json"],
    tokenizerJson: json["tokenizer.json"],
    tokenizerConfig: json["tokenizer_config.json"],
    params,
    constants: constantsBytes ? parseSafetensors(constantsBytes.buffer, `${base}constants.safetensors`) : {},
    stats,
  };
}

async function openCache(base, version) {
  const cache = await caches.open(CACHE_NAME);
  // Drop this artifact's entries of other versions (a rebuilt artifact at the same address).
  for (const request of await cache.keys()) {
    const url = new URL(request.url);
    if (url.href.startsWith(base.href) && url.searchParams.get("v") !== version) await cache.delete(request);
  }
  return cache;
}

async function fetchFile(base, file, version, store, report, stats) {
  const url = new URL(file, base);
  url.searchParams.set("v", version);
  if (store) {
    const hit = await store.match(url.href);
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      stats.cachedBytes += bytes.length;
      stats.files[file] = { bytes: bytes.length, fromCache: true };
      report(file, bytes.length, bytes.length, true);
      return bytes;
    }
  }
  const { bytes, type } = await download(url, (loaded, total) => report(file, loaded, Math.max(total, loaded), false));
  stats.downloadedBytes += bytes.length;
  stats.files[file] = { bytes: bytes.length, fromCache: false };
  if (store) {
    const headers = { "content-type": type || "application/octet-stream", "content-length": String(bytes.length) };
    try {
      await store.put(url.href, new Response(bytes, { headers }));
    } catch (e) {
      // out of quota (a private window, a full disk): the model still runs, downloaded each visit
      stats.cacheError = `${file} was not kept in the browser's cache: ${e.message}`;
    }
  }
  return bytes;
}

/** GET `url` as bytes, reporting progress (XMLHttpRequest: its progress events need no body
 * stream, whose early release Chromium reports as an aborted request). */
function download(url, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("GET", url.href);
    xhr.responseType = "arraybuffer";
    xhr.setRequestHeader("Cache-Control", "no-store");
    xhr.onprogress = (e) => progress(e.loaded, e.lengthComputable ? e.total : 0);
    xhr.onload = () => {
      if (xhr.status !== 200) {
        reject(new ArtifactError(`GET ${url.pathname}: ${xhr.status} ${xhr.statusText} (is this an artifact folder?)`));
        return;
      }
      const bytes = new Uint8Array(xhr.response);
      progress(bytes.length, bytes.length);
      resolve({ bytes, type: xhr.getResponseHeader("content-type") });
    };
    xhr.onerror = () => reject(new ArtifactError(`GET ${url.pathname} failed: the server could not be reached`));
    xhr.send();
  });
}

/** kernels.wgsl: every shader after a `// kernel <name> shader <i>` line -> {"name#i": code}. */
export function splitSources(text) {
  const out = {};
  let key = null;
  let lines = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("// kernel ") && line.includes(" shader ")) {
      if (key !== null) out[key] = lines.join("\n");
      const rest = line.slice("// kernel ".length);
      const at = rest.lastIndexOf(" shader ");
      key = `${rest.slice(0, at)}#${Number(rest.slice(at + " shader ".length))}`;
      lines = [];
    } else {
      lines.push(line);
    }
  }
  if (key !== null) out[key] = lines.join("\n");
  return out;
}
