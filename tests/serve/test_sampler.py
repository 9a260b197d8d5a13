"""The sampler: parameter validation, distributions (chi-square), seeds, truncation, penalties, logprobs.

Expected distributions come from `reference_probs`, a plain-Python restatement of the documented
order (temperature, top_k, top_p, min_p) written without the sampler's numpy tricks, and from
Hugging Face's own logits warpers. The chi-square tests use fixed seeds, so they are deterministic;
their p-value threshold is computed by `chi2_sf` below (scipy is not a dependency).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_deploy.serve.sampler import (
    Sampler,
    SamplingError,
    SamplingParams,
    SamplingParamsError,
    SamplingState,
    process_logits,
    sampling_probs,
)

# ---------------------------------------------------------------------------------------------
# Chi-square without scipy


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df): the regularized upper incomplete gamma Q(df/2, x/2),
    by its series below a+1 and its continued fraction (Lentz) above (Numerical Recipes 6.2)."""
    a, x = df / 2.0, x / 2.0
    if x <= 0.0:
        return 1.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-16:
            n += 1.0
            term *= x / n
            total += term
        return 1.0 - total * math.exp(log_prefactor)
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return math.exp(log_prefactor) * h


# (df, quantile x, upper tail at x) from standard chi-square tables.
@pytest.mark.parametrize(
    "df,x,tail",
    [(1, 3.841, 0.05), (1, 10.828, 0.001), (3, 7.815, 0.05), (5, 20.515, 0.001), (10, 29.588, 0.001),
     (2, 4.605, 0.10), (7, 2.833, 0.90), (20, 31.410, 0.05)],
)  # fmt: skip
def test_chi2_sf_matches_table(df, x, tail):
    assert chi2_sf(x, df) == pytest.approx(tail, rel=2e-3)


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """Goodness-of-fit p-value of `counts` against `probs`, over the tokens `probs` allows."""
    support = probs > 0
    n = counts.sum()
    expected = n * probs[support]
    stat = float(np.sum((counts[support] - expected) ** 2 / expected))
    return chi2_sf(stat, int(support.sum()) - 1)


# ---------------------------------------------------------------------------------------------
# The reference: the documented order, one token at a time


def reference_probs(logits, temperature=1.0, top_k=-1, top_p=1.0, min_p=0.0) -> np.ndarray:
    x = [float(v) / temperature for v in logits]
    keep = [True] * len(x)
    if top_k > 0:
        kth = sorted(x, reverse=True)[min(top_k, len(x)) - 1]
        keep = [k and v >= kth for k, v in zip(keep, x)]

    def renormalized():
        m = max(v for k, v in zip(keep, x) if k)
        w = [math.exp(v - m) if k else 0.0 for k, v in zip(keep, x)]
        return [v / sum(w) for v in w]

    p = renormalized()
    if top_p < 1.0:
        ranked = sorted(range(len(x)), key=lambda i: (-p[i], i))
        mass_before = 0.0
        for i in ranked:
            keep[i] = keep[i] and mass_before < top_p
            mass_before += p[i]
        p = renormalized()
    if min_p > 0.0:
        keep = [k and v >= min_p * max(p) for k, v in zip(keep, p)]
        p = renormalized()
    return np.array(p)


TOY = np.array([2.0, 1.5, 1.2, 0.7, 0.0, -0.4, -1.0, -2.5])

MODES = {
    "temperature-0.6": dict(temperature=0.6),
    "temperature-1.7": dict(temperature=1.7),
    "top_k-3": dict(top_k=3),
    "top_p-0.75": dict(top_p=0.75),
    "min_p-0.15": dict(min_p=0.15),
    "combined": dict(temperature=0.8, top_k=6, top_p=0.9, min_p=0.05),
}


def draw(params: SamplingParams, logits: np.ndarray, n: int) -> np.ndarray:
    state = SamplingState.new(params)
    sampler = Sampler()
    return np.array([sampler.sample_row(logits, state).token for _ in range(n)])


