"""Llama in our IR, compiled for the CPU, against transformers on the same weights (issue 9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence what a compiler does.",
]
GEN_TOKENS = 64


def chat_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}])


def hf_greedy(model, ids: list[int], steps: int) -> tuple[np.ndarray, list[int]]:
    """transformers' prompt logits and its greedy continuation (EOS ignored, fixed length)."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        prompt_logits = out.logits[0].float().numpy()
        past, nxt, tokens = out.past_key_values, int(out.logits[0, -1].argmax()), []
        for _ in range(steps):
            tokens.append(nxt)
            out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
    return prompt_logits, tokens


def our_greedy(runner, seq_id: int, ids: list[int], steps: int) -> tuple[np.ndarray, list[int]]:
    runner.add_sequence(seq_id)
    try:
        prompt_logits = runner.score(seq_id, ids)
        nxt, tokens = int(prompt_logits[-1].argmax()), []
        for _ in range(steps):
            tokens.append(nxt)
            nxt = int(runner.decode([seq_id], [nxt])[0].argmax())
    finally:
        runner.remove_sequence(seq_id)
    return prompt_logits, tokens


def assert_logits_close(ours: np.ndarray, ref: np.ndarray, rel: float = 1e-3) -> None:
    span = float(ref.max() - ref.min())
    worst = float(np.abs(ours - ref).max())
    assert worst <= rel * span, f"logits differ by {worst:.3g}, more than {rel} of their range {span:.3g}"


@pytest.fixture(scope="module")
def default_model_outputs(default_runner_factory, hf_smollm2_model, smollm2):
    tokenizer = smollm2.tokenizer
    runner = default_runner_factory()
    results = []
    for i, prompt in enumerate(PROMPTS):
        ids = chat_ids(tokenizer, prompt)
        results.append(
            (
                prompt,
                ids,
                our_greedy(runner, i, ids, GEN_TOKENS),
                hf_greedy(hf_smollm2_model, ids, GEN_TOKENS),
            )
        )
    return results


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_default_model_matches_transformers(default_model_outputs, index):
    prompt, ids, (ours, our_tokens), (ref, ref_tokens) = default_model_outputs[index]
    assert_logits_close(ours, ref)
    assert our_tokens == ref_tokens, f"greedy continuation of {prompt!r} differs"


@pytest.mark.slow
def test_default_model_answers_paris(default_model_outputs, smollm2):
    _, _, (_, tokens), _ = default_model_outputs[0]
    stop = tokens.index(2) if 2 in tokens else len(tokens)
    assert smollm2.tokenizer.decode(tokens[:stop]) == "The capital of France is Paris."


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """llama-tiny saved as a Hugging Face folder (2 shards), and transformers' model of it."""
    from transformers import AutoModelForCausalLM

    from llm_deploy.models import load_model, save_hf_folder

    tiny = load_model("llama-tiny")
    folder = save_hf_folder(
        tmp_path_factory.mktemp("tiny-hf"), tiny.config, tiny.weights, shards=2, tokenizer=tiny.tokenizer
    )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return folder, model, tiny.tokenizer


@pytest.fixture(scope="module")
def tiny_hf_runner(tiny_hf, tmp_path_factory):
    from llm_deploy.build import build_model
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    folder, _, _ = tiny_hf
    out = build_model(str(folder), output=tmp_path_factory.mktemp("tiny-art") / "a", progress=False)
    return ModelRunner(load_artifact(out))


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_tiny_hf_folder_matches_transformers(tiny_hf, tiny_hf_runner, index):
    _, model, tokenizer = tiny_hf
    ids = tokenizer.encode(PROMPTS[index])
    ours, our_tokens = our_greedy(tiny_hf_runner, 100 + index, ids, 32)
    ref, ref_tokens = hf_greedy(model, ids, 32)
    assert_logits_close(ours, ref)
    assert our_tokens == ref_tokens


def test_one_module_serves_every_length(tiny_runner_factory, monkeypatch):
    """No compilation happens after the build: every prompt length runs the same kernels."""
    import llm_deploy.targets.llvm.codegen as codegen

    calls = []
    monkeypatch.setattr(codegen, "codegen", lambda *a, **k: calls.append(a))
    runner = tiny_runner_factory()
    kernels = runner.artifact.executable.kernels
    for seq_id, n in enumerate([1, 2, 7, 37, 130]):
        runner.add_sequence(seq_id)
        logits = runner.prefill([seq_id], [list(range(3, 3 + n))])
        assert logits.shape == (1, runner.vocab_size)
        runner.remove_sequence(seq_id)
    assert calls == [] and runner.artifact.executable.kernels is kernels


def test_flat_batch_equals_each_sequence_alone(tiny_runner_factory):
    prompts = [[5, 9, 12, 80, 33, 7, 1, 200], [44, 45, 46]]
    alone = []
    for i, p in enumerate(prompts):
        runner = tiny_runner_factory()
        runner.add_sequence(i)
        first = runner.prefill([i], [p])[0]
        second = runner.decode([i], [int(first.argmax())])[0]
        alone.append((first, second))
    runner = tiny_runner_factory()
    for i in range(len(prompts)):
        runner.add_sequence(i)
    batch_first = runner.prefill([0, 1], prompts)
    batch_second = runner.decode([0, 1], [int(batch_first[i].argmax()) for i in range(2)])
    for i in range(2):
        np.testing.assert_allclose(batch_first[i], alone[i][0], atol=1e-5)
        np.testing.assert_allclose(batch_second[i], alone[i][1], atol=1e-5)
