"""The engine end to end: llama-tiny (random weights, byte-level tokenizer) for speed, the default
model for real text.

The oracle for greedy output is `serve.generate`, the one-sequence loop: a request must come out
of the batch (chunked, mixed, preempted, reusing cached prefixes) as it comes out alone. After every
test the page accounting is exact: once idle, the only pages in use are the prefix cache's, and
flushing it empties the pool.
"""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.runtime.artifact import load_artifact
from llm_deploy.runtime.model_runner import ModelRunner
from llm_deploy.serve.engine import EngineClosedError, EngineCore, PromptTooLongError
from llm_deploy.serve.generate import generate
from llm_deploy.serve.request import RequestError
from llm_deploy.serve.sampler import Sampler, SamplingError, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12)
EOS = 2  # llama-tiny's <|im_end|>


@pytest.fixture(scope="module")
def tiny(tiny_artifact):
    return load_artifact(tiny_artifact)


@pytest.fixture
def make_core(tiny):
    cores = []

    def make(num_pages: int = 64, runner=None, **kw) -> EngineCore:
        core = EngineCore(runner or ModelRunner(tiny, num_pages=num_pages), tiny.tokenizer, **kw)
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.close()


def random_prompt(rng, n: int) -> list[int]:
    return rng.integers(3, 259, size=n).tolist()


def alone(artifact, prompt: list[int], params: SamplingParams) -> str:
    return "".join(generate(ModelRunner(artifact), artifact.tokenizer, prompt, params))


def collect(stream):
    """(text per choice, finish reason per choice, the last output)."""
    texts: dict[int, str] = {}
    reasons: dict[int, str | None] = {}
    last = None
    for out in stream:
        for d in out.deltas:
            texts[d.index] = texts.get(d.index, "") + d.text
            if d.finish_reason:
                reasons[d.index] = d.finish_reason
        last = out
    n = len(texts)
    return [texts[i] for i in range(n)], [reasons.get(i) for i in range(n)], last


def assert_no_leak(core: EngineCore) -> None:
    """Idle: every sequence in the cache is a prefix cache entry and every used page is theirs;
    flushing the prefix cache empties the pool."""
    assert core.wait_idle(timeout=30)
    stats = core.stats()
    assert stats.idle and stats.running_requests == 0 and stats.waiting_requests == 0
    core.cache.validate()
    assert set(core.cache.seq_ids) == set(core.prefix.seq_ids)
    assert stats.pages_used == stats.prefix_cache_pages == core.cache.pages_in_use
    core.flush_prefix_cache()
    assert core.wait_idle(timeout=30)
    assert core.cache.pages_in_use == 0 and core.cache.seq_ids == ()
    assert core.stats().pages_used == 0 and core.stats().pages_free == core.cache.num_pages


# -- continuous batching ----------------------------------------------------------------------------


def test_sixteen_requests_batched_equal_each_alone(tiny, make_core):
    rng = np.random.default_rng(0)
    lengths = [1, 3, 5, 8, 13, 17, 24, 31, 33, 40, 47, 55, 64, 70, 90, 100]  # 33+: several prefill chunks
    prompts = [random_prompt(rng, n) for n in lengths]
    params = [SamplingParams(temperature=0, max_tokens=6 + 2 * (i % 8)) for i in range(16)]
    expected = [alone(tiny, p, sp) for p, sp in zip(prompts, params)]

    core = make_core(num_pages=128)
    streams = [core.submit(p, sp) for p, sp in zip(prompts, params)]
    got = [collect(s)[0][0] for s in streams]

    assert got == expected
    assert core.wait_idle(30)  # the statistics are a snapshot taken after each step
    stats = core.stats()
    assert stats.max_decode_batch > 1 and max(stats.prefill_batch_sizes) > 1
    assert stats.finished_requests == 16
    # Batched: fewer decode forwards than decoded tokens.
    assert stats.decode_steps < stats.generated_tokens - 16
    assert stats.prompt_tokens + stats.cached_tokens >= sum(lengths)
    assert_no_leak(core)