@pytest.mark.parametrize("mode", MODES)
def test_frequencies_fit_the_distribution(mode):
    kwargs = MODES[mode]
    expected = reference_probs(TOY, **kwargs)
    tokens = draw(SamplingParams(seed=1234, **kwargs), TOY, 20_000)
    counts = np.bincount(tokens, minlength=TOY.size)
    assert np.all(counts[expected == 0] == 0), f"{mode}: excluded tokens drawn: {counts}"
    assert chi_square_p(counts, expected) > 1e-3, (mode, counts, expected * 20_000)
    # The test has power: the same draws are rejected against the untruncated, T=1 distribution.
    plain = reference_probs(TOY)
    assert chi_square_p(counts, plain) < 1e-6 or np.any(counts[plain > 0] == 0)


def test_frequencies_with_logit_bias():
    bias = {0: -1.5, 4: 1.0, 7: -100}
    tokens = draw(SamplingParams(seed=7, logit_bias=bias, top_k=6), TOY, 20_000)
    biased = TOY.copy()
    for t, b in bias.items():
        biased[t] += b
    expected = reference_probs(biased, top_k=6)
    counts = np.bincount(tokens, minlength=TOY.size)
    assert counts[7] == 0
    assert chi_square_p(counts, expected) > 1e-3


def test_sampling_probs_match_reference_and_hf_warpers():
    import torch
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    for case in range(20):
        logits = rng.normal(0.0, 3.0, size=64)
        kwargs = dict(temperature=float(rng.uniform(0.3, 2.0)), top_k=int(rng.integers(1, 64)),
                      top_p=float(rng.uniform(0.2, 1.0)), min_p=float(rng.uniform(0.0, 0.3)))  # fmt: skip
        ours = sampling_probs(logits, SamplingState.new(SamplingParams(**kwargs)))
        np.testing.assert_allclose(ours, reference_probs(logits, **kwargs), atol=1e-12, err_msg=str(kwargs))
        scores = torch.tensor(logits[None], dtype=torch.float64)
        for warper in (
            TemperatureLogitsWarper(kwargs["temperature"]),
            TopKLogitsWarper(kwargs["top_k"]),
            TopPLogitsWarper(kwargs["top_p"]),
            MinPLogitsWarper(kwargs["min_p"]),
        ):
            scores = warper(None, scores)
        hf = torch.softmax(scores, dim=-1)[0].numpy()
        np.testing.assert_allclose(ours, hf, atol=1e-12, err_msg=f"case {case}: {kwargs}")


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])  # flat rows sort widely; peaked rows sort few
def test_top_p_on_a_large_vocabulary(scale):
    logits = np.random.default_rng(4).normal(0.0, scale, size=3000)
    logits[[10, 20]] = logits.max() + 0.5  # a tie at the top: ranked by id
    for top_p in (0.05, 0.5, 0.97):
        ours = sampling_probs(logits, SamplingState.new(SamplingParams(top_p=top_p)))
        np.testing.assert_allclose(ours, reference_probs(logits, top_p=top_p), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Seeds and batching


UNIFORM = np.zeros(1000)


def test_same_seed_same_tokens():
    params = SamplingParams(seed=42, top_p=0.9)
    assert draw(params, UNIFORM, 50).tolist() == draw(params, UNIFORM, 50).tolist()


def test_different_seeds_differ():
    runs = {tuple(draw(SamplingParams(seed=s), UNIFORM, 20)) for s in range(10)}
    assert len(runs) == 10


def test_no_seed_is_random():
    assert draw(SamplingParams(), UNIFORM, 20).tolist() != draw(SamplingParams(), UNIFORM, 20).tolist()


def test_choices_of_one_seed_differ_but_reproduce():
    params = SamplingParams(seed=5, n=2)
    sampler = Sampler()

    def run():
        states = [SamplingState.new(params, choice=i) for i in range(2)]
        logits = np.stack([UNIFORM, UNIFORM])
        steps = [[r.token for r in sampler.sample(logits, states)] for _ in range(20)]
        return [tuple(col) for col in zip(*steps)]

    first, second = run()
    assert first != second
    assert run() == [first, second]


def test_negative_and_huge_seeds_work():
    for seed in (-1, -(2**63), 2**64 - 1):
        assert (
            draw(SamplingParams(seed=seed), UNIFORM, 10).tolist()
            == draw(SamplingParams(seed=seed), UNIFORM, 10).tolist()
        )


def test_batched_rows_are_independent():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 50))
    params = [
        SamplingParams(seed=1, temperature=0.7),
        SamplingParams(temperature=0.0, repetition_penalty=1.3),
        SamplingParams(seed=2, top_k=5, frequency_penalty=0.5, logprobs=True, top_logprobs=2),
    ]
    prompts = [[1, 2], [3, 4, 5], []]
    batch_states = [SamplingState.new(p, pr) for p, pr in zip(params, prompts)]
    alone_states = [SamplingState.new(p, pr) for p, pr in zip(params, prompts)]
    sampler = Sampler()
    for _ in range(30):
        batched = sampler.sample(logits, batch_states)
        alone = [sampler.sample(logits[i : i + 1], [alone_states[i]])[0] for i in range(3)]
        assert batched == alone
    # A row's draws do not depend on its neighbours either: shuffle the batch order.
    a = [SamplingState.new(params[0], prompts[0]) for _ in range(2)]
    first = [
        sampler.sample(logits, [a[0], SamplingState.new(params[1]), SamplingState.new(params[2])])[0]
        for _ in range(10)
    ]
    second = [
        sampler.sample(logits[::-1], [SamplingState.new(params[2]), SamplingState.new(params[1]), a[1]])[2]
        for _ in range(10)
    ]
    assert [r.token for r in first] == [r.token for r in second]


