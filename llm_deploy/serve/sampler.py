"""Sampling parameters and the sampler: one row of logits per request in, one token per request out.

The parameters are the ones users of the OpenAI API, vLLM and MLC-LLM pass, validated the way an
OpenAI server rejects them (a `SamplingParamsError` naming the field, the allowed range and the
value). The sampler applies them to a row of logits in this order, the one vLLM and Hugging Face
`generate` use:

    logits + logit_bias                                   (OpenAI: added to the raw logits)
    repetition penalty over prompt and generated tokens   (HF: x / r where x > 0, x * r otherwise)
    frequency and presence penalties over generated tokens (OpenAI: x - c*f - (c > 0)*p)
    temperature  (0 = greedy: argmax of the penalized logits, no randomness)
    top_k -> top_p -> min_p                               (HF warper order; ties at the k-th value kept)
    draw from the renormalized distribution with the request's own numpy Generator

Log-probabilities are reported from the *raw* model logits (log_softmax before bias, penalties,
temperature and truncation), as the OpenAI API and vLLM's default report them: they describe what
the model thinks of the token, not the sampler's post-processing, so they stay comparable across
sampling settings and a greedy request still reports finite logprobs for its alternatives.

Numpy only: logits may come from any device as long as they reach the host as an array.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


class SamplingParamsError(ValueError):
    """A sampling parameter is out of range or of the wrong type; the message names it."""


class SamplingError(RuntimeError):
    """Logits cannot be sampled (NaN, all -inf, wrong width); the message names the row."""


MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat completions


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SamplingParamsError(f"SamplingParams.{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise SamplingParamsError(f"SamplingParams.{name} must be finite, got {value!r}")
    return value


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SamplingParamsError(f"SamplingParams.{name} must be an integer, got {value!r}")
    return int(value)


def _in_range(name: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise SamplingParamsError(f"SamplingParams.{name} must be in {interval}, got {value!r}")


# name -> (lo, hi, lo_open): the float fields and the ranges an OpenAI server accepts.
_FLOAT_RANGES = {
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
    "presence_penalty": (-2.0, 2.0, False),
    "repetition_penalty": (0.0, math.inf, True),
}


class FrozenDict(dict):
    """A dict that refuses changes: a frozen dataclass field that stays a dict for JSON, `asdict`
    and `copy`."""

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise TypeError("this mapping is read-only; build new SamplingParams with dataclasses.replace")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[dict]]:
        return (type(self), (dict(self),))


def _logit_bias(value: object) -> Mapping[int, float]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise SamplingParamsError(
            f"SamplingParams.logit_bias must be a mapping token id -> bias, got {value!r}"
        )
    out: dict[int, float] = {}
    for key, bias in value.items():
        # JSON object keys are strings: OpenAI clients send {"50256": -100}.
        try:
            token = int(key) if isinstance(key, str) else _integer("logit_bias key", key)
        except ValueError:
            raise SamplingParamsError(
                f"SamplingParams.logit_bias keys must be token ids, got {key!r}"
            ) from None
        if token < 0:
            raise SamplingParamsError(f"SamplingParams.logit_bias keys must be token ids >= 0, got {key!r}")
        bias = _number(f"logit_bias[{token}]", bias)
        _in_range(f"logit_bias[{token}]", bias, -100.0, 100.0)
        out[token] = bias
    return FrozenDict(out)


def _stop_strings(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else _bad_stop(value)
    strings = _as_tuple("stop", value)
    for s in strings:
        if not isinstance(s, str) or not s:
            _bad_stop(s)
    return strings


def _bad_stop(s: object) -> tuple[str, ...]:
    raise SamplingParamsError(f"SamplingParams.stop must be a non-empty string or a list of them, got {s!r}")


def _as_tuple(name: str, value: object) -> tuple:
    try:
        return tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise SamplingParamsError(f"SamplingParams.{name} must be a list, got {value!r}") from None


def _token_ids(name: str, value: object) -> tuple[int, ...]:
    ids = tuple(_integer(name, t) for t in _as_tuple(name, value or ()))
    if any(t < 0 for t in ids):
        raise SamplingParamsError(f"SamplingParams.{name} must hold token ids >= 0, got {ids!r}")
    return ids


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops; validated on construction (and on `replace`).

    `top_k` of 0 or -1 means off. `stop` takes a string or a list of strings; OpenAI allows up to
    4, we allow any number (the HTTP layer may enforce OpenAI's limit). `logit_bias` keys may be
    ints or strings of ints (as in JSON); it is stored read-only and left out of the hash.
    `top_logprobs` needs `logprobs`, as in OpenAI. `seed` makes the request reproducible: choice
    `i` of `n` draws from its own stream derived from (seed, i).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Mapping[int, float] = field(default_factory=dict, hash=False)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    max_tokens: int | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        for name, (lo, hi, lo_open) in _FLOAT_RANGES.items():
            value = _number(name, getattr(self, name))
            _in_range(name, value, lo, hi, lo_open)
            put(name, value)
        put("top_k", _integer("top_k", self.top_k))
        if self.top_k < -1:
            raise SamplingParamsError(
                f"SamplingParams.top_k must be >= 1, or 0 / -1 for off, got {self.top_k}"
            )
        put("logit_bias", _logit_bias(self.logit_bias))
        if self.seed is not None:
            put("seed", _integer("seed", self.seed))
        for name in ("logprobs", "ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise SamplingParamsError(
                    f"SamplingParams.{name} must be true or false, got {getattr(self, name)!r}"
                )
        put("top_logprobs", _integer("top_logprobs", self.top_logprobs))
        _in_range("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)
        if self.top_logprobs and not self.logprobs:
            raise SamplingParamsError("SamplingParams.top_logprobs needs logprobs=True")
        put("n", _integer("n", self.n))
        if self.n < 1:
            raise SamplingParamsError(f"SamplingParams.n must be >= 1, got {self.n}")
        put("stop", _stop_strings(self.stop))
        put("stop_token_ids", _token_ids("stop_token_ids", self.stop_token_ids))
        if self.max_tokens is not None:
            put("max_tokens", _integer("max_tokens", self.max_tokens))
            if self.max_tokens < 1:
                raise SamplingParamsError(
                    f"SamplingParams.max_tokens must be >= 1 or None, got {self.max_tokens}"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _generator(seed: int | None, choice: int) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()  # fresh OS entropy: unseeded requests differ
    # SeedSequence wants a non-negative entropy; OpenAI seeds are signed 64-bit.
    return np.random.default_rng(np.random.SeedSequence(seed % 2**64, spawn_key=(choice,)))


@dataclass
class SamplingState:
    """What the sampler keeps for one sequence between steps: its generator and the tokens seen.

    `Sampler.sample` records each chosen token here, so penalties see it at the next step.
    """

    params: SamplingParams
    rng: np.random.Generator
    prompt_ids: np.ndarray  # [p] unique int64: repetition penalty covers the prompt too (HF)
    counts: dict[int, int] = field(default_factory=dict)  # generated token -> times (OpenAI penalties)

    @classmethod
    def new(cls, params: SamplingParams, prompt_ids: Iterable[int] = (), choice: int = 0) -> SamplingState:
        prompt = np.unique(np.fromiter(prompt_ids, dtype=np.int64))
        return cls(params, _generator(params.seed, choice), prompt)

    def record(self, token: int) -> None:
        self.counts[token] = self.counts.get(token, 0) + 1

    @property
    def num_generated(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class SampleResult:
    """The token chosen for one row; logprobs (raw model log_softmax) only when asked for."""

    token: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None  # best first, ties by token id


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def process_logits(row: np.ndarray, state: SamplingState) -> np.ndarray:
    """Bias and penalties applied to one row of raw logits ([V] float64 copy); temperature not yet."""
    p = state.params
    x = np.array(row, dtype=np.float64)  # copy: the caller's logits stay raw
    if p.logit_bias:
        tokens = np.fromiter(p.logit_bias.keys(), dtype=np.int64)
        _check_ids("logit_bias", tokens, x.shape[0])
        x[tokens] += np.fromiter(p.logit_bias.values(), dtype=np.float64)
    if p.repetition_penalty != 1.0:
        seen = np.union1d(state.prompt_ids, np.fromiter(state.counts.keys(), dtype=np.int64))
        _check_ids("prompt/generated", seen, x.shape[0])
        v = x[seen]
        x[seen] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
    if state.counts and (p.frequency_penalty or p.presence_penalty):
        tokens = np.fromiter(state.counts.keys(), dtype=np.int64)
        counts = np.fromiter(state.counts.values(), dtype=np.float64)
        _check_ids("generated", tokens, x.shape[0])
        x[tokens] -= counts * p.frequency_penalty + p.presence_penalty
    return x


def _check_ids(what: str, ids: np.ndarray, vocab: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise SamplingError(f"{what} token id {int(ids.max())} is outside the vocabulary of {vocab} logits")


def sampling_probs(row: np.ndarray, state: SamplingState) -> np.ndarray:
    """The distribution [V] float64 a non-greedy step draws from: softmax(processed / T), then
    top_k, top_p and min_p zero out tokens and the rest is renormalized."""
    p = state.params
    x = process_logits(row, state) / p.temperature
    vocab = x.shape[0]
    if 0 < p.top_k < vocab:
        kth = np.partition(x, vocab - p.top_k)[vocab - p.top_k]
        x[x < kth] = -np.inf  # ties with the k-th value stay, as in HF
    probs = np.exp(x - np.max(x))
    probs /= probs.sum()
    if p.top_p < 1.0:
        probs[~_top_p_mask(probs, p.top_p)] = 0.0
    if p.min_p > 0.0:
        probs[probs < p.min_p * probs.max()] = 0.0
    return probs / probs.sum()


def _top_p_mask(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Tokens ranked (by probability, ties by id) so that the mass ranked above them is < top_p.

    The kept set is a prefix of the ranking, so only the best `m` tokens need sorting once their
    mass reaches top_p; `m` doubles until it does (a full sort only for very flat rows).
    """
    live = np.flatnonzero(probs > 0)  # [L] ascending ids; top_k may have zeroed most of the row
    p = probs[live]
    m = min(live.shape[0], 256)
    while True:
        kth = np.partition(p, p.shape[0] - m)[p.shape[0] - m]
        candidates = np.flatnonzero(p >= kth)  # ties with the m-th value come along
        ranked = candidates[np.lexsort((candidates, -p[candidates]))]
        mass = np.cumsum(p[ranked])
        if m >= p.shape[0] or mass[-1] >= top_p:
            break
        m = min(2 * m, p.shape[0])
    before = mass - p[ranked]  # the best token always has 0 before it: never dropped
    keep = np.zeros(probs.shape[0], dtype=bool)
    keep[live[ranked[before < top_p]]] = True
    return keep