def test_preemption_recomputes_and_output_is_unchanged(tiny, make_core):
    """10 pages hold ~2 of these requests at full length: the newest are preempted, recomputed, and
    their output (greedy, and seeded sampling with n=2) is the same as with room to spare."""
    rng = np.random.default_rng(1)
    prompts = [random_prompt(rng, 20 + i) for i in range(6)]
    greedy = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    sampled = SamplingParams(temperature=1.0, seed=3, n=2, max_tokens=30, ignore_eos=True)
    roomy = make_core(num_pages=128)
    expected_n2 = collect(roomy.submit(prompts[0], sampled))[0]

    core = make_core(num_pages=10)
    streams = [core.submit(p, greedy) for p in prompts[1:]] + [core.submit(prompts[0], sampled)]
    results = [collect(s) for s in streams]

    assert core.wait_idle(30) and core.stats().preemptions > 0
    assert [r[0][0] for r in results[:-1]] == [alone(tiny, p, greedy) for p in prompts[1:]]
    assert results[-1][0] == expected_n2
    assert sum(r[2].stats.preemptions for r in results) == core.stats().preemptions
    assert_no_leak(core)


def test_a_request_that_outgrows_the_pool_ends_with_length(tiny, make_core):
    core = make_core(num_pages=4)  # 64 tokens
    prompt = random_prompt(np.random.default_rng(2), 10)
    (text,), (reason,), last = collect(
        core.submit(prompt, SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    )
    # The cache holds prompt + all tokens but the last sampled one: 64 = 10 + 55 - 1.
    assert reason == "length" and last.stats.completion_tokens == 55
    assert text == alone(tiny, prompt, SamplingParams(temperature=0, max_tokens=55, ignore_eos=True))
    assert_no_leak(core)


def test_chunked_prefill_and_max_num_seqs(tiny, make_core):
    core = make_core(max_num_seqs=2)
    rng = np.random.default_rng(3)
    prompts = [random_prompt(rng, 100), random_prompt(rng, 5), random_prompt(rng, 7)]
    streams = [core.submit(p, GREEDY) for p in prompts]
    assert [collect(s)[0][0] for s in streams] == [alone(tiny, p, GREEDY) for p in prompts]
    assert core.wait_idle(30)
    stats = core.stats()
    assert stats.max_decode_batch == 2  # the third waited for a slot
    assert stats.prefill_steps >= 100 // core.prefill_chunk
    assert_no_leak(core)


# -- cancellation and failures ----------------------------------------------------------------------


def test_cancel_mid_generation_frees_pages_and_spares_the_others(tiny, make_core):
    core = make_core(max_num_seqs=3)
    rng = np.random.default_rng(4)
    prompts = [random_prompt(rng, n) for n in (9, 21, 14, 5)]
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
    a, b, c, d = (core.submit(p, long if i == 1 else GREEDY) for i, p in enumerate(prompts))

    tokens = 0
    outputs = iter(b)
    while tokens < 3:
        tokens += sum(len(x.token_ids) for x in next(outputs).deltas)
    b.cancel()
    d.cancel()  # still waiting (max_num_seqs=3): leaves the queue without running
    rest = list(outputs)

    assert rest[-1].finished and rest[-1].deltas[-1].finish_reason == "abort"
    assert rest[-1].stats.completion_tokens < 200
    assert collect(d)[1] == ["abort"] and collect(d)[2] is None  # finished already
    assert [collect(s)[0][0] for s in (a, c)] == [alone(tiny, p, GREEDY) for p in (prompts[0], prompts[2])]
    assert core.wait_idle(30) and core.stats().aborted_requests == 2
    assert_no_leak(core)


def test_a_consumer_that_goes_away_cancels_its_request(tiny, make_core):
    core = make_core()
    prompt = random_prompt(np.random.default_rng(5), 12)
    for _ in core.submit(prompt, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)):
        break  # the generator is closed here
    assert core.wait_idle(timeout=30)
    assert core.stats().aborted_requests == 1 and core.stats().generated_tokens < 200
    stream = core.submit(prompt, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    del stream  # never read: dropped
    assert core.wait_idle(timeout=30)
    assert core.stats().aborted_requests == 2 and core.stats().generated_tokens < 400
    assert_no_leak(core)


class FailingSampler(Sampler):
    """Raises inside the sampling of the request seeded 666, at its 4th token."""

    def sample_row(self, row, state, index=0):
        if state.params.seed == 666 and state.num_generated == 3:
            raise RuntimeError("injected failure")
        return super().sample_row(row, state, index)


def test_an_exception_in_one_request_fails_it_alone(tiny, make_core):
    core = make_core()
    core.sampler = FailingSampler()
    rng = np.random.default_rng(6)
    prompts = [random_prompt(rng, n) for n in (8, 16, 24, 11)]
    doomed = SamplingParams(temperature=0, seed=666, max_tokens=20, ignore_eos=True)
    bad_bias = SamplingParams(temperature=0, logit_bias={1000: 5.0})  # outside the 259-token vocabulary
    streams = [core.submit(prompts[0], GREEDY), core.submit(prompts[1], doomed)]
    streams += [core.submit(prompts[2], bad_bias), core.submit(prompts[3], GREEDY)]

    seen = []
    with pytest.raises(RequestError, match="injected failure") as failed:
        for out in streams[1]:
            seen.extend(t for d in out.deltas for t in d.token_ids)
    assert isinstance(failed.value.__cause__, RuntimeError) and len(seen) == 3
    with pytest.raises(RequestError) as failed:
        collect(streams[2])
    assert isinstance(failed.value.__cause__, SamplingError)
    good = [collect(s)[0][0] for s in (streams[0], streams[3])]
    assert good == [alone(tiny, p, GREEDY) for p in (prompts[0], prompts[3])]
    assert core.wait_idle(30) and core.stats().failed_requests == 2
    assert_no_leak(core)


class FlakyRunner:
    """The tiny runner, whose next decode forward fails once when armed."""

    def __init__(self, runner: ModelRunner) -> None:
        self._runner = runner
        self.armed = False

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def decode(self, seq_ids, tokens):
        if self.armed and len(seq_ids) > 1:
            self.armed = False
            self._runner.cache.begin_forward(list(seq_ids), [1] * len(seq_ids))
            self._runner.cache.cancel_forward()  # as ModelRunner does when the model raises
            raise MemoryError("injected forward failure")
        return self._runner.decode(seq_ids, tokens)


def test_a_failed_forward_fails_its_batch_and_the_engine_goes_on(tiny, make_core):
    runner = FlakyRunner(ModelRunner(tiny, num_pages=64))
    core = make_core(runner=runner)
    rng = np.random.default_rng(7)
    prompts = [random_prompt(rng, n) for n in (6, 9, 12)]
    runner.armed = True
    streams = [core.submit(p, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)) for p in prompts]
    failures = 0
    for s in streams:
        try:
            collect(s)
        except RequestError as e:
            assert isinstance(e.__cause__, MemoryError)
            failures += 1
    assert failures >= 2 and not runner.armed
    assert collect(core.submit(prompts[0], GREEDY))[0][0] == alone(tiny, prompts[0], GREEDY)
    assert_no_leak(core)


