"""The HTTP server, run for real (uvicorn on a free loopback port, in a thread) and driven by the
official `openai` client and by raw HTTP.

The default model shows the API end to end (its greedy answer is known: FACTS.md); llama-tiny
serves the tests where the model does not matter: malformed requests, limits, concurrency and
disconnects. Greedy text is held to `serve.generate`, the one-sequence loop, on the same ids.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from llm_deploy import AsyncEngine
from llm_deploy.runtime.artifact import load_artifact
from llm_deploy.runtime.model_runner import ModelRunner
from llm_deploy.serve.generate import generate
from llm_deploy.serve.sampler import SamplingParams
from llm_deploy.serve.server import ServerConfig, ServerThread, create_app

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny(tiny_artifact):
    return load_artifact(tiny_artifact)


def serving(artifact, config: ServerConfig | None = None, **engine_options):
    """A server over a fresh engine; yields (url, engine)."""
    engine = AsyncEngine(artifact, **engine_options)
    with engine, ServerThread(create_app(engine, config)) as server:
        yield server.url, engine


@pytest.fixture(scope="module")
def tiny_server(tiny):
    yield from serving(tiny, ServerConfig(max_request_bytes=64 << 10), num_pages=128, max_num_seqs=16)


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(r"^(llm_deploy_\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def wait_idle(url: str, engine) -> dict[str, float]:
    assert engine.core.wait_idle(30)
    deadline = time.monotonic() + 10
    while (m := metrics(url))["llm_deploy_requests_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    return m


def alone(artifact, ids, **params) -> str:
    return "".join(generate(ModelRunner(artifact), artifact.tokenizer, ids, SamplingParams(**params)))


# -- the default model through the openai client ---------------------------------------------------


@pytest.fixture(scope="module")
def default_server(default_artifact):
    yield from serving(load_artifact(default_artifact))


@pytest.fixture(scope="module")
def client(default_server):
    url, _ = default_server
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)


def in_parallel(*calls):
    """Run the calls at once (the engine batches them): the default model is slow here."""
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except Exception as e:  # reported by the assertion below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    return results


@pytest.mark.slow
def test_default_model_chat_through_the_openai_client(client, default_artifact):
    tokenizer = load_artifact(default_artifact).tokenizer
    (model,) = [m.id for m in client.models.list()]
    create = client.chat.completions.create
    greedy = dict(model=model, messages=QUESTION, temperature=0, max_tokens=8)
    sampled = dict(model=model, messages=QUESTION, temperature=1.0, max_tokens=4, n=2, seed=7)
    whole, stream, choices, again, stopped = in_parallel(
        lambda: create(**greedy, logprobs=True, top_logprobs=3),
        lambda: list(create(**greedy, stream=True, stream_options={"include_usage": True})),
        lambda: create(**sampled),
        lambda: create(**sampled),
        lambda: create(**greedy, stop=[" Paris"]),
    )

    text = whole.choices[0].message.content
    assert text == "The capital of France is Paris." and whole.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    assert len({c.id for c in stream}) == 1 and stream[-1].choices == []
    # Usage counts are the tokenizer's: the rendered template, and one logprob per generated token.
    prompt_ids = tokenizer.apply_chat_template(QUESTION)
    assert whole.usage.prompt_tokens == stream[-1].usage.prompt_tokens == len(prompt_ids)
    tokens = whole.choices[0].logprobs.content
    assert whole.usage.completion_tokens == stream[-1].usage.completion_tokens == len(tokens) == 8
    assert [t.token for t in tokens[:7]] == [
        tokenizer.decode([i]) for i in (504, 3575, 282, 4649, 314, 7042, 30)
    ]
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-9 for t in tokens)

    assert [c.index for c in choices.choices] == [0, 1] and choices.usage.completion_tokens == 8
    assert [c.message.content for c in again.choices] == [c.message.content for c in choices.choices]
    assert stopped.choices[0].message.content == "The capital of France is"
    assert stopped.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_default_model_completions_through_the_openai_client(client, default_artifact):
    tokenizer = load_artifact(default_artifact).tokenizer
    model = client.models.list().data[0].id
    prompt = "The capital of France is"
    kw = dict(model=model, prompt=prompt, temperature=0, max_tokens=6)
    whole, stream, stopped = in_parallel(
        lambda: client.completions.create(**kw, logprobs=2),
        lambda: list(client.completions.create(**kw, stream=True)),
        lambda: client.completions.create(**kw, stop=["."], seed=3),
    )
    text = whole.choices[0].text
    assert text and "".join(c.choices[0].text for c in stream) == text
    assert whole.usage.prompt_tokens == len(tokenizer.encode(prompt))
    lp = whole.choices[0].logprobs
    assert whole.usage.completion_tokens == len(lp.tokens) == 6 and "".join(lp.tokens) == text
    assert all(max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    if "." in text:
        assert stopped.choices[0].text == text[: text.index(".")]
        assert stopped.choices[0].finish_reason == "stop"
    else:
        assert stopped.choices[0].text == text


# -- malformed requests ------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
OK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def with_(**fields) -> dict:
    return {**OK, **fields}


# (path, body: dict or raw text, status, error code or None, what the message must mention)
MALFORMED = [
    (CHAT, "{not json", 400, "invalid_json", "JSON"),
    (CHAT, "[1, 2]", 400, "invalid_value", "body"),
    (CHAT, {"max_tokens": 2}, 400, "invalid_value", "messages"),
    (CHAT, with_(messages=[]), 400, "invalid_value", "messages"),
    (CHAT, with_(messages="hi"), 400, "invalid_value", "messages"),
    (CHAT, with_(messages=[{"role": "wizard", "content": "hi"}]), 400, "invalid_value", "role"),
    (CHAT, with_(messages=[{"role": "user"}]), 400, "invalid_value", "content"),
    (CHAT, with_(messages=[{"role": "user", "content": 5}]), 400, "invalid_value", "content"),
    (CHAT, with_(max_tokens=-1), 400, "invalid_value", "max_tokens"),
    (CHAT, with_(max_tokens="10"), 400, "invalid_value", "max_tokens"),
    (CHAT, with_(temperature=2.5), 400, "invalid_value", "temperature"),
    (CHAT, with_(temperature="hot"), 400, "invalid_value", "temperature"),
    (CHAT, with_(top_p=0), 400, "invalid_value", "top_p"),
    (CHAT, with_(top_p=1.5), 400, "invalid_value", "top_p"),
    (CHAT, with_(n=0), 400, "invalid_value", "n"),
    (CHAT, with_(logprobs=True, top_logprobs=21), 400, "invalid_value", "top_logprobs"),
    (CHAT, with_(top_logprobs=2), 400, "invalid_value", "logprobs"),
    (CHAT, with_(stop=[""]), 400, "invalid_value", "stop"),
    (CHAT, with_(logit_bias={"99999999": 1}), 400, "invalid_value", "logit_bias"),
    (CHAT, with_(presence_penalty=3), 400, "invalid_value", "presence_penalty"),
    (CHAT, with_(stream_options={"include_usage": True}), 400, "invalid_value", "stream"),
    (
        CHAT,
        with_(messages=[{"role": "user", "content": "hello " * 400}]),
        400,
        "context_length_exceeded",
        "context window",
    ),  # fmt: skip
    (
        CHAT,
        with_(tools=[{"type": "function", "function": {"name": "f"}}]),
        400,
        "unsupported_parameter",
        "tools",
    ),  # fmt: skip
    (CHAT, with_(response_format={"type": "json_object"}), 400, "unsupported_parameter", "response_format"),
    (CHAT, with_(frequency_penaltyy=1), 400, "unknown_parameter", "frequency_penaltyy"),
    (CHAT, with_(model="gpt-4o"), 404, "model_not_found", "gpt-4o"),
    (
        CHAT,
        {**OK, "messages": [{"role": "user", "content": "x" * (70 << 10)}]},
        413,
        "request_too_large",
        "limit",
    ),  # fmt: skip
    ("/v1/completions", {"max_tokens": 2}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "invalid_value", "one prompt"),
    ("/v1/completions", {"prompt": "a", "echo": True}, 400, "unsupported_parameter", "echo"),
    ("/v1/completions", {"prompt": [1, -5]}, 400, "invalid_value", "vocabulary"),
    ("/v1/chat/complete", OK, 404, "not_found", "/v1/chat/complete"),
]


def test_malformed_requests_get_openai_errors(tiny_server):
    url, engine = tiny_server
    with httpx.Client(base_url=url, timeout=60) as http:
        for path, body, status, code, mention in MALFORMED:
            raw = body if isinstance(body, str) else json.dumps(body)
            r = http.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, r.text
            assert error["code"] == code and mention.lower() in error["message"].lower(), (body, error)
            assert "Traceback" not in r.text
        assert http.get("/v1/models", params={"x": 1}).status_code == 200
        r = http.get("/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        r = http.post(CHAT, json=OK)  # the server answers normally afterwards
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    assert len(MALFORMED) >= 15
    m = wait_idle(url, engine)
    assert m['llm_deploy_requests_total{endpoint="/v1/chat/completions",status="400"}'] >= 20
    assert engine.stats().failed_requests == 0


def test_models_health_metrics_docs(tiny_server, tiny):
    url, engine = tiny_server
    models = httpx.get(url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["llama-tiny"]
    assert models["data"][0]["max_model_len"] == 256
    assert httpx.get(url + "/v1/models/llama-tiny").json()["id"] == "llama-tiny"
    assert httpx.get(url + "/v1/models/other").json()["error"]["code"] == "model_not_found"
    assert httpx.get(url + "/health").json() == {"status": "ok"}

    r = httpx.post(url + "/v1/completions", json={"prompt": "abc", "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200
    m = wait_idle(url, engine)
    stats = engine.stats()
    assert m["llm_deploy_kv_pages_total"] == 128 and m["llm_deploy_kv_pages_used"] == stats.pages_used
    assert m["llm_deploy_generation_tokens_total"] == stats.generated_tokens
    assert m['llm_deploy_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert m["llm_deploy_usage_completion_tokens_total"] >= 3
    assert m['llm_deploy_time_to_first_token_seconds_bucket{le="+Inf"}'] >= 1
    assert m["llm_deploy_request_latency_seconds_count"] >= 1

    spec = httpx.get(url + "/openapi.json").json()
    chat = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert (
        chat["temperature"]["anyOf"][0]["maximum"] == 2.0
        and chat["top_logprobs"]["anyOf"][0]["maximum"] == 20
    )
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"} <= set(
        spec["paths"]
    )
    assert httpx.get(url + "/docs").status_code == 200


def test_api_key_and_cors(tiny):
    config = ServerConfig(api_key="s3cret", cors_origins=("http://example.com",))
    for url, _ in serving(tiny, config, num_pages=16):
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.post(url + CHAT, json=OK, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="llama-tiny", messages=OK["messages"], max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
        assert httpx.get(url + "/health").status_code == 200  # open, for load balancers
        preflight = httpx.options(
            url + CHAT,
            headers={"Origin": "http://example.com", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"},
        )  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://example.com"


def test_over_capacity_is_503_and_recovers(tiny):
    config = ServerConfig(max_queue_len=0)
    for url, engine in serving(tiny, config, num_pages=32, max_num_seqs=1):
        long = {"prompt": "go", "max_tokens": 200, "ignore_eos": True, "stream": True}
        with (
            httpx.Client(base_url=url, timeout=60) as http,
            http.stream("POST", "/v1/completions", json=long) as r,
        ):
            lines = r.iter_lines()  # held: a dropped iterator closes the response
            assert next(lines).startswith("data: ")
            busy = http.post(CHAT, json=OK)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "server_overloaded"
            assert list(lines)[-2:] == ["data: [DONE]", ""]
        wait_idle(url, engine)
        assert httpx.post(url + CHAT, json=OK, timeout=60).status_code == 200


# -- concurrency and disconnects -------------------------------------------------------------------


def test_sixteen_concurrent_streams_match_their_solo_text(tiny_server, tiny):
    url, engine = tiny_server
    prompts = [f"prompt number {i}: " + "word " * (i % 5) for i in range(16)]
    expected = [
        alone(tiny, tiny.tokenizer.encode(p), temperature=0, max_tokens=24, ignore_eos=True) for p in prompts
    ]
    before = engine.stats()

    async def stream_one(client, prompt):
        chunks = await client.completions.create(
            model="llama-tiny", prompt=prompt, temperature=0, max_tokens=24, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        return [c async for c in chunks]

    async def main():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0) as client:
            return await asyncio.gather(*(stream_one(client, p) for p in prompts))

    results = asyncio.run(main())
    assert ["".join(c.choices[0].text for c in chunks) for chunks in results] == expected
    assert all(len({c.id for c in chunks}) == 1 for chunks in results)
    wait_idle(url, engine)
    after = engine.stats()
    assert after.finished_requests - before.finished_requests == 16
    assert after.max_decode_batch > 1  # they were decoded together


def test_clients_that_disconnect_leave_no_pages_in_use(tiny_server):
    url, engine = tiny_server
    before = engine.stats()
    long = {"prompt": "tell", "max_tokens": 220, "ignore_eos": True}
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(3):  # read a few events of a stream, then hang up
            with http.stream("POST", "/v1/completions", json={**long, "stream": True}) as r:
                lines = r.iter_lines()
                assert (
                    next(lines).startswith("data: ")
                    and next(lines) == ""
                    and next(lines).startswith("data: ")
                )
    # A non-streaming client that gives up while its completion is being generated.
    assert engine.core.wait_idle(30)
    mark = engine.stats().generated_tokens
    body = json.dumps(long).encode()
    with socket.create_connection((httpx.URL(url).host, httpx.URL(url).port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while engine.stats().generated_tokens == mark and time.monotonic() < deadline:
            time.sleep(0.005)
    m = wait_idle(url, engine)
    stats = engine.stats()
    assert stats.aborted_requests - before.aborted_requests == 4
    assert stats.generated_tokens - before.generated_tokens < 4 * 220
    assert m["llm_deploy_kv_pages_used"] == m["llm_deploy_prefix_cache_pages"] == stats.prefix_cache_pages
    assert m["llm_deploy_num_requests_running"] == 0 and m["llm_deploy_requests_in_flight"] == 0
    assert httpx.post(url + CHAT, json=OK, timeout=60).status_code == 200


@pytest.mark.slow
def test_serve_command(tiny_artifact):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llm_deploy.cli", "serve", str(tiny_artifact), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--api-key", "k", "--served-model-name", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        assert client.completions.create(model="tiny", prompt="a", max_tokens=3).usage.completion_tokens <= 3
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and f"serving tiny at http://127.0.0.1:{port}" in out, out
