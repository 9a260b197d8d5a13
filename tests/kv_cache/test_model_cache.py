"""The default model over the paged cache and its compiled attention kernels: batch and chunk
invariance, forks sharing pages, and every page back in the pool at the end (issue 10).

One artifact (the default pipeline: lower_kv_cache to the paged kernels) serves every test; the
runs are computed once per module and compared in the tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from tests.models.test_generation import PROMPTS as GENERATION_PROMPTS
from tests.models.test_generation import chat_ids, hf_greedy

PROMPTS = [*GENERATION_PROMPTS, "Name three primary colors."]
GEN_TOKENS = 16
CHUNK = 16

pytestmark = pytest.mark.slow


@dataclass
class Run:
    """One sequence's greedy run: the prefill's last logits, then the tokens and decode logits."""

    first_logits: np.ndarray
    tokens: list[int]
    decode_logits: list[np.ndarray]


def greedy(runner, seq_ids: list[int], prompts: list[list[int]], steps: int, first=None) -> list[Run]:
    """Prefill every prompt in one step, then decode them together; `first` forces the first tokens."""
    for s in seq_ids:
        runner.add_sequence(s)
    logits = runner.prefill(seq_ids, prompts)
    runs = [Run(logits[i], [], []) for i in range(len(seq_ids))]
    nxt = first or [int(row.argmax()) for row in logits]
    for _ in range(steps):
        for run, t in zip(runs, nxt):
            run.tokens.append(t)
        logits = runner.decode(seq_ids, nxt)
        for run, row in zip(runs, logits):
            run.decode_logits.append(row)
        nxt = [int(row.argmax()) for row in logits]
    return runs


def remove_all(runner) -> None:
    for s in list(runner.cache.seq_ids):
        runner.remove_sequence(s)
    runner.cache.validate()
    assert runner.cache.pages_in_use == 0


@pytest.fixture(scope="module")
def prompt_ids(smollm2) -> list[list[int]]:
    return [chat_ids(smollm2.tokenizer, p) for p in PROMPTS]


@pytest.fixture(scope="module")
def runner(default_runner_factory):
    return default_runner_factory(num_pages=64)


@pytest.fixture(scope="module")
def alone(runner, prompt_ids) -> list[Run]:
    """Each prompt run on its own, its pages freed before the next."""
    runs = []
    for i, ids in enumerate(prompt_ids):
        runs += greedy(runner, [i], [ids], GEN_TOKENS)
        remove_all(runner)
    return runs


def assert_same_run(run: Run, ref: Run, what: str) -> None:
    assert run.tokens == ref.tokens, f"{what}: greedy tokens differ"
    for ours, theirs in zip([run.first_logits, *run.decode_logits], [ref.first_logits, *ref.decode_logits]):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=what)


def test_alone_matches_transformers(alone, prompt_ids, hf_smollm2_model):
    for i, ids in enumerate(prompt_ids):
        _, ref_tokens = hf_greedy(hf_smollm2_model, ids, GEN_TOKENS)
        assert alone[i].tokens == ref_tokens, (
            f"greedy continuation of {PROMPTS[i]!r} differs from transformers"
        )


def test_four_prompts_batched_equal_each_alone(runner, alone, prompt_ids):
    seq_ids = [10, 11, 12, 13]
    batched = greedy(runner, seq_ids, prompt_ids, GEN_TOKENS)
    assert runner.cache.pages_in_use == sum(
        runner.cache.pages_for_tokens(len(ids) + GEN_TOKENS) for ids in prompt_ids
    )
    remove_all(runner)
    for i, run in enumerate(batched):
        assert_same_run(run, alone[i], f"prompt {i} in a batch of {len(seq_ids)}")


def test_prompt_prefilled_in_chunks_equals_one_piece(runner, alone, prompt_ids):
    ids = prompt_ids[2]
    assert len(ids) > 2 * CHUNK  # several chunks, the last one partial
    runner.add_sequence(20)
    for start in range(0, len(ids), CHUNK):
        logits = runner.prefill([20], [ids[start : start + CHUNK]])
    tokens, decode_logits, nxt = [], [], int(logits[0].argmax())
    for _ in range(GEN_TOKENS):
        tokens.append(nxt)
        row = runner.decode([20], [nxt])[0]
        decode_logits.append(row)
        nxt = int(row.argmax())
    remove_all(runner)
    assert_same_run(Run(logits[0], tokens, decode_logits), alone[2], f"prompt 2 in chunks of {CHUNK}")


def test_fork_continues_two_ways_like_independent_runs_with_fewer_pages(runner, alone, prompt_ids):
    ids = prompt_ids[0]
    runner.add_sequence(30)
    first = runner.prefill([30], [ids])[0]
    greedy_first, other_first = (int(t) for t in np.argsort(first)[::-1][:2])
    runner.fork_sequence(30, 31)
    runs = [Run(first, [], []), Run(first, [], [])]
    nxt = [greedy_first, other_first]
    for _ in range(GEN_TOKENS):
        for run, t in zip(runs, nxt):
            run.tokens.append(t)
        logits = runner.decode([30, 31], nxt)
        for run, row in zip(runs, logits):
            run.decode_logits.append(row)
        nxt = [int(row.argmax()) for row in logits]
    # the two share the prompt's full pages: fewer than two sequences of that length hold alone
    independent = 2 * runner.cache.pages_for_tokens(len(ids) + GEN_TOKENS)
    assert runner.cache.pages_in_use < independent
    remove_all(runner)

    assert_same_run(runs[0], alone[0], "the fork's parent")  # its continuation is prompt 0's own
    (ref,) = greedy(runner, [32], [ids], GEN_TOKENS, first=[other_first])
    remove_all(runner)
    assert_same_run(runs[1], ref, "the forked child")
