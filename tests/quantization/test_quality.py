"""Quality of every format on the default model (SmolLM2-135M-Instruct, Q4_1 + Q8_0 GGUF).

Perplexity is measured on tests/data/perplexity_text.txt: its first 2,048 tokens (the context
window), scored through the model's `score` function in chunks of 256, one sequence whose KV
cache carries the context (llm_deploy/quantization/perplexity.py). float32 (q0f32) is the GGUF
blocks dequantized, so `gguf`, which reads the same blocks in its kernels, must match it.

The q4 formats re-quantize weights that are already 4-bit (Q4_1: 16 asymmetric levels per 32)
onto MLC-LLM's symmetric grid: a second rounding as large as the first. Rounding to nearest
(MLC-LLM's way) measures +49% perplexity on these weights; the build instead chooses codes and
scales by AWQ scaling + GPTQ on all 16 levels the format decodes, each group aimed at the float
model's outputs, on a calibration text (llm_deploy/quantization/calibrated.py, never this file's
text), one calibration for both q4 formats, its knobs chosen on held-out calibration text
(scripts/calibration_validation.py), so this figure stays held out. It measures +7.6% for both
q4 formats (float16 and float32 scales within 0.01 perplexity), under the issue's 10% gate.
test_q4_build_computes_what_transformers_does checks that what is lost is the stored weights',
not the kernels'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm_deploy.quantization.perplexity import perplexity

TEXT = Path(__file__).parent.parent / "data" / "perplexity_text.txt"
FORMATS = ("q0f32", "q0f16", "q8f16_1", "gguf", "q4f16_1", "q4f32_1")
TOKENS, CHUNK = 2048, 256
# relative perplexity increase over float32 allowed per format: the gates (gguf reads the
# same blocks as float32, so it must match)
GATES = {"q0f16": 0.01, "q8f16_1": 0.01, "gguf": 0.001, "q4f16_1": 0.10, "q4f32_1": 0.10}


def text_ids(tokenizer) -> list[int]:
    ids = tokenizer.encode(TEXT.read_text())
    assert len(ids) >= TOKENS, f"the text must hold at least {TOKENS} tokens, it has {len(ids)}"
    return ids[:TOKENS]


@pytest.fixture(scope="module")
def perplexities(format_runner, smollm2):
    ids = text_ids(smollm2.tokenizer)
    return {fmt: perplexity(format_runner(fmt), ids, CHUNK) for fmt in FORMATS}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "q0f32"])
def test_perplexity_beside_float32(perplexities, fmt):
    base, ppl = perplexities["q0f32"], perplexities[fmt]
    print(
        f"perplexity on {TOKENS} tokens: {fmt} {ppl:.3f}, q0f32 {base:.3f} ({100 * (ppl / base - 1):+.2f}%)"
    )
    assert 5 < base < 60, f"float32 perplexity {base:.2f}: the model does not read English"
    assert ppl <= base * (1 + GATES[fmt]), f"{fmt}: perplexity {ppl:.3f} vs float32 {base:.3f}"


@pytest.mark.slow
def test_the_text_scores_the_same_in_any_chunking(format_runner, smollm2):
    """The KV cache carries the context: chunks of 256 or of 100 give the same perplexity."""
    ids = text_ids(smollm2.tokenizer)[:600]
    runner = format_runner("gguf")
    assert perplexity(runner, ids, 256) == pytest.approx(perplexity(runner, ids, 100), rel=1e-4)


@pytest.mark.slow
def test_gguf_gives_float32s_greedy_tokens(format_runner, default_runner_factory, smollm2):
    """Exact dequantization in the kernels, float32 arithmetic: the same 64 greedy tokens."""
    from tests.models.test_generation import GEN_TOKENS, PROMPTS, chat_ids, our_greedy

    gguf, f32 = format_runner("gguf"), default_runner_factory()
    for i, prompt in enumerate(PROMPTS):
        ids = chat_ids(smollm2.tokenizer, prompt)
        logits, tokens = our_greedy(gguf, i, ids, GEN_TOKENS)
        ref_logits, ref_tokens = our_greedy(f32, i, ids, GEN_TOKENS)
        assert tokens == ref_tokens, f"greedy continuation of {prompt!r} differs"
        np.testing.assert_allclose(logits, ref_logits, atol=2e-3 * float(np.ptp(ref_logits)))


@pytest.mark.slow
def test_q4_build_computes_what_transformers_does(format_artifact, format_runner, smollm2, tmp_path):
    """Our q4f16_1 model equals transformers on the weights its artifact stores, unpacked in numpy:
    the perplexity the q4 formats lose is the format's rounding, not the kernels'."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from llm_deploy.models import param_shapes, save_hf_folder
    from llm_deploy.quantization import QUANTIZATIONS, unpack
    from tests.models.test_generation import assert_logits_close, hf_greedy, our_greedy

    p = QUANTIZATIONS["q4f16_1"].packing
    stored = load_file(format_artifact("q4f16_1") / "params" / "params.safetensors")
    weights = {}
    for name, shape in param_shapes(smollm2.config).items():
        if name in stored:  # a float parameter
            weights[name] = stored[name]
        else:
            weights[name] = unpack(p, {s: stored[f"{name}.{s}"] for s in ("qweight", "scale")}, shape)
    folder = save_hf_folder(tmp_path / "q4", smollm2.config, weights)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    ids = text_ids(smollm2.tokenizer)[:200]
    ours, our_tokens = our_greedy(format_runner("q4f16_1"), 0, ids, 8)
    ref, ref_tokens = hf_greedy(model, ids, 8)
    assert_logits_close(ours, ref)
    assert our_tokens == ref_tokens