# -- text: stop strings and UTF-8 through the engine -------------------------------------------------


class ForcedRunner:
    """The tiny model's real forward steps over the real cache, with the logits replaced so that each
    sequence (of a `prompt_len`-token prompt) continues with `script`, then EOS: text of the test's
    choosing, token by token, through the whole engine. The tiny tokenizer has one token per byte,
    so every multi-byte character is split across tokens."""

    def __init__(self, runner: ModelRunner, prompt_len: int, script: list[int]) -> None:
        self._runner, self.prompt_len, self.script = runner, prompt_len, script

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def prefill(self, seq_ids, token_lists):
        return self._force(seq_ids, self._runner.prefill(seq_ids, token_lists))

    def decode(self, seq_ids, tokens):
        return self._force(seq_ids, self._runner.decode(seq_ids, tokens))

    def _force(self, seq_ids, logits):
        out = np.zeros_like(logits)
        for row, seq_id in enumerate(seq_ids):
            k = self._runner.cache.seq_length(seq_id) - self.prompt_len
            out[row, self.script[k] if 0 <= k < len(self.script) else EOS] = 30.0
        return out


@pytest.fixture
def forced(tiny, make_core):
    def make(text: str, prompt_len: int = 6) -> EngineCore:
        script = tiny.tokenizer.encode(text)
        assert tiny.tokenizer.decode(script) == text
        return make_core(runner=ForcedRunner(ModelRunner(tiny, num_pages=64), prompt_len, script))

    return make


