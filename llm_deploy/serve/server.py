"""The OpenAI-compatible HTTP server: `llm-deploy serve ARTIFACT_OR_MODEL`, FastAPI over uvicorn.

    POST /v1/chat/completions   POST /v1/completions   (stream=true: server-sent events)
    GET  /v1/models             GET  /health           GET /metrics (Prometheus)
    GET  /                      a chat page over the same API      GET /docs (OpenAPI)

Thin by design: requests are validated against OpenAI's schema (protocol.py), handed to
`AsyncEngine` (which does all the work) and its response objects are written back as JSON or as
`data:` events. Every error is an OpenAI error object (`{"error": {message, type, param, code}}`)
with the status OpenAI would send; an unexpected failure is a 500 with a message, never a stack
trace, and the server goes on.

Capacity: the engine batches up to `max_num_seqs` sequences; up to `max_queue_len` more requests
may wait; beyond that a request gets a 503 (with Retry-After) at once rather than a long wait.
A client that disconnects cancels its request (its KV pages return to the pool at the next step).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from llm_deploy.serve.api import AsyncEngine
from llm_deploy.serve.engine import EngineClosedError, PromptTooLongError
from llm_deploy.serve.metrics import Metrics
from llm_deploy.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    engine_kwargs,
    unsupported_fields,
)
from llm_deploy.serve.request import RequestError
from llm_deploy.serve.responses import ChatCompletion, Completion
from llm_deploy.serve.sampler import SamplingParamsError

DEFAULT_MAX_REQUEST_BYTES = 4 << 20  # a full context window of text is far less


@dataclass(frozen=True)
class ServerConfig:
    """How the server faces its clients; the engine's own limits (batch, KV pool) live on it."""

    model_name: str | None = None  # the id clients use (default: the engine's model name)
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <api_key>`
    max_queue_len: int = 64  # requests that may wait beyond a full batch before 503s
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    cors_origins: tuple[str, ...] = ()  # e.g. ("*",) or ("https://example.com",)
    cors_allow_credentials: bool = False


# -- errors ----------------------------------------------------------------------------------------

_ERROR_TYPES = {401: "authentication_error", 404: "invalid_request_error", 413: "invalid_request_error"}


class APIError(Exception):
    """An error answered as OpenAI answers it: a status and `{"error": {...}}`."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    @property
    def type(self) -> str:
        if self.status >= 500:
            return "server_error"
        return _ERROR_TYPES.get(self.status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _engine_error(e: BaseException, prompt_field: str | None = None) -> APIError:
    """What a client is told about an exception out of the engine."""
    match e:
        case PromptTooLongError():
            return APIError(400, str(e), prompt_field, "context_length_exceeded")
        case SamplingParamsError():
            field = re.match(r"SamplingParams\.(\w+)", str(e))
            return APIError(400, str(e).removeprefix("SamplingParams."), field and field[1], "invalid_value")
        case ValueError() | TypeError():
            return APIError(400, str(e), None, "invalid_value")
        case EngineClosedError():
            return APIError(503, "the engine is shutting down", None, "engine_closed")
        case RequestError() if type(e.__cause__).__name__ == "OutOfPagesError":
            return APIError(503, f"not enough KV cache memory for this request now: {e.__cause__}", None, "server_overloaded")  # fmt: skip
        case RequestError():
            return APIError(
                500, f"the request failed in the engine: {e.__cause__ or e}", None, "internal_error"
            )
    return APIError(500, f"internal error: {type(e).__name__}: {e}", None, "internal_error")


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if any(err["type"] == "json_invalid" for err in errors):
        return APIError(400, "the request body is not valid JSON", None, "invalid_json")
    unknown = [".".join(map(str, err["loc"][1:])) for err in errors if err["type"] == "extra_forbidden"]
    if unknown:
        return APIError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0], "unknown_parameter")  # fmt: skip
    by_field: dict[str, list[str]] = {}  # a union reports once per member it tried
    got: dict[str, str] = {}
    for err in errors:
        where = ".".join(str(x) for x in err["loc"][1:] if not _is_union_member(x))
        by_field.setdefault(where, []).append(err["msg"])
        if err["type"] != "missing" and "input" in err:
            got.setdefault(where, f" (got {_short(err['input'])})")
    parts = [f"{where or 'body'}: {' or '.join(dict.fromkeys(msgs))}{got.get(where, '')}" for where, msgs in by_field.items()]  # fmt: skip
    return APIError(400, "; ".join(parts[:3]), next(iter(by_field)) or None, "invalid_value")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_union_member(loc: object) -> bool:
    """pydantic names the member of a union it tried ('str', 'list[int]', 'function-after[...]')."""
    return isinstance(loc, str) and (not loc.isidentifier() or loc in ("str", "int", "float", "bool"))


# -- the ASGI guard: API key and request size, before any parsing -----------------------------------


class _Guard:
    """Checks the API key on /v1/* and refuses bodies over `max_bytes` (413) before the app reads
    them: the body is buffered here up to the limit, then replayed to the app."""

    def __init__(self, app: Any, config: ServerConfig, on_reject: Callable[[str, int], None]) -> None:
        self.app, self.config, self.on_reject = app, config, on_reject

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.config.api_key
        if key and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                message = (
                    "Incorrect API key provided."
                    if given
                    else "Missing API key: send 'Authorization: Bearer <key>'."
                )
                return await self._reject(scope, send, APIError(401, message, None, "invalid_api_key"))
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.config.max_request_bytes
        too_big = APIError(413, f"the request body is larger than this server's limit of {limit} bytes", None, "request_too_large")  # fmt: skip
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await self._reject(scope, send, too_big)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                return await self._reject(scope, send, too_big)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: dict, send: Callable, error: APIError) -> None:
        self.on_reject(scope["path"], error.status)
        payload = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if error.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


# -- the application ------------------------------------------------------------------------------

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 500, 503)}
_STREAM_DOC = {
    "text/event-stream": {"schema": {"type": "string"}, "example": "data: {...}\n\ndata: [DONE]\n\n"}
}


class Server:
    """The handlers' state: the engine, the config and the metrics. `create_app` wires it up."""

    def __init__(self, engine: AsyncEngine, config: ServerConfig) -> None:
        self.engine, self.config = engine, config
        self.model_name = config.model_name or engine.model
        self.metrics = Metrics()
        self.in_flight = 0  # completion requests accepted and not yet over (event loop thread only)
        self.created = int(time.time())

    @property
    def capacity(self) -> int:
        return self.engine.core.max_num_seqs + self.config.max_queue_len

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"The model `{model}` does not exist; this server serves `{self.model_name}`", "model", "model_not_found")  # fmt: skip

    def check_logit_bias(self, bias: dict[str, float] | None) -> None:
        vocab = self.engine.core.runner.vocab_size
        for key in bias or {}:
            if not (key.isdigit() and int(key) < vocab):
                raise APIError(400, f"logit_bias keys must be token ids in [0, {vocab}), got {key!r}", "logit_bias", "invalid_value")  # fmt: skip

    async def complete(
        self,
        request: Request,
        endpoint: str,
        create: Callable,
        kwargs: dict,
        stream: bool,
        include_usage: bool,
    ) -> Response:
        if self.in_flight >= self.capacity:
            raise APIError(503, f"the server is at capacity ({self.in_flight} requests in flight); retry later", None, "server_overloaded", {"Retry-After": "1"})  # fmt: skip
        rid = uuid.uuid4().hex
        self.in_flight += 1
        watcher = asyncio.create_task(self._watch(request))
        watcher.add_done_callback(lambda _: self._release(rid))  # runs even if cancelled unstarted
        started = time.perf_counter()
        try:
            stream_options = {"include_usage": True} if stream else None  # usage feeds the metrics
            result = await create(stream=stream, stream_options=stream_options, request_id=rid, **kwargs)
        except BaseException as e:
            watcher.cancel()
            if isinstance(e, APIError) or not isinstance(e, Exception):  # cancelled, interrupted
                raise
            prompt_field = "messages" if endpoint == "/v1/chat/completions" else "prompt"
            raise _engine_error(e, prompt_field) from None
        if stream:
            events = self._events(result, include_usage, watcher, endpoint, started)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        watcher.cancel()
        self._usage(result.usage, started)
        self.metrics.request_done(endpoint, 200)
        return JSONResponse(result.to_dict())

    @staticmethod
    async def _watch(request: Request) -> None:
        """Runs while a request is answered and ends when its client is gone: a disconnect, or
        the server's own end of the exchange once the response is complete (uvicorn reports
        both as `http.disconnect`). Cancelled when the handler is done first."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    def _release(self, rid: str) -> None:
        self.engine.core.cancel(rid)  # the client left before the end; a no-op once it finished
        self.in_flight -= 1

    async def _events(
        self, chunks: Any, include_usage: bool, watcher: asyncio.Task, endpoint: str, started: float
    ) -> AsyncIterator[str]:
        status = 200
        try:
            try:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        self._usage(chunk.usage, started)
                        if not include_usage:
                            continue
                    yield f"data: {json.dumps(chunk.to_dict())}\n\n"
            except RequestError as e:  # mid-stream: the status is already sent, so say it in an event
                error = _engine_error(e)
                status = error.status
                yield f"data: {json.dumps(error.body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            watcher.cancel()
            self.metrics.request_done(endpoint, status)
            await chunks.aclose()

    def _usage(self, usage: Any, started: float) -> None:
        if usage is not None:
            self.metrics.usage(
                usage.prompt_tokens, usage.completion_tokens, usage.extra, time.perf_counter() - started
            )

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "llm_deploy",
            "max_model_len": self.engine.core.runner.context_window,
        }


def create_app(engine: AsyncEngine, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI application over `engine` (which the caller owns and closes)."""
    config = config or ServerConfig()
    server = Server(engine, config)
    app = FastAPI(
        title="llm_deploy",
        summary="An OpenAI-compatible API over a compiled Llama-family model.",
        version=_version(),
    )
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        server.metrics.request_done(_endpoint(request.url.path), exc.status)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _api_error(request, _validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return await _api_error(request, APIError(exc.status_code, message, None, code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return await _api_error(request, _engine_error(exc))

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={200: {"content": _STREAM_DOC}, **_ERRORS},
        summary="Chat completion (stream=true: chat.completion.chunk events)",
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        _check_body(server, body)
        kwargs = engine_kwargs(body, exclude={"messages"})
        messages = [m.to_engine() for m in body.messages]
        create = engine.chat.completions.create
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await server.complete(
            request, "/v1/chat/completions", lambda **kw: create(messages=messages, **kw), kwargs, body.stream, include_usage
        )  # fmt: skip

    @app.post(
        "/v1/completions",
        response_model=Completion,
        responses={200: {"content": _STREAM_DOC}, **_ERRORS},
        summary="Text completion (stream=true: text_completion events)",
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _check_body(server, body)
        try:
            prompt = body.single_prompt()
        except ValueError as e:
            raise APIError(400, str(e), "prompt", "invalid_value") from None
        kwargs = engine_kwargs(body, exclude={"prompt"})
        create = engine.completions.create
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await server.complete(
            request, "/v1/completions", lambda **kw: create(prompt=prompt, **kw), kwargs, body.stream, include_usage
        )  # fmt: skip

    @app.get("/v1/models", summary="The served model")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.get("/v1/models/{model_id:path}", responses={404: {"model": ErrorResponse}}, summary="One model")
    async def model(model_id: str) -> dict[str, Any]:
        server.check_model(model_id)
        return server.model_card()

    @app.get("/health", summary="200 while the engine runs, 503 once it is closed")
    async def health() -> Response:
        if engine.core.closed:
            return JSONResponse({"status": "closed"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        text = server.metrics.render(engine.stats(), server.in_flight)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    for path, name, media in (
        ("/", "chat.html", "text/html"),
        ("/chat.js", "chat.js", "text/javascript"),
        ("/chat.css", "chat.css", "text/css"),
    ):
        app.add_api_route(path, _static(name, media), methods=["GET"], include_in_schema=False)

    _mount_guard(app, config, server)
    return app


def _mount_guard(app: FastAPI, config: ServerConfig, server: Server) -> None:
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(
        _Guard,
        config=config,
        on_reject=lambda path, status: server.metrics.request_done(_endpoint(path), status),
    )
    if config.cors_origins:  # added last: outermost, so preflight requests never meet the key check
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=config.cors_allow_credentials,
        )


_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models")


def _endpoint(path: str) -> str:
    """The metrics label of a path: one of ours, or "other" (a label per unknown path would let
    any client grow the metrics without bound)."""
    return path if path in _ENDPOINTS else "other"


def _check_body(server: Server, body: Any) -> None:
    server.check_model(body.model)
    unsupported = unsupported_fields(body)
    if unsupported:
        raise APIError(400, f"{', '.join(unsupported)} {'is' if len(unsupported) == 1 else 'are'} not supported by this server yet", unsupported[0], "unsupported_parameter")  # fmt: skip
    server.check_logit_bias(body.logit_bias)


def _static(name: str, media_type: str) -> Callable:
    async def page() -> Response:
        return Response((resources.files("llm_deploy") / "web" / name).read_bytes(), media_type=media_type)

    return page


def _version() -> str:
    from llm_deploy import __version__

    return __version__


# -- running it -------------------------------------------------------------------------------------


class ServerThread:
    """uvicorn serving `app` from a background thread (tests, benchmarks, notebooks):

        with ServerThread(create_app(engine)) as server:
            openai.OpenAI(base_url=server.url + "/v1", api_key="-")...

    `port=0` takes a free port; `url` says which."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve(
    model: Any,
    config: ServerConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    **engine_options: Any,
) -> None:
    """`llm-deploy serve`: load (or build, once) `model`, then serve it until Ctrl-C.
    `engine_options` go to `AsyncEngine` (device, max_num_seqs, kv_cache_bytes, num_threads, ...)."""
    import uvicorn

    with AsyncEngine(model, **engine_options) as engine:
        app = create_app(engine, config)
        name = app.state.server.model_name
        print(f"serving {name} at http://{host}:{port} (chat page at /, OpenAI API at /v1, docs at /docs)")
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
