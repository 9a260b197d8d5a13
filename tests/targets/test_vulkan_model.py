"""Models built for Vulkan, run on lavapipe: the same greedy tokens as the CPU target, with one
command buffer (one submission, one wait) per step, nothing created after the first steps, no
function run on the host, and every shader passing spirv-val."""

from __future__ import annotations

import json
import time

import pytest

from tests.targets.vulkan_util import PROMPTS, greedy, spirv_val, vk_device  # noqa: F401


@pytest.fixture(scope="module")
def tiny_vulkan(artifacts_dir, vk_device):  # noqa: F811
    from llm_deploy.build import build_model
    from llm_deploy.runtime.artifact import load_artifact

    path = build_model("llama-tiny", "vulkan", artifacts_dir / "llama-tiny-q0f32-vulkan", progress=False)
    return path, load_artifact(path)


def _recorder(device, steps: list[dict]):
    def on_step(before, seconds):
        steps.append({k: device.stats[k] - before[k] for k in before} | {"seconds": seconds})

    return on_step


def test_tiny_model_on_vulkan_gives_the_cpu_tokens(tiny_vulkan, tiny_runner_factory, vk_device):  # noqa: F811
    from llm_deploy.runtime.model_runner import ModelRunner

    path, artifact = tiny_vulkan
    assert (path / "kernels.spv").is_file() and artifact.executable.target == "vulkan"
    spirv_val(artifact.executable.kernels.spirv())
    runner = ModelRunner(artifact)
    assert runner.device is vk_device
    steps: list[dict] = []
    for k, prompt in enumerate(PROMPTS):
        ours = greedy(runner, k, prompt, 32, _recorder(vk_device, steps))
        cpu = greedy(tiny_runner_factory(), k, prompt, 32)
        assert ours == cpu, f"prompt {k}"
    for s in steps:
        assert s["submissions"] == 1 and s["readbacks"] == 1 and s["host_fallbacks"] == 0, s
    for s in steps[3:]:  # after the first steps, pipelines and descriptor sets are reused
        assert s["pipelines"] == 0 and s["descriptor_sets"] == 0, s
    print(f"\nllama-tiny on {vk_device}: {steps[-1]['dispatches']} dispatches per token")


def test_vulkan_artifact_loads_in_a_runner_without_the_compiler(tiny_vulkan):
    import subprocess
    import sys

    path, _ = tiny_vulkan
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
def test_default_model_on_vulkan_gives_the_cpu_first_tokens(
    artifacts_dir,
    default_runner_factory,
    smollm2,
    vk_device,  # noqa: F811
):
    """SmolLM2-135M, as the CPU artifact is built, from a raw 8-token prompt: 8 greedy tokens."""
    from llm_deploy.build import build_model
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    cpu_runner = default_runner_factory()
    quantization = cpu_runner.artifact.build_options["quantization"]
    t0 = time.perf_counter()
    path = build_model("llama", "vulkan", artifacts_dir / "llama-vulkan", quantization, progress=False)
    build_s = time.perf_counter() - t0
    runner = ModelRunner(load_artifact(path))
    _, _, tokenizer = smollm2
    prompt = tokenizer.encode("The capital of France is")[:8]
    assert 1 <= len(prompt) <= 8
    steps: list[dict] = []
    t0 = time.perf_counter()
    ours = greedy(runner, 0, prompt, 8, _recorder(vk_device, steps))
    run_s = time.perf_counter() - t0
    assert ours == greedy(cpu_runner, 0, prompt, 8)
    for s in steps:
        assert s["submissions"] == 1 and s["readbacks"] == 1 and s["host_fallbacks"] == 0
    last = steps[-1]
    report = {
        "device": str(vk_device),
        "build_s": round(build_s, 1),
        "prefill_and_7_decodes_s": round(run_s, 1),
        "dispatches_per_token": last["dispatches"],
        "decode_step_s": round(last["seconds"], 3),
        "tokens_per_s": round(1 / last["seconds"], 2),
    }
    print("\n" + json.dumps(report))


def test_the_serving_engine_runs_a_vulkan_artifact(tiny_vulkan, tiny_artifact):
    """`serve --device vulkan` and `chat --device vulkan`: the engine on the Vulkan artifact
    answers as the CPU one does."""
    from llm_deploy.serve.api import Engine

    path, _ = tiny_vulkan
    texts = {}
    for device, artifact in (("vulkan", path), ("cpu", tiny_artifact)):
        with Engine(str(artifact), device=device) as engine:
            kernels = engine.artifact.executable.kernels
            r = engine.completions.create(model="m", prompt=[1, 72, 101], max_tokens=6, temperature=0)
            texts[device] = (r.choices[0].text, type(kernels).__module__.split(".")[-2])
    assert texts["vulkan"][1] == "vulkan" and texts["cpu"][1] == "llvm"
    assert texts["vulkan"][0] == texts["cpu"][0]
