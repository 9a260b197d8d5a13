"""What a request gets back from the engine, and the handles its consumer reads them through.

The engine thread produces one `RequestOutput` per request per step it advanced (one `Delta` per
choice that moved); the last one has `finished=True` and carries the usage and the request's
statistics. A consumer reads them from a `RequestStream` (threads) or an `AsyncRequestStream`
(asyncio). Either handle cancels its request when the consumer stops early: breaking out of the
loop, closing the generator, or the asyncio task being cancelled.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from llm_deploy.serve.sampler import SampleResult
from llm_deploy.serve.stats import RequestStats


class RequestError(RuntimeError):
    """The engine failed this request (its own fault, e.g. a bad logit_bias id, or a failed
    forward step); other requests go on. `__cause__` holds the original exception."""


@dataclass(frozen=True)
class Delta:
    """New output of one choice: the text it may stream now and the tokens behind it."""

    index: int
    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[SampleResult, ...] | None = None  # one per token when logprobs were asked for
    finish_reason: str | None = None  # "stop" | "length" | "abort" (cancelled)
    stop_reason: str | int | None = None  # the stop string or stop token id that matched


@dataclass(frozen=True)
class RequestOutput:
    request_id: str
    deltas: tuple[Delta, ...] = ()
    finished: bool = False
    error: BaseException | None = None  # set on the last output of a failed request
    stats: RequestStats | None = None  # set on the last output

    @property
    def prompt_tokens(self) -> int:
        return self.stats.prompt_tokens if self.stats else 0


class _Stream:
    """The engine is handed `put` (a sink holding the queue, not the stream), so a stream its
    consumer drops without reading to the end is garbage, and cancels its request."""

    put: Callable[[RequestOutput], None]

    def __init__(self, request_id: str, cancel: Callable[[str], None]) -> None:
        self.request_id = request_id
        self._cancel = cancel
        self.finished = False

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step (its pages are freed)."""
        if not self.finished:
            self._cancel(self.request_id)

    def __del__(self) -> None:
        try:
            self.cancel()
        except Exception:  # interpreter shutdown: the engine is going away too
            pass

    def _accept(self, out: RequestOutput) -> RequestOutput:
        if out.finished:
            self.finished = True
        if out.error is not None:
            raise RequestError(f"request {self.request_id} failed: {out.error}") from out.error
        return out


class RequestStream(_Stream):
    """Outputs of one request for a consumer in any thread: iterate it (blocking)."""

    def __init__(self, request_id: str, cancel: Callable[[str], None]) -> None:
        super().__init__(request_id, cancel)
        self._queue: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()
        self.put = self._queue.put  # engine thread

    def __iter__(self) -> Iterator[RequestOutput]:
        try:
            while not self.finished:
                yield self._accept(self._queue.get())
        finally:
            self.cancel()  # the consumer left early (break, close, garbage collected)


class AsyncRequestStream(_Stream):
    """Outputs of one request for a consumer on an asyncio loop: `async for` over it.

    Created on the consumer's loop; the engine thread hands outputs over with
    `call_soon_threadsafe`, so the loop is never blocked.
    """

    def __init__(self, request_id: str, cancel: Callable[[str], None]) -> None:
        super().__init__(request_id, cancel)
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        put_nowait = self._queue.put_nowait

        def put(out: RequestOutput) -> None:  # engine thread; raises once the loop is closed
            loop.call_soon_threadsafe(put_nowait, out)

        self.put = put

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        try:
            while not self.finished:
                yield self._accept(await self._queue.get())
        finally:
            self.cancel()  # the consumer left early or its task was cancelled
