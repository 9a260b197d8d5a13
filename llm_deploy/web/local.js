// The chat page of `llm-deploy web`: the model runs here, in the browser, on WebGPU. The server
// only hands out this page and the artifact's files (see runtime/engine.js for the engine and
// its OpenAI-shaped API).

import { createEngine } from "./runtime/engine.js";

const $ = (id) => document.getElementById(id);
const history = [];
let engine = null;

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  div.append(content);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showError(message) {
  addMessage("error", message);
  document.body.dataset.error = "true";
}

function numberField(id, parse) {
  const v = $(id).value.trim();
  return v === "" ? undefined : parse(v);
}

function setBusy(busy) {
  $("new-chat").disabled = busy;
  $("send").disabled = busy;
  $("input").disabled = busy;
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.dataset.state = "streaming";
  const content = reply.querySelector(".content");
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...history] : [...history];
  setBusy(true);
  try {
    const chunks = await engine.chat.completions.create({
      messages, stream: true,
      temperature: numberField("temperature", Number), top_p: numberField("top-p", Number),
      max_tokens: numberField("max-tokens", (v) => parseInt(v, 10)), seed: numberField("seed", (v) => parseInt(v, 10)),
    });
    let finish = null;
    for await (const chunk of chunks) {
      content.textContent += chunk.choices[0].delta.content || "";
      finish = chunk.choices[0].finish_reason || finish;
    }
    const s = engine.lastStats;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${s.completionTokens} tokens · prefill ${s.prefillTps.toFixed(1)} tok/s · decode ${s.decodeTps.toFixed(1)} tok/s · ${finish}`;
    reply.append(meta);
    reply.dataset.finish = finish;
    reply.dataset.tokens = JSON.stringify(s.tokenIds);
    reply.dataset.promptTokens = JSON.stringify(s.promptIds);
    reply.dataset.decodeTps = String(s.decodeTps);
    reply.dataset.prefillTps = String(s.prefillTps);
    history.push({ role: "assistant", content: content.textContent });
  } catch (e) {
    history.pop();
    showError(String(e.message || e));
  } finally {
    reply.dataset.state = "done";
    setBusy(false);
    $("input").focus();
  }
}

async function main() {
  const config = await (await fetch("/web-config.json", { cache: "no-store" })).json();
  $("model").textContent = config.model;
  // ?max-binding-bytes=N checks the build against a device whose storage bindings hold N bytes
  const query = new URLSearchParams(location.search);
  const maxBinding = query.has("max-binding-bytes") ? Number(query.get("max-binding-bytes")) : undefined;
  try {
    engine = await createEngine(config.artifact, {
      version: config.version,
      maxStorageBufferBindingSize: maxBinding,
      onProgress: (p) => {
        $("progress").value = p.fraction;
        $("progress-text").textContent = p.text;
      },
    });
  } catch (e) {
    $("progress-text").textContent = "The model could not be loaded.";
    showError(String(e.message || e));
    return;
  }
  const load = engine.loadStats;
  $("device").textContent = `on ${engine.device.name}`;
  $("status").textContent = `Loaded in ${load.seconds.toFixed(2)} s (${(load.downloadedBytes / 1e6).toFixed(1)} MB downloaded, ${(load.cachedBytes / 1e6).toFixed(1)} MB from the browser's cache). Replies are computed on this computer.`;
  engine.device.lost.then((info) => showError(`The GPU device was lost (${info.reason}): ${info.message}. Reload the page.`));
  if (engine.artifact.stats.cacheError) $("status").textContent += ` (${engine.artifact.stats.cacheError})`;
  document.body.dataset.loadSeconds = String(load.seconds);
  document.body.dataset.downloadSeconds = String(load.downloadSeconds);
  document.body.dataset.downloadedBytes = String(load.downloadedBytes);
  document.body.dataset.cachedBytes = String(load.cachedBytes);
  document.body.dataset.ready = "true";
  setBusy(false);
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || $("send").disabled) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("new-chat").addEventListener("click", () => {
    history.length = 0;
    $("messages").replaceChildren();
    engine.resetChat();
  });
  window.llmEngine = engine; // for the console (and tests)
}

main();
