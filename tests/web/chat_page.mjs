// Drives the server's chat page in headless Chromium: sends each message given, waits for its
// streamed reply, and prints one JSON line: for each reply, its text, how many times the text
// grew while it streamed, and its finish reason.
//     node chat_page.mjs URL '{"temperature": "0", "max-tokens": "12"}' "first message" "second" ...
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, settingsJson, ...messages] = process.argv.slice(2);
const settings = JSON.parse(settingsJson);
const profile = mkdtempSync(join(tmpdir(), "chromium-profile-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-gpu-sandbox", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
  ],
});
try {
  const page = context.pages()[0] || (await context.newPage());
  const failures = [];
  page.on("pageerror", (e) => failures.push(String(e)));
  page.on("requestfailed", (r) => {
    if (!r.url().startsWith(url)) failures.push(`request to ${r.url()} (not our server)`);
  });
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", { timeout: 30000 });
  await page.click("#settings summary");
  for (const [id, value] of Object.entries(settings)) await page.fill(`#${id}`, value);
  // Count every change of the reply being written: more than one means it streamed.
  await page.evaluate(() => {
    window.growth = [];
    new MutationObserver(() => {
      const last = [...document.querySelectorAll(".msg.assistant .content")].pop();
      if (last) window.growth.push(last.textContent.length);
    }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
  });
  const replies = [];
  for (const [i, message] of messages.entries()) {
    await page.evaluate(() => { window.growth = []; });
    await page.fill("#input", message);
    await page.press("#input", "Enter");
    const reply = page.locator(".msg.assistant").nth(i);
    await page.waitForSelector(`.msg.assistant:nth-of-type(${2 * i + 2})[data-state=done]`, { timeout: 60000 });
    replies.push({
      text: await reply.locator(".content").textContent(),
      updates: new Set(await page.evaluate(() => window.growth)).size,
      finish: await reply.getAttribute("data-finish"),
      meta: await reply.locator(".meta").textContent(),
    });
  }
  const model = await page.textContent("#model");
  const errors = await page.locator(".msg.error").allTextContents();
  console.log(JSON.stringify({ model, replies, errors, failures }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
