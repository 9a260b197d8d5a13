// Runs the page's tokenizer module (llm_deploy/web/runtime/tokenizer.js, the same file the
// browser loads) under Node on a table: reads {"folder", "texts", "conversations"} as JSON on
// stdin and prints, per text, its ids (with and without special tokens) and the decoded text,
// and per conversation, the rendered chat prompt and its ids.
import { readFileSync } from "node:fs";
import { join } from "node:path";

const { Tokenizer } = await import(new URL("../../llm_deploy/web/runtime/tokenizer.js", import.meta.url));
const { folder, texts, conversations } = JSON.parse(readFileSync(0, "utf8"));
const read = (name) => JSON.parse(readFileSync(join(folder, name), "utf8"));
const tokenizer = new Tokenizer(read("tokenizer.json"), read("tokenizer_config.json"));
const encoded = texts.map((t) => {
  const ids = tokenizer.encode(t, false);
  return { ids, withSpecial: tokenizer.encode(t, true), decoded: tokenizer.decode(ids) };
});
const chats = conversations.map((messages) => ({
  text: tokenizer.renderChat(messages),
  ids: tokenizer.applyChatTemplate(messages),
}));
console.log(JSON.stringify({ encoded, chats }));