def _draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    cdf = np.cumsum(probs)
    # side="right" never lands on a zero-probability token: its cdf equals its predecessor's.
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    if i >= probs.shape[0]:  # u * total rounded up to total
        i = int(np.flatnonzero(probs)[-1])
    return i


def _check_row(row: np.ndarray, index: int) -> None:
    # Bias and penalties are finite and keep -inf at -inf, so a row with one finite logit stays sampleable.
    if np.isfinite(row).all():
        return
    if np.isnan(row).any() or np.isposinf(row).any():
        raise SamplingError(f"logits row {index} contains NaN or +inf")
    if np.isneginf(row).all():
        raise SamplingError(f"logits row {index} is all -inf: no token can be sampled")


class Sampler:
    """Samples one token per row of a [batch, vocab] logits array, each row with its own state.

    Rows are independent: each has its parameters, generator and history, so a request's tokens do
    not depend on which other requests share the batch.
    """

    def sample(self, logits: np.ndarray, states: Sequence[SamplingState]) -> list[SampleResult]:
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[0] != len(states):
            raise SamplingError(
                f"expected logits of shape [batch={len(states)}, vocab], got {tuple(logits.shape)}"
            )
        return [self.sample_row(row, state, i) for i, (row, state) in enumerate(zip(logits, states))]

    def sample_row(self, row: np.ndarray, state: SamplingState, index: int = 0) -> SampleResult:
        _check_row(row, index)
        if state.params.greedy:
            token = int(np.argmax(process_logits(row, state)))
        else:
            token = _draw(sampling_probs(row, state), state.rng)
        state.record(token)
        return _result(row, token, state.params)


def _result(row: np.ndarray, token: int, params: SamplingParams) -> SampleResult:
    if not params.logprobs:
        return SampleResult(token)
    logp = log_softmax(row)
    top: tuple[tuple[int, float], ...] = ()
    if params.top_logprobs:
        k = min(params.top_logprobs, logp.shape[0])
        kth = np.partition(logp, logp.shape[0] - k)[logp.shape[0] - k]
        candidates = np.flatnonzero(logp >= kth)  # ties at the k-th value: the lowest ids win
        best = candidates[np.lexsort((candidates, -logp[candidates]))][:k]
        top = tuple((int(t), float(logp[t])) for t in best)
    return SampleResult(token, float(logp[token]), top)
