"""Decode with int8-quantized activations (the default CPU build of the default model) against the
exact kernels on the same GGUF blocks, as the CPU-speed issue judges it: perplexity within 2%
(every token predicted by a decode step, so the integer kernels do all the products), and the
same greedy tokens up to the first near-tie of the exact path (top-2 logits closer than 0.1).
"""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.quantization.perplexity import log_softmax, perplexity
from tests.quantization.test_quality import text_ids

TOKENS = 768
NEAR_TIE = 0.1


@pytest.fixture(scope="module")
def int_dot_runner(artifacts_dir):
    from llm_deploy.build import build_model
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    path = build_model(
        "llama", output=artifacts_dir / "llama-gguf-int-dot-llvm", quantization="gguf", progress=False
    )
    artifact = load_artifact(path)
    assert artifact.build_options["int_dot"] is True  # the default
    kernels = {i.get("kernel", "") for i in artifact.executable.program["functions"]["decode"]["instrs"]}
    assert any(k.startswith("int_dot_linear") for k in kernels)
    return ModelRunner(artifact)


def decode_perplexity(runner, ids: list[int]) -> float:
    """Every token after the first predicted by a one-token decode step."""
    runner.add_sequence(0)
    try:
        nll = []
        for tok, nxt in zip(ids[:-1], ids[1:]):
            lp = log_softmax(runner.decode([0], [tok]))[0]
            nll.append(-lp[nxt])
    finally:
        runner.remove_sequence(0)
    return float(np.exp(np.mean(nll)))


@pytest.mark.slow
def test_int8_decode_perplexity_within_two_percent(int_dot_runner, format_runner, smollm2):
    ids = text_ids(smollm2.tokenizer)[:TOKENS]
    exact = perplexity(format_runner("gguf"), ids, 256)
    fast = decode_perplexity(int_dot_runner, ids)
    print(
        f"perplexity on {TOKENS} tokens: int8-activation decode {fast:.3f}, exact {exact:.3f} ({100 * (fast / exact - 1):+.2f}%)"
    )
    assert 5 < exact < 60
    assert abs(fast / exact - 1) <= 0.02


@pytest.mark.slow
def test_greedy_tokens_equal_up_to_the_first_near_tie(int_dot_runner, format_runner, smollm2):
    from tests.models.test_generation import PROMPTS, chat_ids

    exact = format_runner("gguf")
    compared = 0
    for i, prompt in enumerate(PROMPTS):
        ids = chat_ids(smollm2.tokenizer, prompt)
        for r in (exact, int_dot_runner):
            r.add_sequence(i)
        try:
            ref_logits = exact.prefill([i], [ids])[0]
            logits = int_dot_runner.prefill([i], [ids])[0]  # prefill is exact in both builds
            for _ in range(48):
                top2 = np.sort(ref_logits)[-2:]
                if top2[1] - top2[0] < NEAR_TIE:
                    break
                token = int(ref_logits.argmax())
                assert int(logits.argmax()) == token, (
                    f"{prompt!r}: token {compared} differs before any near-tie"
                )
                compared += 1
                ref_logits = exact.decode([i], [token])[0]
                logits = int_dot_runner.decode([i], [token])[0]
        finally:
            for r in (exact, int_dot_runner):
                r.remove_sequence(i)
    assert compared >= 16, f"only {compared} tokens were compared: near-ties came too early to judge"
