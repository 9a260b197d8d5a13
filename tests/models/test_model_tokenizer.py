"""Tokenizers from tokenizer.json, GGUF metadata and the built-in byte level; chat templates as
transformers renders them."""

from __future__ import annotations

import dataclasses
import json
import re

import jinja2
import numpy as np
import pytest

from llm_deploy.models import Tokenizer, TokenizerError, load_tokenizer
from llm_deploy.models.tokenizer import _bytes_to_unicode

from .model_files import write_gguf

TEXTS = [
    "Hello world",
    "I'm 😀 你好世界 こんにちは 한국어",
    " 12345 abc 3.14 don't WON'T",
    "  leading\n\n\ttabs  \r\n",
    "naïve café Ω≈ç√ 🧑‍🚀👍🏽",
    "def f(x):\n    return x**2  # ok",
    "x<|im_start|>y<|im_end|>",
    "",
]


def test_byte_level_tokenizer(tiny_config):
    tok = Tokenizer.byte_level(tiny_config)
    assert tok.vocab_size == tiny_config.vocab_size == 259
    for text in TEXTS:
        ids = tok.encode(text)
        specials = {"<|im_start|>": [1], "<|im_end|>": [2]}
        parts = re.split(r"(<\|im_start\|>|<\|im_end\|>)", text)
        assert ids == [i for p in parts for i in specials.get(p, [3 + b for b in p.encode()])]
        assert tok.decode(ids) == text
    assert tok.stop_token_ids == (2,)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == [1, *(3 + b for b in b"user\nhi"), 2, 3 + 10, 1, *(3 + b for b in b"assistant\n")]


def test_saved_tokenizer_is_the_same_under_transformers(tmp_path, tiny_config):
    from transformers import AutoTokenizer

    ours = Tokenizer.byte_level(tiny_config)
    ours.save(tmp_path)
    again = load_tokenizer(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où est 東京?"}]
    for text in TEXTS:
        assert again.encode(text) == hf.encode(text) == ours.encode(text)
    assert (
        again.apply_chat_template(chat)
        == hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)["input_ids"]
    )


