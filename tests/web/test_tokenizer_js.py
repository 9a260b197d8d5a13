"""The page's tokenizer (llm_deploy/web/runtime/tokenizer.js over the vendored
@huggingface/tokenizers and @huggingface/jinja, run here under Node: the same module file the
browser loads) against the Python tokenizer, on a table of strings and conversations."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from llm_deploy.models.tokenizer import Tokenizer, load_tokenizer

HERE = Path(__file__).parent
TEXTS = [
    "Hello world",
    "  leading and   inner  spaces\n\ttabs\n\n",
    "I'm sure they'll say we've done it, didn't they?",
    "café naïve façade Ærøskøbing",
    "👋🏽 hi 👨‍👩‍👧 family 🇫🇷 flag 🙂",
    "你好，世界！日本語のテキスト。한국어 텍스트",
    "مرحبا بالعالم",
    "x = [1, 2, 3]; print(f'{x!r}')  # 1234567890",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Be brief 🙂"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "more"},
    ],
]

REFERENCE_PROMPT = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182,
    2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
]  # fmt: skip


def js_tokenize(folder: Path) -> dict:
    request = {"folder": str(folder), "texts": TEXTS, "conversations": CONVERSATIONS}
    proc = subprocess.run(
        ["node", str(HERE / "tokenize.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def check(tokenizer: Tokenizer, folder: Path) -> dict:
    out = js_tokenize(folder)
    for text, js in zip(TEXTS, out["encoded"], strict=True):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert js["ids"] == ids, text
        assert js["withSpecial"] == tokenizer.encode(text), text
        assert js["decoded"] == tokenizer.decode(ids), text
    for messages, js in zip(CONVERSATIONS, out["chats"], strict=True):
        assert js["text"] == tokenizer.render_chat(messages)
        assert js["ids"] == tokenizer.apply_chat_template(messages)
    return out


def test_default_models_tokenizer_in_js_matches_python(smollm2_path, tmp_path):
    tokenizer = load_tokenizer(smollm2_path)  # SmolLM2's byte-level BPE and chat template, from its GGUF
    tokenizer.save(tmp_path)
    out = check(tokenizer, tmp_path)
    # the chat prompt transformers and llama.cpp make of the first conversation (the GGUF's template
    # adds its default system prompt)
    assert out["chats"][0]["ids"] == REFERENCE_PROMPT


def test_tiny_artifacts_tokenizer_in_js_matches_python(tiny_webgpu_artifact):
    check(Tokenizer.from_folder(tiny_webgpu_artifact), tiny_webgpu_artifact)
