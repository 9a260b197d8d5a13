"""Models built for WebGPU, run for real by wgpu (lavapipe in CI): the same greedy tokens as the
CPU target, with one submission and one readback per step, nothing created after the first
steps, and no function run on the host."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.targets.webgpu_util import gpu  # noqa: F401

PROMPTS = [[1, 72, 101, 108, 108, 111], [1, 84, 104, 101, 32, 113, 117, 105, 99, 107, 32], [1, 50]]


def greedy(runner, seq_id: int, prompt: list[int], steps: int, on_step=None) -> list[int]:
    runner.add_sequence(seq_id)
    logits = runner.prefill([seq_id], [prompt])
    tokens = [int(np.argmax(logits[0]))]
    for _ in range(steps - 1):
        before = dict(getattr(runner.device, "stats", {}))
        t0 = time.perf_counter()
        logits = runner.decode([seq_id], [tokens[-1]])
        if on_step is not None:
            on_step(before, time.perf_counter() - t0)
        tokens.append(int(np.argmax(logits[0])))
    runner.remove_sequence(seq_id)
    return tokens


@pytest.fixture(scope="module")
def tiny_webgpu(artifacts_dir, gpu):  # noqa: F811
    from llm_deploy.build import build_model
    from llm_deploy.runtime.artifact import load_artifact

    path = build_model("llama-tiny", "webgpu", artifacts_dir / "llama-tiny-q0f32-webgpu", progress=False)
    return path, load_artifact(path)


def test_tiny_model_on_webgpu_gives_the_cpu_tokens(tiny_webgpu, tiny_runner_factory, gpu):  # noqa: F811
    from llm_deploy.runtime.model_runner import ModelRunner

    path, artifact = tiny_webgpu
    assert (path / "kernels.wgsl").is_file() and artifact.executable.target == "webgpu"
    runner = ModelRunner(artifact)
    assert runner.device is gpu
    steps: list[dict] = []

    def on_step(before, seconds):
        steps.append({k: gpu.stats[k] - before[k] for k in before} | {"seconds": seconds})

    for k, prompt in enumerate(PROMPTS):
        ours = greedy(runner, k, prompt, 32, on_step)
        cpu = greedy(tiny_runner_factory(), k, prompt, 32)
        assert ours == cpu, f"prompt {k}"
    for s in steps:
        assert s["submissions"] == 1 and s["readbacks"] == 1 and s["host_fallbacks"] == 0
        assert s["uploads"] <= 6  # the token ids and the KV cache's step arrays
    for s in steps[3:]:  # after the first steps of the first prompt, everything is reused
        assert s["pipelines"] == 0 and s["bind_groups"] == 0, s
    print(f"\nllama-tiny on {gpu}: {steps[-1]['dispatches']} dispatches per token")


def test_webgpu_artifact_loads_in_a_runner_without_the_compiler(tiny_webgpu):
    """What the runtime imports to load and run a WebGPU artifact (no compiler module)."""
    import subprocess
    import sys

    path, _ = tiny_webgpu
    code = (
        "import sys, numpy as np\n"
        "from llm_deploy.runtime.artifact import load_artifact\n"
        "from llm_deploy.runtime.model_runner import ModelRunner\n"
        f"r = ModelRunner(load_artifact({str(path)!r}))\n"
        "r.add_sequence(0)\n"
        "print(int(np.argmax(r.prefill([0], [[1, 72, 101]])[0])))\n"
        "assert not [m for m in sys.modules if m.startswith('llm_deploy.compiler')], 'compiler imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().isdigit()


@pytest.mark.slow
def test_default_model_on_webgpu_gives_the_cpu_first_tokens(
    artifacts_dir,
    default_runner_factory,
    smollm2,
    gpu,  # noqa: F811
):
    """SmolLM2-135M, as the CPU artifact is built, from a raw 8-token prompt: 8 greedy tokens."""
    import json

    from llm_deploy.build import build_model
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    cpu_runner = default_runner_factory()
    quantization = cpu_runner.artifact.build_options["quantization"]
    t0 = time.perf_counter()
    path = build_model("llama", "webgpu", artifacts_dir / "llama-webgpu", quantization, progress=False)
    build_s = time.perf_counter() - t0
    runner = ModelRunner(load_artifact(path))
    _, _, tokenizer = smollm2
    prompt = tokenizer.encode("The capital of France is")[:8]
    assert 1 <= len(prompt) <= 8
    steps: list[dict] = []

    def on_step(before, seconds):
        steps.append({k: gpu.stats[k] - before[k] for k in before} | {"seconds": seconds})

    t0 = time.perf_counter()
    ours = greedy(runner, 0, prompt, 8, on_step)
    run_s = time.perf_counter() - t0
    assert ours == greedy(cpu_runner, 0, prompt, 8)
    for s in steps:
        assert s["submissions"] == 1 and s["readbacks"] == 1 and s["host_fallbacks"] == 0
    last = steps[-1]
    print(
        "\n"
        + json.dumps(
            {
                "device": str(gpu),
                "build_s": round(build_s, 1),
                "prefill_and_7_decodes_s": round(run_s, 1),
                "dispatches_per_token": last["dispatches"],
                "decode_step_s": round(last["seconds"], 3),
                "tokens_per_s": round(1 / last["seconds"], 2),
            }
        )
    )


def test_forked_sequences_on_webgpu_continue_as_on_the_cpu(tiny_webgpu, tiny_runner_factory, gpu):  # noqa: F811
    """A fork shares the parent's pages; its partial last page is copied before either appends
    (on the host's table and, replayed, in the device's pools). Both continuations and a batched
    decode of the two give the CPU's logits."""
    from llm_deploy.runtime.model_runner import ModelRunner

    _, artifact = tiny_webgpu
    prompt = list(range(1, 21))  # 20 tokens: the second page is partial when the fork happens
    results, runners = [], (ModelRunner(artifact), tiny_runner_factory())
    for runner in runners:
        runner.add_sequence(0)
        runner.prefill([0], [prompt])
        runner.fork_sequence(0, 1)
        a = runner.decode([0], [7])
        b = runner.decode([1], [9])
        both = runner.decode([0, 1], [int(np.argmax(a[0])), int(np.argmax(b[0]))])
        results.append((a, b, both))
    tables = [runners[0].cache.page_table(s) for s in (0, 1)]
    assert tables[0][0] == tables[1][0] and tables[0][1] != tables[1][1]  # shared, then copied
    for ours, cpu in zip(*results):
        np.testing.assert_allclose(ours, cpu, rtol=1e-4, atol=1e-4)