def stream_deltas(core: EngineCore, params: SamplingParams, prompt_len: int = 6) -> tuple[list[str], object]:
    deltas, last = [], None
    for out in core.submit(list(range(10, 10 + prompt_len)), params):
        deltas.extend(d.text for d in out.deltas)
        last = out
    return deltas, last


@pytest.mark.parametrize(
    "stop, include, expected, reason",
    [
        (["p he", "zz"], False, "Hello, wörld! Sto", "p he"),  # across four tokens
        (["ld! S"], True, "Hello, wörld! S", "ld! S"),
        (["😀"], False, "Hello, wörld! Stop here ", "😀"),  # a stop string of split bytes
        (["ö"], False, "Hello, w", "ö"),
    ],
)
def test_stop_strings_across_tokens_end_to_end(forced, stop, include, expected, reason):
    core = forced("Hello, wörld! Stop here 😀 then more")
    params = SamplingParams(temperature=0, stop=stop, include_stop_str_in_output=include)
    deltas, last = stream_deltas(core, params)
    assert "".join(deltas) == expected
    assert last.deltas[-1].finish_reason == "stop" and last.deltas[-1].stop_reason == reason
    # Nothing of the stop string leaked before the end: every streamed prefix is a prefix of the result.
    assert all(expected.startswith("".join(deltas[:i])) for i in range(len(deltas)))
    assert_no_leak(core)


def test_utf8_characters_split_across_tokens_stream_whole(forced):
    text = "Emoji 😀🤖, CJK 日本語, accents façade."
    core = forced(text)
    deltas, last = stream_deltas(core, SamplingParams(temperature=0, max_tokens=100))
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
    assert last.deltas[-1].finish_reason == "stop"  # EOS after the script
    assert last.stats.completion_tokens == len(text.encode()) + 1
    # Bytes of a character were held back until it was whole: some tokens streamed no text.
    assert sum(1 for d in deltas if d) < len(text.encode())
    assert "😀" in deltas or any("😀" in d for d in deltas)
    assert_no_leak(core)


# -- prefix reuse -----------------------------------------------------------------------------------


def test_prefix_reuse_reports_cached_tokens_and_keeps_output(tiny, make_core):
    rng = np.random.default_rng(8)
    system = random_prompt(rng, 100)  # not a multiple of the page size: the shared last page is copied
    first, second = system + [40, 41, 42], system + [50, 51, 52, 53]
    core = make_core()
    (text1,), _, out1 = collect(core.submit(first, GREEDY))
    (text2,), _, out2 = collect(core.submit(second, GREEDY))
    (text3,), _, out3 = collect(core.submit(first, GREEDY))

    assert out1.stats.cached_tokens == 0
    assert out2.stats.cached_tokens == len(system)
    assert out3.stats.cached_tokens == len(first) - 1  # the last prompt token is always computed
    assert [text1, text2, text3] == [alone(tiny, first, GREEDY), alone(tiny, second, GREEDY), text1]
    assert core.wait_idle(30) and core.stats().cached_tokens == len(system) + len(first) - 1
    assert_no_leak(core)

    plain = make_core(prefix_cache_entries=0)
    (text,), _, out = collect(plain.submit(second, GREEDY))
    assert text == text2 and out.stats.cached_tokens == 0
    assert plain.wait_idle(30) and plain.cache.pages_in_use == 0


def test_prefix_cache_entries_are_evicted_when_pages_are_needed(tiny, make_core):
    core = make_core(num_pages=12)
    rng = np.random.default_rng(9)
    for _ in range(6):  # each leaves ~4 pages behind in the prefix cache
        collect(core.submit(random_prompt(rng, 50), GREEDY))
    assert core.wait_idle(30)
    assert core.stats().prefix_cache_pages <= 12 and core.stats().finished_requests == 6
    assert_no_leak(core)