# ---------------------------------------------------------------------------------------------
# Truncation never lets an excluded token through


@settings(max_examples=150, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20).map(lambda v: round(v, 1)), min_size=2, max_size=40),
    temperature=st.floats(0.1, 2.0),
    top_k=st.integers(-1, 45),
    top_p=st.floats(0.01, 1.0),
    min_p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_truncation_never_emits_excluded_tokens(logits, temperature, top_k, top_p, min_p, seed):
    logits = np.array(logits)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
    allowed = reference_probs(logits, temperature, top_k, top_p, min_p) > 0
    ours = sampling_probs(logits, SamplingState.new(params))
    # Exact on the ranks; a tolerance only where top_p or min_p sits on a floating-point boundary.
    x = logits / temperature
    if top_k > 0:
        assert np.all(ours[x < np.sort(x)[::-1][min(top_k, x.size) - 1]] == 0)
    disagree = np.flatnonzero((ours > 0) != allowed)
    for t in disagree:
        assert _on_boundary(logits, t, temperature, top_k, top_p, min_p), (t, ours, allowed)
    assert math.isclose(ours.sum(), 1.0)
    tokens = draw(params, logits, 25)
    assert np.all(ours[tokens] > 0), (tokens, ours)


def _on_boundary(logits, t, temperature, top_k, top_p, min_p) -> bool:
    """Whether token t's fate under top_p / min_p turns on a rounding error (1e-9 either way)."""
    for eps in (1e-9, -1e-9):
        for p_change, m_change in ((eps, 0.0), (0.0, eps)):
            tp, mp = min(max(top_p + p_change, 1e-6), 1.0), min(max(min_p + m_change, 0.0), 1.0)
            kept = reference_probs(logits, temperature, top_k, top_p, min_p)[t] > 0
            if kept != (reference_probs(logits, temperature, top_k, tp, mp)[t] > 0):
                return True
    return False


@settings(max_examples=60, deadline=None)
@given(logits=st.lists(st.floats(-30, 30), min_size=1, max_size=30), seed=st.integers(0, 1000))
def test_greedy_is_argmax_of_penalized_logits(logits, seed):
    logits = np.array(logits)
    state = SamplingState.new(SamplingParams(temperature=0.0, seed=seed))
    assert Sampler().sample_row(logits, state).token == int(np.argmax(logits))


# ---------------------------------------------------------------------------------------------
# Bias and penalties: the formulas, exactly


def test_bias_then_repetition_then_frequency_and_presence():
    # Raw logits, then logit_bias {3: -1}:             [2, -1, 0.5, 2]
    # repetition 2 over prompt {0, 1} + generated {2, 3}: [1, -2, 0.25, 1]   (x/2 if x > 0 else x*2)
    # frequency 0.5 / presence 0.25 over generated {2: 2, 3: 1}:
    #   token 2: 0.25 - 2*0.5 - 0.25 = -1;  token 3: 1 - 1*0.5 - 0.25 = 0.25
    params = SamplingParams(
        repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25, logit_bias={3: -1.0}
    )
    state = SamplingState.new(params, prompt_ids=[0, 1, 1])
    for token in (2, 2, 3):
        state.record(token)
    raw = np.array([2.0, -1.0, 0.5, 3.0, 1.0])
    np.testing.assert_array_equal(process_logits(raw, state), [1.0, -2.0, -1.0, 0.25, 1.0])
    np.testing.assert_array_equal(raw, [2.0, -1.0, 0.5, 3.0, 1.0])  # the caller's row is untouched


