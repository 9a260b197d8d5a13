"""WebGPU decode speed and overheads of a built model, in one run.

    python bench/webgpu.py [--model llama] [--quantization q0f32] [--steps 8]

Builds the model for webgpu (into --output, fresh unless --reuse) and prints JSON: the adapter,
dispatches per token, host time per decode step (recording the step's dispatches in the VM, and
encoding + submitting the command buffer), GPU wait per step, tokens/s, and the one-time costs
(build, pipelines created during the first steps). On Mesa's lavapipe (a CPU) the tokens/s are
a correctness harness's, not a GPU's; the host times are what a real GPU would also pay.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama")
    p.add_argument("--quantization", default=None)
    p.add_argument("--steps", type=int, default=8, help="decode steps measured")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--output", default=None, help="artifact folder (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="run the artifact in --output as it is")
    args = p.parse_args()

    import tempfile
    from pathlib import Path

    from llm_deploy.build import build_model
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    path = Path(args.output or tempfile.mkdtemp(prefix="webgpu-bench-")) / "artifact"
    t0 = time.perf_counter()
    if not args.reuse:
        build_model(args.model, "webgpu", path, args.quantization, progress=False)
    build_s = time.perf_counter() - t0
    artifact = load_artifact(path)
    runner = ModelRunner(artifact)
    device = runner.device
    ids = artifact.tokenizer.encode(args.prompt)
    runner.add_sequence(0)
    t0 = time.perf_counter()
    token = int(np.argmax(runner.prefill([0], [ids])[0]))
    prefill_s = time.perf_counter() - t0
    token = int(np.argmax(runner.decode([0], [token])[0]))  # the first decode creates its pipelines
    pipelines_after_warmup = device.stats["pipelines"]

    record, encode, wait, total, dispatches = [], [], [], [], []
    decode = runner.vm["decode"]
    for _ in range(args.steps):
        s0, t0 = dict(device.stats), dict(device.timing)
        start = time.perf_counter()
        runner.cache.begin_forward([0], [1])
        out = decode(device.from_host(np.array([token], np.int32)), runner.cache, *runner.params)
        recorded = time.perf_counter()
        logits = device.to_host(out)
        runner.cache.end_forward()
        end = time.perf_counter()
        token = int(np.argmax(logits[0]))
        record.append(recorded - start)
        encode.append(device.timing["encode_s"] - t0["encode_s"])
        wait.append(device.timing["wait_s"] - t0["wait_s"])
        total.append(end - start)
        dispatches.append(device.stats["dispatches"] - s0["dispatches"])
    med = statistics.median
    print(
        json.dumps(
            {
                "adapter": str(device),
                "model": args.model,
                "quantization": artifact.build_options.get("quantization"),
                "prompt_tokens": len(ids),
                "build_s": round(build_s, 1),
                "prefill_s_with_pipeline_creation": round(prefill_s, 2),
                "pipelines": pipelines_after_warmup,
                "dispatches_per_token": dispatches[-1],
                "host_record_ms_per_step": round(1e3 * med(record), 2),
                "host_encode_submit_ms_per_step": round(1e3 * med(encode), 2),
                "gpu_wait_ms_per_step": round(1e3 * med(wait), 1),
                "decode_tokens_per_s": round(1 / med(total), 3),
                "submissions_per_step": 1,
            }
        )
    )


if __name__ == "__main__":
    main()
