// Drives the in-browser chat page of `llm-deploy web` in headless Chromium on WebGPU
// (SwiftShader here): waits for the model to load, sends each prompt in a new chat, reads each
// reply's text and token ids from the DOM, then reloads the page (as many times as asked) and
// reads the load figures again. Prints one JSON line.
//     node local_page.mjs URL '{"prompts": ["Hi"], "settings": {"temperature": "0"}, "reloads": 1}'
// Options: "webgpu": false launches without --enable-unsafe-webgpu (no adapter).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, optionsJson] = process.argv.slice(2);
const { prompts = [], settings = {}, reloads = 0, webgpu = true, api = null, timeout = 120000 } = JSON.parse(optionsJson || "{}");
const profile = mkdtempSync(join(tmpdir(), "chromium-profile-"));
const args = [
  "--no-sandbox", "--disable-gpu-sandbox", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-quic",
];
if (webgpu) args.push("--enable-unsafe-webgpu");
const context = await chromium.launchPersistentContext(profile, { executablePath: "/usr/bin/chromium", headless: true, args });
try {
  const page = context.pages()[0] || (await context.newPage());
  const failures = [];
  const consoleErrors = [];
  page.on("pageerror", (e) => failures.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("requestfailed", (r) => failures.push(`request to ${r.url()} failed: ${r.failure()?.errorText} (${loads.length} loads done)`));
  const loads = [];

  async function loaded() {
    await page.waitForSelector("body[data-ready=true], body[data-error=true]", { timeout });
    const body = await page.evaluate(() => ({ ...document.body.dataset }));
    return {
      ready: body.ready === "true",
      seconds: Number(body.loadSeconds), downloadSeconds: Number(body.downloadSeconds), downloadedBytes: Number(body.downloadedBytes), cachedBytes: Number(body.cachedBytes),
      errors: await page.locator(".msg.error").allTextContents(),
    };
  }

  // In the page: the OpenAI-shaped API of the engine the page created (window.llmEngine), as a
  // page embedding it would call it: streamed, then not, then sampled with seeds.
  async function callApi({ messages, max_tokens }) {
    const engine = window.llmEngine;
    engine.resetChat();
    const chunks = [];
    const stream = await engine.chat.completions.create({ messages, stream: true, temperature: 0, max_tokens });
    for await (const chunk of stream) chunks.push(chunk);
    const streamedIds = engine.lastStats.tokenIds;
    // the same request again: the cache holds its prompt, so only the last prompt token runs
    const whole = await engine.chat.completions.create({ messages, temperature: 0, max_tokens });
    const wholeIds = engine.lastStats.tokenIds;
    const sampled = [];
    for (const seed of [7, 7, 8]) {
      await engine.chat.completions.create({ messages, temperature: 1, top_p: 0.9, seed, max_tokens });
      sampled.push(engine.lastStats.tokenIds);
    }
    return { chunks, streamedIds, whole, wholeIds, sampled };
  }

  await page.goto(url);
  loads.push(await loaded());
  const replies = [];
  const errors = [];
  let apiResult = null;
  if (loads[0].ready) {
    await page.click("#settings summary");
    for (const [id, value] of Object.entries(settings)) await page.fill(`#${id}`, value);
    for (const prompt of prompts) {
      await page.click("#new-chat");
      await page.fill("#input", prompt);
      await page.press("#input", "Enter");
      await page.waitForSelector(".msg.assistant[data-state=done]", { timeout });
      const reply = page.locator(".msg.assistant").first();
      const data = await reply.evaluate((el) => ({ ...el.dataset }));
      replies.push({
        text: await reply.locator(".content").textContent(),
        tokens: data.tokens ? JSON.parse(data.tokens) : null,
        promptTokens: data.promptTokens ? JSON.parse(data.promptTokens) : null,
        finish: data.finish || null,
        decodeTps: Number(data.decodeTps), prefillTps: Number(data.prefillTps),
      });
    }
    if (api) apiResult = await page.evaluate(callApi, api);
    errors.push(...(await page.locator(".msg.error").allTextContents()));
    for (let i = 0; i < reloads; i++) {
      await page.reload();
      loads.push(await loaded());
    }
  }
  const model = await page.textContent("#model");
  errors.push(...(await page.locator(".msg.error").allTextContents()));
  console.log(JSON.stringify({ model, loads, replies, api: apiResult, errors, failures, consoleErrors }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