def test_repetition_penalty_matches_hf():
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(1)
    logits = rng.normal(size=40)
    prompt, generated = [3, 5, 5, 9], [9, 12, 30]
    state = SamplingState.new(SamplingParams(repetition_penalty=1.7), prompt)
    for t in generated:
        state.record(t)
    hf = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([prompt + generated]), torch.tensor(logits[None]))
    np.testing.assert_allclose(process_logits(logits, state), hf[0].numpy(), rtol=1e-15)


def test_penalties_follow_the_sampler_own_history():
    # presence_penalty 2 on a 2-token tie: after the first token it is penalized, so greedy alternates.
    state = SamplingState.new(SamplingParams(temperature=0.0, presence_penalty=2.0, frequency_penalty=0.0))
    sampler = Sampler()
    logits = np.array([[1.0, 1.0, -5.0]])
    tokens = [sampler.sample(logits, [state])[0].token for _ in range(4)]
    assert tokens == [0, 1, 0, 0]  # after both are seen once, both carry -2: the tie returns to 0
    assert state.counts == {0: 3, 1: 1} and state.num_generated == 4


def test_frequency_penalty_scales_with_count_in_probabilities():
    state = SamplingState.new(SamplingParams(frequency_penalty=0.5))
    for t in (0, 0, 0, 1):
        state.record(t)
    probs = sampling_probs(np.zeros(3), state)
    expected = np.exp([-1.5, -0.5, 0.0]) / np.exp([-1.5, -0.5, 0.0]).sum()
    np.testing.assert_allclose(probs, expected, rtol=1e-14)


def test_logit_bias_extremes_force_and_ban():
    logits = np.zeros(100)
    forced = draw(SamplingParams(seed=0, logit_bias={42: 100}), logits, 200)
    assert set(forced.tolist()) == {42}
    banned = draw(SamplingParams(seed=0, logit_bias={str(t): -100 for t in range(99)}), logits, 200)
    assert set(banned.tolist()) == {99}


# ---------------------------------------------------------------------------------------------
# Logprobs


def log_softmax_reference(x: np.ndarray) -> np.ndarray:
    return x - (np.max(x) + np.log(np.sum(np.exp(x - np.max(x)))))


def test_logprobs_are_raw_log_softmax():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 30)).astype(np.float32)
    params = SamplingParams(
        seed=3, temperature=0.5, top_k=4, logit_bias={0: 5.0}, logprobs=True, top_logprobs=5
    )
    states = [SamplingState.new(params), SamplingState.new(params.__class__(temperature=0.0, logprobs=True))]
    results = Sampler().sample(logits, states)
    for row, result in zip(logits, results):
        expected = log_softmax_reference(row.astype(np.float64))
        assert result.logprob == pytest.approx(expected[result.token], abs=1e-12)
    top = results[0].top_logprobs
    best = np.argsort(-logits[0].astype(np.float64), kind="stable")[:5]
    assert [t for t, _ in top] == best.tolist()
    np.testing.assert_allclose(
        [lp for _, lp in top], log_softmax_reference(logits[0].astype(np.float64))[best], atol=1e-12
    )
    assert results[1].top_logprobs == ()  # logprobs without top_logprobs


def test_top_logprobs_ties_go_to_lower_ids_and_no_logprobs_by_default():
    logits = np.array([[0.0, 1.0, 1.0, 1.0, -1.0]])
    r = Sampler().sample(
        logits, [SamplingState.new(SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2))]
    )[0]
    assert [t for t, _ in r.top_logprobs] == [1, 2]
    plain = Sampler().sample(logits, [SamplingState.new(SamplingParams(temperature=0.0))])[0]
    assert plain.logprob is None and plain.top_logprobs is None


# ---------------------------------------------------------------------------------------------
# Errors