# A template exercising what transformers' Jinja setup adds: trim/lstrip blocks, loop controls,
# tojson keeping non-ASCII, namespace, special-token variables, raise_exception, {% generation %}.
TEMPLATE = """{{ bos_token }}
{% set ns = namespace(count=0) %}
{% for message in messages %}
    {% if message['role'] == 'skip' %}{% continue %}{% endif %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {% set ns.count = ns.count + 1 %}
<|im_start|>{{ message['role'] }} {{ ns.count }}
{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{% endgeneration %}{% else %}{{ message['content'] }}{% endif %}
{{ eos_token }}
    {% if loop.index == 3 %}{% break %}{% endif %}
{% endfor %}
{% if tools %}{{ tools | tojson }}{% endif %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_chat_template_renders_as_transformers_does(tmp_path, tiny_config):
    from transformers import AutoTokenizer

    Tokenizer.byte_level(tiny_config).save(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(TEMPLATE)
    ours, hf = load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    chat = [
        {"role": "system", "content": "sys"},
        {"role": "skip", "content": "ignored"},
        {"role": "user", "content": "héllo 世界"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "never shown"},
    ]
    tools = [{"name": "météo", "parameters": {"ville": "Zürich"}}]
    for kwargs in ({}, {"tools": tools}):
        for gen in (True, False):
            expected = hf.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False, **kwargs)
            assert ours.render_chat(chat, add_generation_prompt=gen, **kwargs) == expected
    assert "Zürich" in ours.render_chat(chat, tools=tools)
    with pytest.raises(jinja2.TemplateError, match="unknown role tool"):
        ours.render_chat([{"role": "tool", "content": "x"}])


def test_chat_template_sources_and_precedence(tmp_path, tiny_config):
    Tokenizer.byte_level(tiny_config).save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "default", "template": "A{{ messages[0]['content'] }}"},
        {"name": "x", "template": "X"},
    ]
    config["bos_token"] = {"content": "<|im_start|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    msgs = [{"role": "user", "content": "1"}]
    assert load_tokenizer(tmp_path).render_chat(msgs) == "A1"
    assert load_tokenizer(tmp_path).special_tokens["bos_token"] == "<|im_start|>"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "B{{ bos_token }}"}))
    assert load_tokenizer(tmp_path).render_chat(msgs) == "B<|im_start|>"
    (tmp_path / "chat_template.jinja").write_text("C")
    assert load_tokenizer(tmp_path).render_chat(msgs) == "C"


# --- GGUF vocabularies other than the default model's, against transformers' GGUF tokenizer ---------


def _spm_vocab():
    """A small sentencepiece vocabulary: specials, the 256 byte tokens, then scored pieces."""
    pieces = [
        "▁",
        "e",
        "h",
        "l",
        "o",
        "t",
        "w",
        "r",
        "d",
        "a",
        "n",
        "▁t",
        "he",
        "▁the",
        "ll",
        "llo",
        "▁w",
        "or",
        "▁wor",
        "ld",
        "▁a",
        "an",
        "▁an",
        "d▁",
    ]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]
    scores = [0.0, 0.0, 0.0, *[0.0] * 256, *(-float(i) for i in range(len(pieces)))]
    return tokens, types, scores


def _bpe_vocab():
    """A small byte-level vocabulary with merges, Llama 3 style."""
    spell = _bytes_to_unicode()
    base = [spell[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "l l", "ll o", "Ġ w", "o r", "Ġw or", "1 2", "12 3", "' s", "Ċ Ċ"]
    tokens = [*base, *(m.replace(" ", "") for m in merges), "<|begin_of_text|>", "<|eot_id|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    return tokens, types, merges


SPM_TEXTS = ["hello world", "the  and the", " leading and trailing ", "wörld 😀\nnew line", "<s>the</s>"]
BPE_TEXTS = [
    "the world's 12345 1234",
    "hello\n\n\nworld",
    "  spaces   ",
    "<|begin_of_text|>the<|eot_id|>",
    "tschüß 東京",
]


@pytest.mark.parametrize("kind", ["llama", "llama-bpe"])
@pytest.mark.parametrize("add_bos", [False, True])
def test_gguf_vocabularies_match_transformers(tmp_path, tiny_config, tiny_weights, kind, add_bos):
    from transformers import AutoTokenizer

    if kind == "llama":
        tokens, types, scores = _spm_vocab()
        file_args = dict(tokenizer_model="llama", scores=scores, pre="default")
        texts = SPM_TEXTS
    else:
        tokens, types, merges = _bpe_vocab()
        file_args = dict(tokenizer_model="gpt2", merges=merges, pre="llama-bpe")
        texts = BPE_TEXTS
    bos = tokens.index("<s>" if kind == "llama" else "<|begin_of_text|>")
    config = dataclasses.replace(tiny_config, vocab_size=len(tokens), bos_token_id=bos)
    weights = {k: tiny_weights[k] for k in tiny_weights if k not in ("embed_tokens", "lm_head")}
    weights |= {k: np.zeros((len(tokens), 64), np.float32) for k in ("embed_tokens", "lm_head")}
    path = write_gguf(
        tmp_path / "v.gguf", config, weights, tokens=tokens, token_types=types, add_bos=add_bos, **file_args
    )
    ours = load_tokenizer(path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in texts:
        assert ours.encode(text) == hf.encode(text), text
        assert ours.decode(ours.encode(text)) == hf.decode(hf.encode(text)), text
    assert (ours.encode("the")[0] == bos) == add_bos


def test_unsupported_gguf_tokenizer_and_missing_files_are_named(tmp_path, tiny_config, tiny_weights):
    path = write_gguf(tmp_path / "b.gguf", tiny_config, tiny_weights, tokenizer_model="bert")
    with pytest.raises(
        TokenizerError,
        match=re.escape(f"{path}: tokenizer.ggml.model is 'bert'; supported: ['gpt2', 'llama']"),
    ):
        load_tokenizer(path)
    with pytest.raises(TokenizerError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path)
    plain = write_gguf(tmp_path / "c.gguf", tiny_config, tiny_weights)
    with pytest.raises(TokenizerError, match=re.escape(f"{plain} has no chat template")):
        load_tokenizer(plain).render_chat([])
