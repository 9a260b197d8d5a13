"""`llm-deploy web`: the webgpu artifact runs inside the page, in headless Chromium on WebGPU
(SwiftShader here: float32 only), driven by Playwright (tests/web/local_page.mjs).

The server only hands out files: the page's tokens must be the CPU target's, computed in the
browser, and a reload must find every artifact file in the browser's Cache API.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from llm_deploy.runtime.artifact import load_artifact
from llm_deploy.runtime.model_runner import ModelRunner
from llm_deploy.serve.generate import GenerationStats, generate
from llm_deploy.serve.sampler import SamplingParams
from llm_deploy.web.server import WebServer

HERE = Path(__file__).parent
PROMPTS = ["Hello, who are you?", "Write a haiku about the sea 🌊 and 富士山."]


def drive(url: str, **options) -> dict:
    proc = subprocess.run(
        ["node", str(HERE / "local_page.mjs"), url, json.dumps(options)],
        capture_output=True, text=True, timeout=600, cwd=HERE,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_greedy(artifact, prompt: str, max_tokens: int) -> tuple[list[int], GenerationStats, str]:
    """The prompt's ids and the greedy reply of the CPU (llvm) build, through the Python engine's loop."""
    ids = artifact.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    stats = GenerationStats()
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    text = "".join(generate(ModelRunner(artifact), artifact.tokenizer, ids, params, stats))
    return ids, stats, text


@pytest.mark.slow
def test_page_answers_like_the_cpu_target_from_static_files_and_its_cache(
    tiny_webgpu_artifact, tiny_artifact
):
    with WebServer(tiny_webgpu_artifact) as server:
        settings = {"temperature": "0", "max-tokens": "16"}
        api = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 8}
        shown = drive(server.url + "/", prompts=PROMPTS, settings=settings, reloads=1, api=api)
        requests = list(server.requests)

    assert shown["model"] == "llama-tiny"
    assert shown["errors"] == [] and shown["failures"] == [] and shown["consoleErrors"] == []
    cpu = load_artifact(tiny_artifact)
    for prompt, reply in zip(PROMPTS, shown["replies"], strict=True):
        ids, stats, text = cpu_greedy(cpu, prompt, 16)
        assert reply["promptTokens"] == ids  # the page's tokenizer and chat template
        assert reply["tokens"] == stats.token_ids, prompt  # the page's greedy tokens
        assert reply["text"] == text and reply["finish"] == stats.finish_reason
    assert any(len(r["tokens"]) == 16 for r in shown["replies"])  # not an early stop everywhere
    check_api(shown["api"], cpu_greedy(cpu, PROMPTS[0], 8))

    # Only GETs of the page, its modules, its config and the artifact's files: no inference endpoint.
    assert requests and all(method == "GET" and status == 200 for method, _, status in requests), requests
    paths = [path.split("?")[0] for _, path, _ in requests]
    static = [p for p in paths if p in ("/", "/web-config.json") or p.startswith("/web/")]
    fetched = [p for p in paths if p.startswith("/artifact/")]
    assert len(static) + len(fetched) == len(paths), paths
    # Each artifact file was fetched once, by the first load; the reload read them from the cache.
    assert sorted(fetched) == sorted(set(fetched)) and "/artifact/params/params.safetensors" in fetched
    first, again = shown["loads"]
    assert first["downloadedBytes"] > 0 and first["cachedBytes"] == 0
    assert again["downloadedBytes"] == 0 and again["cachedBytes"] == first["downloadedBytes"]
    assert paths.count("/") == 2  # the reload did happen


def check_api(api: dict, expected: tuple) -> None:
    """engine.chat.completions.create, called in the page: OpenAI's chunk and completion shapes,
    the CPU's greedy reply, and seeded sampling that repeats."""
    _, stats, text = expected
    chunks = api["chunks"]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == stats.finish_reason
    assert chunks[-1]["usage"]["completion_tokens"] == len(stats.token_ids)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert api["streamedIds"] == stats.token_ids
    whole = api["whole"]
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"] == {
        "role": "assistant",
        "content": text,
    }
    assert api["wholeIds"] == stats.token_ids  # with the prompt's cache reused
    first, again, other = api["sampled"]
    assert first == again and first != other


@pytest.mark.slow
def test_page_says_when_webgpu_is_missing(tiny_webgpu_artifact):
    with WebServer(tiny_webgpu_artifact) as server:
        shown = drive(server.url + "/", webgpu=False)
    assert not shown["loads"][0]["ready"]
    assert len(shown["errors"]) == 1 and "WebGPU is not available" in shown["errors"][0]
    assert "--enable-unsafe-webgpu" in shown["errors"][0]


@pytest.mark.slow
def test_page_says_when_the_adapter_lacks_shader_f16(tiny_webgpu_f16_artifact):
    with WebServer(tiny_webgpu_f16_artifact) as server:
        shown = drive(server.url + "/")
    assert not shown["loads"][0]["ready"]
    (error,) = shown["errors"]
    assert "'shader-f16'" in error and "float32" in error, error


@pytest.mark.slow
def test_page_says_when_a_buffer_exceeds_the_adapters_limits(tiny_webgpu_artifact):
    # the page checked against a device whose storage bindings hold 16 KiB: embed_tokens
    # (259 x 64 float32, 66 KiB) does not fit one
    with WebServer(tiny_webgpu_artifact) as server:
        shown = drive(server.url + "/?max-binding-bytes=16384")
    assert not shown["loads"][0]["ready"]
    (error,) = shown["errors"]
    assert "embed_tokens" in error and "maxStorageBufferBindingSize 16384" in error, error