def test_bad_logits_are_named():
    sampler = Sampler()
    state = SamplingState.new(SamplingParams())
    with pytest.raises(SamplingError, match="row 1 contains NaN"):
        sampler.sample(np.array([[0.0, 1.0], [np.nan, 1.0]]), [state, state])
    with pytest.raises(SamplingError, match="all -inf"):
        sampler.sample(np.full((1, 3), -np.inf), [state])
    with pytest.raises(SamplingError, match=r"shape \[batch=2, vocab\], got \(1, 3\)"):
        sampler.sample(np.zeros((1, 3)), [state, state])
    with pytest.raises(SamplingError, match="token id 7 is outside the vocabulary of 3"):
        sampler.sample(np.zeros((1, 3)), [SamplingState.new(SamplingParams(logit_bias={7: 1}))])


def test_minus_inf_logits_are_never_drawn():
    logits = np.array([-np.inf, 0.0, -np.inf, 0.5])
    assert set(draw(SamplingParams(seed=1, repetition_penalty=1.5), logits, 300).tolist()) == {1, 3}


# ---------------------------------------------------------------------------------------------
# SamplingParams


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("temperature", -0.1, r"temperature must be in \[0, 2\], got -0.1"),
        ("temperature", 2.5, r"temperature must be in \[0, 2\]"),
        ("temperature", float("nan"), "temperature must be finite"),
        ("temperature", "hot", "temperature must be a number"),
        ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
        ("top_p", 1.01, r"top_p must be in \(0, 1\]"),
        ("top_k", -2, "top_k must be >= 1, or 0 / -1 for off"),
        ("top_k", 2.5, "top_k must be an integer"),
        ("min_p", 1.5, r"min_p must be in \[0, 1\]"),
        ("frequency_penalty", 2.1, r"frequency_penalty must be in \[-2, 2\]"),
        ("presence_penalty", -3, r"presence_penalty must be in \[-2, 2\]"),
        ("repetition_penalty", 0.0, r"repetition_penalty must be in \(0, inf\]"),
        ("logit_bias", {5: 101}, r"logit_bias\[5\] must be in \[-100, 100\]"),
        ("logit_bias", {"x": 1}, "logit_bias keys must be token ids"),
        ("logit_bias", {-1: 1}, "logit_bias keys must be token ids >= 0"),
        ("logit_bias", [1, 2], "logit_bias must be a mapping"),
        ("seed", 1.5, "seed must be an integer"),
        ("logprobs", 1, "logprobs must be true or false"),
        ("top_logprobs", 21, r"top_logprobs must be in \[0, 20\]"),
        ("n", 0, "n must be >= 1"),
        ("stop", ["ok", ""], "stop must be a non-empty string or a list of them, got ''"),
        ("stop", "", "stop must be a non-empty string"),
        ("stop", 5, "stop must be a list, got 5"),
        ("stop_token_ids", 7, "stop_token_ids must be a list, got 7"),
        ("stop_token_ids", [1, -2], "stop_token_ids must hold token ids >= 0"),
        ("max_tokens", 0, "max_tokens must be >= 1 or None"),
        ("ignore_eos", "yes", "ignore_eos must be true or false"),
    ],
)
def test_out_of_range_parameters_are_rejected(field, value, message):
    kwargs = {field: value}
    if field == "top_logprobs":
        kwargs["logprobs"] = True
    with pytest.raises(SamplingParamsError, match=message):
        SamplingParams(**kwargs)


def test_top_logprobs_needs_logprobs():
    with pytest.raises(SamplingParamsError, match="top_logprobs needs logprobs=True"):
        SamplingParams(top_logprobs=3)


def test_parameters_are_normalized_frozen_and_revalidated():
    p = SamplingParams(temperature=0, top_k=0, logit_bias={"50256": -100}, stop="###", stop_token_ids=[2])
    assert p.temperature == 0.0 and p.greedy
    assert dict(p.logit_bias) == {50256: -100.0}
    assert p.stop == ("###",) and p.stop_token_ids == (2,)
    assert SamplingParams(stop=["a", "b", "c", "d", "e"]).stop == ("a", "b", "c", "d", "e")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        p.logit_bias[1] = 2.0  # type: ignore[index]
    assert copy.deepcopy(p) == p and json.dumps(dataclasses.asdict(p)["logit_bias"]) == '{"50256": -100.0}'
    with pytest.raises(SamplingParamsError, match="top_p"):
        dataclasses.replace(p, top_p=3.0)
    assert dataclasses.replace(p, seed=3) == SamplingParams(**{**dataclasses.asdict(p), "seed": 3})
    assert hash(p) == hash(SamplingParams(**dataclasses.asdict(p)))