def test_cli_builds_for_webgpu_and_chats_on_the_artifacts_device(tmp_path, capsys, gpu):  # noqa: F811
    from llm_deploy.cli import main

    out = tmp_path / "tiny-webgpu"
    assert (
        main(["build", "--model", "llama-tiny", "--target", "webgpu", "--output", str(out), "--quiet"]) == 0
    )
    assert (out / "kernels.wgsl").is_file()
    capsys.readouterr()
    assert main(["chat", str(out), "--prompt", "hi", "--max-tokens", "4", "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip() != ""
    with pytest.raises(SystemExit, match="built for --target webgpu.*not cpu"):
        main(["chat", str(out), "--prompt", "hi", "--device", "cpu"])


def test_the_serving_engine_runs_a_webgpu_artifact(tiny_webgpu, tiny_artifact):
    """`serve`/`chat` on a WebGPU artifact (its device by default): continuous batching over the
    device's runner answers as the CPU one does."""
    from llm_deploy.serve.api import Engine

    path, _ = tiny_webgpu
    texts = {}
    for device, artifact in (("webgpu", path), ("cpu", tiny_artifact)):
        with Engine(str(artifact), device=device) as engine:
            kernels = engine.artifact.executable.kernels
            r = engine.completions.create(model="m", prompt=[1, 72, 101], max_tokens=6, temperature=0)
            texts[device] = (r.choices[0].text, type(kernels).__module__.split(".")[-2])
    assert texts["webgpu"][1] == "webgpu" and texts["cpu"][1] == "llvm"
    assert texts["webgpu"][0] == texts["cpu"][0]


def test_a_float16_kv_cache_needs_shader_f16_and_runs_where_it_is(artifacts_dir, gpu):  # noqa: F811
    """--kv-dtype float16: the attention kernel stores float16 pools, so the build needs
    `shader-f16`. Where the adapter has it (lavapipe), the tokens are the CPU build's; on a
    device without it, loading the kernels fails with the feature's name."""
    from llm_deploy.build import build_model
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner
    from llm_deploy.targets.webgpu.runtime import WebGPUError, request_device

    built = {
        target: build_model(
            "llama-tiny", target, artifacts_dir / f"tiny-kv16-{target}", progress=False, kv_dtype="float16"
        )
        for target in ("webgpu", "llvm")
    }
    gpu_art = load_artifact(built["webgpu"])
    assert gpu_art.executable.kernels.needs_f16
    assert greedy(ModelRunner(gpu_art), 0, PROMPTS[0], 12) == greedy(
        ModelRunner(load_artifact(built["llvm"])), 0, PROMPTS[0], 12
    )
    plain = request_device(f16=False)
    kernels = load_artifact(built["webgpu"]).executable.kernels
    from llm_deploy.targets.webgpu.kernels import check_features

    with pytest.raises(WebGPUError, match="shader-f16"):
        check_features(kernels, plain)
