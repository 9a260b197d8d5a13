"""The command line, run as a user runs it: a real subprocess per command."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys

import httpx
import pytest


def cli(*args: str, input: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_deploy.cli", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    proc = cli("build", "--model", "llama-tiny", "--output", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_build_prints_artifact_path(built):
    out, proc = built
    assert proc.stdout.strip() == str(out)
    assert (out / "manifest.json").is_file() and (out / "kernels.o").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "llvm" and manifest["build_options"]["quantization"] == "q0f32"


def test_chat_prompt_is_greedy_and_matches_the_python_api(built):
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner
    from llm_deploy.serve.generate import generate
    from llm_deploy.serve.sampler import SamplingParams

    out, _ = built
    proc = cli("chat", str(out), "--prompt", "Hi there", "--temperature", "0", "--max-tokens", "12")
    assert proc.returncode == 0, proc.stderr
    runner = ModelRunner(load_artifact(out))
    tok = runner.artifact.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi there"}])
    expected = "".join(generate(runner, tok, ids, SamplingParams(temperature=0, max_tokens=12)))
    assert proc.stdout == expected + "\n"


def test_chat_reads_prompt_from_stdin(built):
    out, _ = built
    a = cli("chat", str(out), "--temperature", "0", "--max-tokens", "5", input="Hello")
    b = cli("chat", str(out), "--prompt", "Hello", "--temperature", "0", "--max-tokens", "5")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_chat_seed_reproduces(built):
    out, _ = built
    runs = [
        cli("chat", str(out), "--prompt", "Hi", "--temperature", "1", "--seed", str(s), "--max-tokens", "16")
        for s in (1, 1, 2)
    ]
    assert all(r.returncode == 0 for r in runs)
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout != runs[2].stdout


def test_bench_json(built):
    out, _ = built
    proc = cli("bench", str(out), "--prompt-len", "16", "--gen-len", "8", "--runs", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"prefill_tps", "decode_tps", "ttft_s", "peak_rss_mb"}
    assert all(v > 0 for v in result.values())


def test_web_serves_the_page_and_the_artifact_and_computes_nothing(tmp_path):
    out = tmp_path / "tiny-webgpu"
    assert (
        cli(
            "build", "--model", "llama-tiny", "--target", "webgpu", "--quiet", "--output", str(out)
        ).returncode
        == 0
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_deploy.cli", "web", str(out), "--port", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = proc.stdout.readline().split()[2].rstrip("/")
        page = httpx.get(url + "/")
        assert page.status_code == 200 and '<script type="module" src="/web/local.js">' in page.text
        config = httpx.get(url + "/web-config.json").json()
        assert config["model"] == "llama-tiny" and config["artifact"] == "/artifact/"
        manifest = httpx.get(url + "/artifact/manifest.json").json()
        assert manifest["target"] == "webgpu"
        assert httpx.get(url + "/web/runtime/engine.js").headers["content-type"] == "text/javascript"
        host, port = url.removeprefix("http://").split(":")
        raw = http.client.HTTPConnection(host, int(port))  # sends the path as written, dots and all
        raw.request("GET", "/artifact/../../../../etc/passwd")
        assert raw.getresponse().status == 404
        assert httpx.get(url + "/web/server.py").status_code == 404
        assert httpx.post(url + "/v1/chat/completions", json={}).status_code == 405
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_web_refuses_what_the_browser_cannot_run(tmp_path, built):
    proc = cli("web", str(tmp_path / "nope"))
    assert proc.returncode == 1 and "nope is not an artifact folder" in proc.stderr
    llvm_artifact, _ = built
    proc = cli("web", str(llvm_artifact))
    assert proc.returncode == 1 and "--target webgpu" in proc.stderr


def test_bad_input_is_a_clear_error(tmp_path):
    proc = cli("chat", str(tmp_path / "nope.gguf"), "--prompt", "x")
    assert proc.returncode == 1 and "nope.gguf" in proc.stderr
    proc = cli(
        "build", "--model", "llama-tiny", "--quantization", "q9", "--quiet", "--output", str(tmp_path / "o")
    )
    assert proc.returncode == 1 and "q9" in proc.stderr
