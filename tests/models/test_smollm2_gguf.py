"""The default model's GGUF read through our code equals transformers' GGUF loading."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from llm_deploy.models import checkpoint_names
from llm_deploy.models.weights import _T as T

# Loading transformers' tokenizer and model from the GGUF takes about 40 s in all.
pytestmark = pytest.mark.slow

# FACTS.md: the GGUF's chat template on "What is the capital of France?" (transformers and llama.cpp agree).
CAPITAL_PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407]
CAPITAL_PROMPT += [
    19712,
    8182,
    2,
    198,
    1,
    4093,
    198,
    1780,
    314,
    260,
    3575,
    282,
    4649,
    47,
    2,
    198,
    1,
    520,
    9531,
    198,
]

TEXTS = [
    "Hello world",
    "The capital of France is Paris.",
    " 12345 abc 3.14 1,000,000",
    "I'm 😀 你好世界 こんにちは 한국어 텍스트",
    "🧑‍🚀👍🏽 emoji sequences ✨",
    "naïve café Ω≈ç√",
    "  leading\n\n\ttabs  \r\n",
    "def f(x):\n    return x**2  # ok",
    "don't WON'T it's we'LL",
    "<|im_start|>user\nhi<|im_end|>x<|endoftext|>y",
    "\u00a0\u2003 odd spaces",
    "a" * 300,
    "",
]


def test_rendered_chat_prompt_is_the_37_known_ids(smollm2, hf_smollm2_tokenizer):
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    tok = smollm2.tokenizer
    assert len(CAPITAL_PROMPT) == 37
    assert tok.apply_chat_template(chat) == CAPITAL_PROMPT
    assert tok.render_chat(chat) == hf_smollm2_tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False
    )
    assert tok.stop_token_ids == (2,) and tok.id_to_token(2) == "<|im_end|>"


def test_tokens_equal_transformers(smollm2, hf_smollm2_tokenizer):
    tok = smollm2.tokenizer
    assert tok.vocab_size == len(hf_smollm2_tokenizer) == 49152
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf_smollm2_tokenizer.encode(text), text
        assert tok.decode(ids) == hf_smollm2_tokenizer.decode(ids) == text


def test_numbers_split_as_llama_cpp_splits_them(smollm2, hf_smollm2_tokenizer):
    """Where transformers' GGUF tokenizer is not the model's.

    The GGUF says `tokenizer.ggml.pre = "smollm"`: llama.cpp (and SmolLM2's own tokenizer.json, a
    Digits pre-tokenizer before the byte-level one) isolate every \\p{N} character before the GPT-2
    split. transformers 5 does not know "smollm" and skips that step, which changes the tokens
    wherever whitespace runs or non-ASCII digits meet numbers. We follow the model; the expected
    ids here are transformers' BPE applied to llama.cpp's pieces.
    """
    import regex

    for text in ["X3   18 .", "  the  0?2", "score:   42\n 7", "naïve ١٢٣ ½", "2024\t\t 12"]:
        pieces = [p for p in regex.split(r"(\p{N})", text) if p]
        expected = [i for p in pieces for i in hf_smollm2_tokenizer.encode(p)]
        assert smollm2.tokenizer.encode(text) == expected, text


def test_every_tensor_equals_transformers_dequantized(smollm2, hf_smollm2_model):
    weights = smollm2.weights
    state = hf_smollm2_model.state_dict()
    names = checkpoint_names(weights.config, "hf")
    assert set(weights) == set(names) and "lm_head" not in weights
    for ours, hf in names.items():
        np.testing.assert_array_equal(weights[ours], state[hf].numpy(), err_msg=ours)
    # transformers ties lm_head to the embeddings; our model reuses embed_tokens
    np.testing.assert_array_equal(state["lm_head.weight"].numpy(), weights["embed_tokens"])

    types = Counter(weights.raw(n).ggml_type for n in weights)
    assert types == {T.Q4_1: 210, T.Q8_0: 1, T.F32: 61}
    assert weights.raw("layers.0.q_proj").ggml_type == T.Q4_1  # q/k: quantized *and* permuted in the file
    assert weights.raw("embed_tokens").data.shape == (49152, 576 // 32 * 34)  # Q8_0 blocks, untouched