# -- sampling through the engine --------------------------------------------------------------------


def test_seeds_reproduce_and_n_gives_independent_choices(tiny, make_core):
    core = make_core()
    rng = np.random.default_rng(10)
    prompt, other = random_prompt(rng, 12), random_prompt(rng, 30)

    def sample(seed, n=1, crowd=False):
        params = SamplingParams(temperature=1.0, seed=seed, n=n, max_tokens=16, ignore_eos=True)
        streams = [core.submit(other, GREEDY)] if crowd else []
        texts = collect(core.submit(prompt, params))[0]
        for s in streams:
            collect(s)
        return texts

    one = sample(7)
    assert sample(7, crowd=True) == one  # batched with another request: the same draw
    assert sample(8) != one
    two = sample(7, n=2)
    assert len(two) == 2 and two[0] == one[0] and two[1] != two[0]  # choice i draws from (seed, i)
    assert sample(7, n=2, crowd=True) == two
    assert_no_leak(core)


# -- statistics and validation ----------------------------------------------------------------------


def test_request_and_engine_statistics(tiny, make_core):
    core = make_core()
    prompt = random_prompt(np.random.default_rng(11), 40)
    (_,), _, last = collect(core.submit(prompt, SamplingParams(temperature=0, max_tokens=9, ignore_eos=True)))
    s = last.stats
    assert core.wait_idle(30)
    assert (s.prompt_tokens, s.completion_tokens, s.cached_tokens) == (40, 9, 0)
    assert 0 <= s.queue_s <= s.ttft_s and s.prefill_s > 0 and s.decode_s > 0
    assert s.prefill_tokens_per_s > 0 and s.decode_tokens_per_s > 0
    e = core.stats()
    assert (e.prompt_tokens, e.generated_tokens, e.decode_steps) == (40, 9, 8)
    assert e.decode_batch_sizes == {1: 8} and e.prefill_steps == 2  # 40 tokens in chunks of 32
    assert e.to_dict()["mean_decode_batch"] == 1.0


def test_prompt_validation(make_core):
    core = make_core(num_pages=4)
    with pytest.raises(ValueError, match="empty"):
        core.submit([], GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        core.submit([5, 300], GREEDY)
    with pytest.raises(PromptTooLongError, match="context window"):
        core.submit([5] * 256, GREEDY)
    with pytest.raises(PromptTooLongError, match="needs 5 KV cache pages"):
        core.submit([5] * 70, GREEDY)
    stream = core.submit([5, 6], GREEDY, request_id="r1")
    with pytest.raises(ValueError, match="already in use"):
        core.submit([5, 6], GREEDY, request_id="r1")
    collect(stream)
    core.close()
    with pytest.raises(RuntimeError, match="closed"):
        core.submit([5, 6], GREEDY)


def test_close_fails_what_is_in_flight(make_core):
    core = make_core()
    stream = core.submit([5, 6, 7], SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    next(iter(stream))
    core.close()
    with pytest.raises(RequestError, match="closed") as failed:
        collect(stream)
    assert isinstance(failed.value.__cause__, EngineClosedError)
    assert core.cache.pages_in_use == 0 and core.stats().failed_requests == 1


# -- the default model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_batched_equals_alone(default_artifact):
    """Real text: four prompts of different lengths together, each as it comes alone; the capital of
    France is Paris. (Few tokens: the default model runs at a few tokens/s until schedules land.)"""
    art = load_artifact(default_artifact)
    tok = art.tokenizer
    prompts = [tok.encode(t) for t in ("The capital of France is", "Water", "1, 2, 3, 4, 5,", "I like to")]
    params = SamplingParams(temperature=0, max_tokens=5)
    expected = [alone(art, p, params) for p in prompts]
    core = EngineCore(ModelRunner(art, num_pages=16), tok)
    try:
        streams = [core.submit(p, params) for p in prompts]
        got = [collect(s)[0][0] for s in streams]
        assert got == expected and "Paris" in got[0]
        assert core.wait_idle(30) and core.stats().max_decode_batch > 1
        assert_no_leak(core)
    finally:
        core.close()
