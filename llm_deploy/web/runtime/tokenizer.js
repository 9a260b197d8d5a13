// Text <-> token ids in the page, from the artifact's tokenizer.json and tokenizer_config.json,
// with Hugging Face's own JS ports (vendored in ../vendor: no network): @huggingface/tokenizers
// for the tokenizer, @huggingface/jinja for the chat template. Mirrors
// llm_deploy/models/tokenizer.py: the template writes its own special tokens, so a rendered
// prompt is encoded without adding any.

import { Tokenizer as HFTokenizer } from "../vendor/tokenizers.mjs";
import { Template } from "../vendor/jinja.mjs";

const SPECIAL = ["bos_token", "eos_token", "unk_token", "pad_token"];
const tokenText = (t) => (t && typeof t === "object" ? t.content : t);

export class Tokenizer {
  constructor(tokenizerJson, tokenizerConfig = {}) {
    this.backend = new HFTokenizer(tokenizerJson, tokenizerConfig);
    this.special = {};
    for (const k of SPECIAL) if (tokenizerConfig[k] != null) this.special[k] = tokenText(tokenizerConfig[k]);
    this.chatTemplate = typeof tokenizerConfig.chat_template === "string" ? tokenizerConfig.chat_template : null;
    this._template = null;
  }

  encode(text, addSpecialTokens = true) {
    return this.backend.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  decode(ids, skipSpecialTokens = false) {
    if (!ids.length) return ""; // the library refuses an empty list
    return this.backend.decode(ids, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
  }

  renderChat(messages, addGenerationPrompt = true) {
    if (this.chatTemplate === null) throw new Error("the artifact's tokenizer_config.json has no chat_template");
    this._template ||= new Template(this.chatTemplate);
    return this._template.render({
      ...this.special,
      tools: null,
      documents: null,
      messages: messages.map((m) => ({ ...m })),
      add_generation_prompt: addGenerationPrompt,
    });
  }

  applyChatTemplate(messages, addGenerationPrompt = true) {
    return this.encode(this.renderChat(messages, addGenerationPrompt), false);
  }
}
