"""The serving engine: one model, its paged KV cache, one scheduler thread, many requests.

    core = EngineCore(ModelRunner(artifact, num_pages=512), artifact.tokenizer)
    for out in core.submit(prompt_ids, SamplingParams(temperature=0, max_tokens=32)):
        print(out.deltas[0].text, end="")

Requests arrive from any thread (or asyncio loop) and wait in a FIFO queue. The scheduler thread
runs steps; each step
  1. drops cancelled requests (their pages return to the pool at once),
  2. admits waiting requests, oldest first, while the pool has pages for their prompts (plus a page
     of headroom per running sequence) and the batch has room (`max_num_seqs`),
  3. runs one prefill forward: chunks of admitted prompts, `prefill_chunk` tokens in all, several
     requests mixed in one flat batch,
  4. runs one decode forward over every running sequence (continuous batching): a sequence joins
     the step after its prompt is in and leaves the step it finishes.
A request's first token is sampled from its prompt's last logits; `n` choices fork the prompt's
sequence there (sharing its pages) and each samples with its own generator.

Pages: a forward that needs more pages than are free first evicts prefix cache entries, then
preempts the newest request: its pages are freed and it returns to the head of the queue, to be
recomputed later (prompt + tokens so far; its sampling state and text stream are kept, so its
output continues where it stopped). A request alone that outgrows the whole pool ends ("length").

Failures: an exception while sampling or detokenizing fails that request only; a failed forward
fails the requests of that batch (the cache rolls the step back). Their pages are freed and the
engine goes on. Only the scheduler thread touches the runner and the cache.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from llm_deploy.kv_cache import OutOfPagesError
from llm_deploy.serve.prefix_cache import PrefixCache, common_prefix
from llm_deploy.serve.request import AsyncRequestStream, Delta, RequestOutput, RequestStream
from llm_deploy.serve.sampler import Sampler, SamplingParams, SamplingState
from llm_deploy.serve.stats import Counters, EngineStats, RequestStats
from llm_deploy.serve.stop import TextStream


class PromptTooLongError(ValueError):
    """The prompt leaves no room to generate in the context window, or cannot fit the KV cache."""


class EngineClosedError(RuntimeError):
    pass


@dataclass(eq=False)
class _Seq:
    """One choice of a request: its tokens, sampling state and text stream, and its cache sequence
    (`seq_id`, None while it holds no pages)."""

    choice: int
    tokens: list[int]  # prompt + generated
    prompt_len: int
    state: SamplingState
    stream: TextStream
    seq_id: int | None = None
    finish_reason: str | None = None

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def fill_len(self) -> int:
        """Tokens the cache holds before the next decode: all but the last sampled one (its input)."""
        return len(self.tokens) - (1 if self.num_generated else 0)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[RequestOutput], None]
    seqs: list[_Seq]
    arrival: float
    cancelled: bool = False  # set from any thread; acted on at the next step
    done: bool = False
    prefilled: bool = False  # the prompt went through and every choice has its first token
    admitted_at: float | None = None
    first_token_at: float | None = None
    cached_tokens: int = 0
    preemptions: int = 0

    def fill_seqs(self) -> list[_Seq]:
        """Sequences whose cache must be built before they decode: the prompt's (choice 0) at
        first; after a preemption, every unfinished choice (prompt + its tokens so far)."""
        return [s for s in self.seqs if not s.finished] if self.prefilled else self.seqs[:1]

    @property
    def width(self) -> int:
        return sum(1 for s in self.seqs if not s.finished)


class EngineCore:
    """Continuous batching over one `ModelRunner`; see the module docstring.

    `runner` is a ModelRunner (or anything with its `prefill`, `decode`, `cache`, `prefill_chunk`,
    `context_window`, `vocab_size` and `stop_token_ids`); `tokenizer` decodes ids to text.
    `prefix_cache_entries=0` turns prefix reuse off.
    """

    def __init__(
        self,
        runner: Any,
        tokenizer: Any,
        *,
        max_num_seqs: int = 64,
        prefix_cache_entries: int = 16,
        prefill_chunk: int | None = None,
    ) -> None:
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        self.runner = runner
        self.cache = runner.cache
        self.tokenizer = tokenizer
        self.sampler = Sampler()
        self.max_num_seqs = max_num_seqs
        self.prefill_chunk = prefill_chunk or runner.prefill_chunk
        self.eos_token_ids = tuple(runner.stop_token_ids)
        self.prefix = PrefixCache(self.cache, prefix_cache_entries)
        self._ids = itertools.count()
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []  # admitted, by arrival
        self._counters = Counters()
        self._cv = threading.Condition()
        self._inbox: list[_Request] = []
        self._commands: list[tuple[Callable[[], Any], Future]] = []
        self._known: dict[str, _Request] = {}
        self._closing = False
        self._idle = True
        self._stats = self._snapshot(idle=True)
        self._thread = threading.Thread(target=self._loop, name="llm_deploy-engine", daemon=True)
        self._thread.start()

    # -- the client side (any thread) ----------------------------------------------------------

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None
    ) -> RequestStream:
        """Queue a request; iterate the returned stream for its outputs (blocking)."""
        request_id = request_id or uuid.uuid4().hex
        stream = RequestStream(request_id, self.cancel)
        self._submit(prompt_ids, params, request_id, stream.put)
        return stream

    def submit_async(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncRequestStream:
        """Queue a request from a coroutine; `async for` over the returned stream."""
        request_id = request_id or uuid.uuid4().hex
        stream = AsyncRequestStream(request_id, self.cancel)
        self._submit(prompt_ids, params, request_id, stream.put)
        return stream

    def cancel(self, request_id: str) -> None:
        with self._cv:
            r = self._known.get(request_id)
            if r is not None:
                r.cancelled = True
                self._cv.notify_all()

    def stats(self) -> EngineStats:
        """The snapshot taken after the last step (never waits for a forward); after `wait_idle`
        it accounts for every request that has finished."""
        return self._stats

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is queued or running; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._idle, timeout)

    def flush_prefix_cache(self) -> None:
        """Drop every cached prefix (their pages return to the pool)."""
        self._call(self.prefix.clear)

    def close(self) -> None:
        """Stop the scheduler; requests still queued or running fail with EngineClosedError."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def closed(self) -> bool:
        return self._closing

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the scheduler thread between steps and return its result."""
        fut: Future = Future()
        with self._cv:
            if self._closing:
                raise EngineClosedError("the engine is closed")
            self._commands.append((fn, fut))
            self._idle = False
            self._cv.notify_all()
        return fut.result()

    def _submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str, sink: Callable
    ) -> None:
        prompt = self._check_prompt(prompt_ids, params)
        room = self.runner.context_window - len(prompt)
        params = replace(params, max_tokens=min(params.max_tokens or room, room))
        seqs = [
            _Seq(
                j,
                list(prompt),
                len(prompt),
                SamplingState.new(params, prompt, choice=j),
                TextStream(self.tokenizer, params, self.eos_token_ids, prompt),
            )
            for j in range(params.n)
        ]
        r = _Request(request_id, prompt, params, sink, seqs, time.perf_counter())
        with self._cv:
            if self._closing:
                raise EngineClosedError("the engine is closed")
            if request_id in self._known:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._known[request_id] = r
            self._inbox.append(r)
            self._idle = False
            self._cv.notify_all()

    def _check_prompt(self, prompt_ids: Sequence[int], params: SamplingParams) -> list[int]:
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("the prompt is empty: nothing to condition on")
        vocab = self.runner.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        window = self.runner.context_window
        if len(prompt) >= window:
            raise PromptTooLongError(
                f"the prompt has {len(prompt)} tokens; the context window of {window} leaves no room to generate"
            )
        pages = self.cache.pages_for_tokens(len(prompt) + 1) + params.n - 1
        if pages > self.cache.num_pages:
            raise PromptTooLongError(
                f"the prompt ({len(prompt)} tokens, n={params.n}) needs {pages} KV cache pages; "
                f"the cache has {self.cache.num_pages}"
            )
        return prompt

    # -- the scheduler thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._closing or self._inbox or self._commands or self._waiting or self._active):
                    self._stats = self._snapshot(idle=True)
                    self._idle = True
                    self._cv.notify_all()
                    self._cv.wait()
                if self._closing:
                    break
                self._waiting.extend(self._inbox)
                self._inbox.clear()
                commands, self._commands = self._commands, []
            for fn, fut in commands:
                try:
                    fut.set_result(fn())
                except Exception as e:
                    fut.set_exception(e)
            try:
                self._step()
            except Exception as e:  # a bug of ours: fail what is in flight, start clean
                self._fail_all(e)
            self._stats = self._snapshot(idle=False)
        self._shutdown()

    def _step(self) -> None:
        for r in [*self._waiting, *self._active]:
            if r.cancelled:
                self._abort(r)
        self._admit()
        self._prefill_step()
        self._decode_step()

    # -- admission

    def _admit(self) -> None:
        while self._waiting:
            r = self._waiting[0]
            if self._active:
                running = sum(x.width for x in self._active)
                if running + r.width > self.max_num_seqs or self._admission_pages(r) > self._spare_pages():
                    return  # FIFO: nobody overtakes the oldest waiting request
            self._waiting.popleft()
            # Arrival order, a re-admitted request included: prefill budget goes to the oldest, and
            # the newest is the one preempted.
            bisect.insort(self._active, r, key=lambda x: x.arrival)
            if r.admitted_at is None:
                r.admitted_at = time.perf_counter()

    def _admission_pages(self, r: _Request) -> int:
        fills = r.fill_seqs()
        reused = self.prefix.match(fills[0].tokens[: fills[0].fill_len])[1]
        pages = sum(self.cache.pages_for_tokens(s.fill_len + 1) for s in fills)
        return pages + (r.width - len(fills)) - reused // self.cache.page_size

    def _spare_pages(self) -> int:
        """Pages free or freeable, less what admitted requests will still take: the rest of their
        prompts, and a page of headroom per running sequence."""
        committed = 0
        for r in self._active:
            for s in r.fill_seqs():
                held = len(self.cache.page_table(s.seq_id)) if s.seq_id is not None else 0
                committed += max(self.cache.pages_for_tokens(s.fill_len) - held, 0)
            committed += r.width
        return self.cache.free_pages + self.prefix.evictable_pages - committed

    # -- prefill

    def _prefill_step(self) -> None:
        budget = self.prefill_chunk
        batch: list[tuple[_Request, _Seq]] = []
        chunks: list[list[int]] = []
        for r in list(self._active):
            if budget <= 0:
                break
            s = self._next_fill(r)
            if s is None:
                continue
            done = self.cache.seq_length(s.seq_id)
            chunk = s.tokens[done : min(s.fill_len, done + budget)]
            batch.append((r, s))
            chunks.append(chunk)
            budget -= len(chunk)
        batch, chunks = self._make_room(batch, chunks)
        if not batch:
            return
        try:
            logits = self.runner.prefill([s.seq_id for _, s in batch], chunks)
        except Exception as e:
            for r in {id(r): r for r, _ in batch}.values():
                self._fail(r, e)
            return
        c = self._counters
        c.prefill_steps += 1
        c.prefill_batch_sizes[len(batch)] += 1
        c.prompt_tokens += sum(map(len, chunks))
        for (r, s), row in zip(batch, logits):
            if not r.done and self.cache.seq_length(s.seq_id) == s.fill_len:
                self._filled(r, s, row)

    def _next_fill(self, r: _Request) -> _Seq | None:
        """The sequence of `r` to prefill next (its fill started), or None if all are filled."""
        for s in r.fill_seqs():
            if s.seq_id is None:
                self._start_fill(r, s)
            if self.cache.seq_length(s.seq_id) < s.fill_len:
                return s
            self._filled(r, s, None)  # all reused: possible only when recomputing
        return None

    def _start_fill(self, r: _Request, s: _Seq) -> None:
        """Give `s` a cache sequence, forked from the longest cached prefix of what it must hold."""
        target = s.tokens[: s.fill_len]
        source, shared = self.prefix.match(target)
        for sib in r.seqs:
            if sib is not s and sib.seq_id is not None:
                n = self.cache.seq_length(sib.seq_id)
                k = common_prefix(np.asarray(sib.tokens[:n]), np.asarray(target))
                if k > shared:
                    source, shared = sib.seq_id, k
        # The prompt's last token is always computed: its logits give the first token.
        shared = min(shared, s.fill_len - (0 if r.prefilled else 1))
        s.seq_id = next(self._ids)
        if source is None or shared == 0:
            self.cache.add_sequence(s.seq_id)
        else:
            self.cache.fork_sequence(source, s.seq_id)
            self.cache.popn(s.seq_id, self.cache.seq_length(source) - shared)
            if source in self.prefix.seq_ids:
                self.prefix.touch(source)
        self._counters.cached_tokens += shared
        if not r.prefilled:
            r.cached_tokens = shared

    def _filled(self, r: _Request, s: _Seq, row: np.ndarray | None) -> None:
        if r.prefilled:
            return  # recomputed after a preemption: it decodes its last token at the next step
        # The prompt is in: every choice samples its first token from its last logits.
        r.prefilled = True
        for child in r.seqs[1:]:
            child.seq_id = next(self._ids)
            self.cache.fork_sequence(s.seq_id, child.seq_id)
        self._advance(r, r.seqs, [row] * len(r.seqs))

    # -- decode

    def _decode_step(self) -> None:
        batch = [(r, s) for r in self._active for s in r.seqs if self._is_running(r, s)]
        batch, inputs = self._make_room(batch, [[s.tokens[-1]] for _, s in batch])
        if not batch:
            return
        try:
            logits = self.runner.decode([s.seq_id for _, s in batch], [t for (t,) in inputs])
        except Exception as e:
            for r in {id(r): r for r, _ in batch}.values():
                self._fail(r, e)
            return
        c = self._counters
        c.decode_steps += 1
        c.decode_batch_sizes[len(batch)] += 1
        for r, group in itertools.groupby(zip(batch, logits), key=lambda item: item[0][0]):
            items = list(group)
            self._advance(r, [s for (_, s), _ in items], [row for _, row in items])

    def _is_running(self, r: _Request, s: _Seq) -> bool:
        return (
            r.prefilled
            and not s.finished
            and s.seq_id is not None
            and self.cache.seq_length(s.seq_id) == s.fill_len
        )

    def _advance(self, r: _Request, seqs: list[_Seq], rows: list[np.ndarray]) -> None:
        """Sample one token for each of `seqs` (choices of `r`) and stream what it releases."""
        deltas = []
        try:
            for s, row in zip(seqs, rows):
                res = self.sampler.sample_row(row, s.state)
                s.tokens.append(res.token)
                step = s.stream.step(res.token)
                logprobs = (res,) if r.params.logprobs else None
                deltas.append(
                    Delta(s.choice, step.text, (res.token,), logprobs, step.finish_reason, step.stop_reason)
                )
                if step.finished:
                    s.finish_reason = step.finish_reason
                    self._release(s)
        except Exception as e:
            self._fail(r, e)
            return
        self._counters.generated_tokens += len(seqs)
        if r.first_token_at is None:
            r.first_token_at = time.perf_counter()
        if r.width == 0:
            self._finish(r, deltas)
        else:
            self._emit(r, RequestOutput(r.request_id, tuple(deltas)))

    # -- pages

    def _make_room(
        self, batch: list[tuple[_Request, _Seq]], inputs: list[list[int]]
    ) -> tuple[list[tuple[_Request, _Seq]], list[list[int]]]:
        """Free pages until the forward over `batch` fits: evict cached prefixes, then preempt the
        newest request. What remains of the batch is returned (a preempted request leaves it)."""
        while batch:
            needed = self.cache.pages_needed([s.seq_id for _, s in batch], [len(t) for t in inputs])
            if needed <= self.cache.free_pages:
                break
            if self.prefix.evict_one():
                continue
            holders = [r for r in self._active if any(s.seq_id is not None for s in r.seqs)]
            if len(holders) == 1:
                self._out_of_room(holders[0], needed)
            else:
                self._preempt(holders[-1])
            kept = [(item, t) for item, t in zip(batch, inputs) if item[1].seq_id is not None]
            batch, inputs = [item for item, _ in kept], [t for _, t in kept]
        return batch, inputs

    def _preempt(self, r: _Request) -> None:
        for s in r.seqs:
            self._release(s, keep=False)
        if not r.prefilled:
            r.cached_tokens = 0
        r.preemptions += 1
        self._counters.preemptions += 1
        self._active.remove(r)
        bisect.insort(self._waiting, r, key=lambda x: x.arrival)  # back in line, by arrival

    def _out_of_room(self, r: _Request, needed: int) -> None:
        """`r` alone needs more pages than the pool has: end it where it is."""
        if not r.prefilled:
            free = self.cache.free_pages
            self._fail(r, OutOfPagesError(needed, free, f"request {r.request_id}"))
            return
        deltas = []
        for s in r.seqs:
            if not s.finished:
                step = s.stream.finish("length")
                s.finish_reason = "length"
                deltas.append(Delta(s.choice, step.text, finish_reason="length"))
            self._release(s)
        self._finish(r, deltas)

    def _release(self, s: _Seq, keep: bool = True) -> None:
        """Give up `s`'s cache sequence; kept in the prefix cache when its content is sound."""
        if s.seq_id is None:
            return
        seq_id, s.seq_id = s.seq_id, None
        if keep and not self.cache.in_step:
            self.prefix.insert(seq_id, s.tokens[: self.cache.seq_length(seq_id)])
        else:
            self.cache.remove_sequence(seq_id)

    # -- ending requests

    def _abort(self, r: _Request) -> None:
        deltas = []
        for s in r.seqs:
            if not s.finished:
                step = s.stream.finish("abort")
                s.finish_reason = "abort"
                deltas.append(Delta(s.choice, step.text, finish_reason="abort"))
            self._release(s)
        self._finish(r, deltas, outcome="aborted")

    def _fail(self, r: _Request, error: BaseException) -> None:
        for s in r.seqs:
            self._release(s, keep=False)
        self._finish(r, (), error=error, outcome="failed")

    def _finish(
        self,
        r: _Request,
        deltas: Sequence[Delta],
        error: BaseException | None = None,
        outcome: str = "finished",
    ) -> None:
        r.done = True
        if r in self._active:
            self._active.remove(r)
        elif r in self._waiting:
            self._waiting.remove(r)
        with self._cv:
            self._known.pop(r.request_id, None)
        setattr(self._counters, outcome, getattr(self._counters, outcome) + 1)
        self._emit(r, RequestOutput(r.request_id, tuple(deltas), True, error, self._request_stats(r)))

    def _emit(self, r: _Request, out: RequestOutput) -> None:
        try:
            r.sink(out)
        except Exception:  # the consumer is gone (e.g. its event loop closed)
            r.cancelled = True

    def _request_stats(self, r: _Request) -> RequestStats:
        now = time.perf_counter()
        admitted = r.admitted_at if r.admitted_at is not None else now
        first = r.first_token_at if r.first_token_at is not None else now
        return RequestStats(
            queue_s=admitted - r.arrival,
            ttft_s=first - r.arrival,
            prefill_s=first - admitted,
            decode_s=now - first,
            prompt_tokens=len(r.prompt),
            cached_tokens=r.cached_tokens,
            completion_tokens=sum(s.num_generated for s in r.seqs),
            preemptions=r.preemptions,
        )

    def _fail_all(self, error: BaseException) -> None:
        if self.cache.in_step:
            self.cache.cancel_forward()
        for r in [*self._active, *self._waiting]:
            for s in r.seqs:
                if s.seq_id is not None and s.seq_id in self.cache:
                    self.cache.remove_sequence(s.seq_id)
                s.seq_id = None
            self._finish(r, (), error=error, outcome="failed")

    def _shutdown(self) -> None:
        with self._cv:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            for _, fut in self._commands:
                fut.set_exception(EngineClosedError("the engine is closed"))
            self._commands.clear()
        self._fail_all(EngineClosedError("the engine was closed before this request finished"))
        self.prefix.clear()
        with self._cv:
            self._stats = self._snapshot(idle=True)
            self._idle = True
            self._cv.notify_all()

    def _snapshot(self, idle: bool) -> EngineStats:
        c = self._counters
        return EngineStats(
            running_requests=len(self._active),
            waiting_requests=len(self._waiting) + len(self._inbox),
            running_sequences=sum(r.width for r in self._active),
            num_pages=self.cache.num_pages,
            pages_used=self.cache.pages_in_use,
            pages_free=self.cache.free_pages,
            prefix_cache_entries=len(self.prefix),
            prefix_cache_pages=self.prefix.pages,
            prompt_tokens=c.prompt_tokens,
            cached_tokens=c.cached_tokens,
            generated_tokens=c.generated_tokens,
            prefill_steps=c.prefill_steps,
            decode_steps=c.decode_steps,
            decode_batch_sizes=dict(c.decode_batch_sizes),
            prefill_batch_sizes=dict(c.prefill_batch_sizes),
            preemptions=c.preemptions,
            finished_requests=c.finished,
            aborted_requests=c.aborted,
            failed_requests=c.failed,
            idle=idle,
        )
