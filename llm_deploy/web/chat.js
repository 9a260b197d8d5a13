// The chat page: plain JS over the server's own OpenAI-compatible API (no build step, no assets
// from elsewhere). Replies stream from POST /v1/chat/completions as server-sent events; Stop aborts
// the fetch, and the server cancels the request when the connection closes.

const $ = (id) => document.getElementById(id);
const history = []; // {role, content} turns sent with every request
let model = null;
let controller = null; // the AbortController of the reply being streamed

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function numberField(id, parse) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : parse(raw);
}

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

async function errorText(resp) {
  try {
    const body = await resp.json();
    return body.error ? body.error.message : JSON.stringify(body);
  } catch {
    return `${resp.status} ${resp.statusText}`;
  }
}

// Yields the parsed JSON of each `data:` event until `[DONE]`.
async function* events(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function setBusy(busy) {
  $("send").textContent = busy ? "Stop" : "Send";
  $("input").disabled = busy;
  if (!busy) $("input").focus();
}

async function send(text) {
  const system = $("system").value.trim();
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  const content = reply.querySelector(".content");
  reply.dataset.state = "streaming";
  const body = {
    model,
    messages: system ? [{ role: "system", content: system }, ...history] : history,
    stream: true,
    stream_options: { include_usage: true },
    temperature: numberField("temperature", parseFloat),
    top_p: numberField("top-p", parseFloat),
    max_tokens: numberField("max-tokens", (s) => parseInt(s, 10)),
    seed: numberField("seed", (s) => parseInt(s, 10)),
  };
  controller = new AbortController();
  setBusy(true);
  let usage = null;
  let finish = null;
  let failed = false;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const chunk of events(resp)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        if (choice.delta && choice.delta.content) content.textContent += choice.delta.content;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      reply.scrollIntoView({ block: "end" });
    }
  } catch (err) {
    if (err.name === "AbortError") finish = "stopped";
    else {
      failed = true;
      addMessage("error", String(err.message || err));
    }
  } finally {
    controller = null;
    reply.dataset.state = "done";
    reply.dataset.finish = finish || "";
    if (failed && !content.textContent) history.pop(); // nothing came back: the turn did not happen
    else history.push({ role: "assistant", content: content.textContent });
    const meta = document.createElement("span");
    meta.className = "meta";
    const parts = [];
    if (usage) {
      parts.push(`${usage.completion_tokens} tokens`);
      if (usage.extra) {
        parts.push(`first token ${usage.extra.ttft_s.toFixed(2)} s`);
        parts.push(`${usage.extra.decode_tokens_per_s.toFixed(1)} tokens/s`);
      }
    }
    if (finish && finish !== "stop") parts.push(finish);
    meta.textContent = parts.join(" · ");
    reply.append(meta);
    setBusy(false);
  }
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  if (controller) return controller.abort();
  const text = $("input").value.trim();
  if (!text) return;
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
  if (controller) controller.abort();
  history.length = 0;
  $("messages").replaceChildren();
});

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) throw new Error(await errorText(resp));
    model = (await resp.json()).data[0].id;
    $("model").textContent = model;
    document.body.dataset.ready = "true";
  } catch (err) {
    $("status").textContent = `Could not reach the server: ${err.message}`;
  }
}

$("api-key").addEventListener("change", loadModel);
loadModel();
