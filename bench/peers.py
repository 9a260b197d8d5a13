"""Our prefill/decode speed beside transformers and llama.cpp on the same model, in one run.

    python bench/peers.py                       # default model: our artifact vs both peers
    python bench/peers.py --artifact dist/x --prompt-len 128 --gen-len 128 --runs 3 --threads 2

Each figure is the median of `--runs` runs; the peers' runs are interleaved with ours so that a
noisy neighbour hurts all of them alike. Every run is a fresh process (peak RSS is per process).
llama.cpp comes from llama-cpp-python, installed on demand (it builds from source: ~16 min on 2
cores; a wheel cached in ~/.cache/llm_deploy/wheels is reused). Never part of the test suite.

Also printed, for the default model: the build time; decode bandwidth (weight bytes read per
token x tokens/s) as a fraction of what a native streaming kernel reads in the same run
(bench/bandwidth.py); and decode tokens/s with each optimization turned off in turn (fusion,
memory planning, the low-overhead step, the int8-activation kernels), interleaved with the full
build's runs (`--no-ablations` skips them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

WHEELS = Path.home() / ".cache" / "llm_deploy" / "wheels"

# Each peer script prints one JSON line: prefill_tps, decode_tps, ttft_s, peak_rss_mb, load_s.
# Peak RSS of the process itself: VmHWM starts afresh at exec, while ru_maxrss carries the
# parent's peak across fork (this script's own, after building artifacts).
PEAK_RSS = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

TRANSFORMERS = PEAK_RSS + textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, torch
    from transformers import AutoModelForCausalLM
    gguf, prompt_len, gen_len, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    t = time.perf_counter()
    folder, name = gguf.rsplit("/", 1)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    load = time.perf_counter() - t
    ids = torch.tensor([np.random.default_rng(0).integers(100, model.config.vocab_size, prompt_len).tolist()])
    with torch.no_grad():
        t = time.perf_counter()
        out = model(ids, use_cache=True)
        ttft = time.perf_counter() - t
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(gen_len):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        decode = time.perf_counter() - t
    rss = peak_rss_mb()
    print(json.dumps({"prefill_tps": prompt_len / ttft, "decode_tps": gen_len / decode, "ttft_s": ttft,
                      "peak_rss_mb": rss, "load_s": load}))
    """
)

LLAMA_CPP = PEAK_RSS + textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from llama_cpp import Llama
    gguf, prompt_len, gen_len, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    t = time.perf_counter()
    llm = Llama(model_path=gguf, n_ctx=prompt_len + gen_len + 8, n_threads=threads, n_threads_batch=threads,
                n_batch=prompt_len, verbose=False)
    load = time.perf_counter() - t
    ids = np.random.default_rng(0).integers(100, llm.n_vocab(), prompt_len).tolist()
    t = time.perf_counter()
    llm.eval(ids)
    ttft = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(gen_len):
        nxt = llm.sample(temp=0.0)  # greedy; reads the last logits without copying them all
        llm.eval([nxt])
    decode = time.perf_counter() - t
    rss = peak_rss_mb()
    print(json.dumps({"prefill_tps": prompt_len / ttft, "decode_tps": gen_len / decode, "ttft_s": ttft,
                      "peak_rss_mb": rss, "load_s": load}))
    """
)

OURS = PEAK_RSS + textwrap.dedent(
    """
    import json, sys, time
    t = time.perf_counter()
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner
    from llm_deploy.serve.bench import run_bench
    folder, prompt_len, gen_len, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    artifact = load_artifact(folder, num_threads=threads)
    runner = ModelRunner(artifact, max_tokens=prompt_len + gen_len + 8)  # llama.cpp's n_ctx below
    load = time.perf_counter() - t
    result = run_bench(runner, prompt_len, gen_len, runs=1)
    weight_bytes = sum(p.nbytes for p in artifact.params)  # decode reads them all (the tied head too)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps({**result, "load_s": load, "weight_bytes": weight_bytes}))
    """
)


def ensure_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401

        return True
    except ImportError:
        pass
    print(
        "installing llama-cpp-python (builds from source the first time: ~16 min on 2 cores)...",
        file=sys.stderr,
    )
    WHEELS.mkdir(parents=True, exist_ok=True)
    if not any(WHEELS.glob("llama_cpp_python-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "llama-cpp-python", "-w", str(WHEELS)],
            check=True,
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--find-links",
            str(WHEELS),
            "llama-cpp-python",
            "diskcache",
            "jinja2",
        ],
        check=True,
    )
    return True


def run_script(script: str, *args: object, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


BUILD = textwrap.dedent(
    """
    import json, sys, time
    t = time.perf_counter()
    from llm_deploy.build import build_model
    build_model("llama", output=sys.argv[1], progress=False)
    print(json.dumps({"build_s": time.perf_counter() - t}))
    """
)


def ablation_builds(folder: Path) -> dict[str, tuple[str, dict]]:
    """name -> (artifact, environment) of the default model with one optimization turned off."""
    from llm_deploy.build import build_model
    from llm_deploy.compiler.passes.fuse_ops import fuse_ops
    from llm_deploy.compiler.passes.fuse_tir import fuse_tir
    from llm_deploy.compiler.passes.memory_plan import memory_plan
    from llm_deploy.compiler.pipeline import PIPELINES

    def without(*passes):
        return [p for p in PIPELINES["llvm"] if p not in passes]

    builds = {
        "no fusion": dict(pipeline=without(fuse_ops, fuse_tir)),
        "no memory plan": dict(pipeline=without(memory_plan)),
        "no int8 dot": dict(int_dot=False),
    }
    out = {}
    for name, overrides in builds.items():
        path = folder / name.replace(" ", "-")
        print(f"building the default model with {name}...", file=sys.stderr)
        out[name] = (str(build_model("llama", output=path, progress=False, **overrides)), {})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", help="our artifact (default: build the default model, cached)")
    parser.add_argument("--gguf", help="the GGUF the peers load (default: the default model's)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--peers", default="llama.cpp,transformers")
    parser.add_argument("--no-ablations", action="store_true", help="skip the per-feature builds and runs")
    args = parser.parse_args()

    from llm_deploy.build import ensure_artifact
    from llm_deploy.models import MODELS

    sys.path.insert(0, str(Path(__file__).parent))
    from bandwidth import stream_read_gbps

    artifact = args.artifact or str(ensure_artifact("llama"))
    gguf = args.gguf or str(MODELS["llama"].gguf_path())
    peers = [p for p in args.peers.split(",") if p]
    scripts: dict[str, tuple[str, str, dict]] = {"ours": (OURS, artifact, {})}
    if "llama.cpp" in peers and ensure_llama_cpp():
        scripts["llama.cpp"] = (LLAMA_CPP, gguf, {})
    if "transformers" in peers:
        scripts["transformers"] = (TRANSFORMERS, gguf, {})

    tmp = Path(tempfile.mkdtemp(prefix="llmd-peers-"))
    extra: dict[str, float] = {}
    ablations: list[str] = []
    if not args.no_ablations and not args.artifact:
        extra["build_s"] = run_script(BUILD, tmp / "timed-build")["build_s"]
        for name, (path, env) in ablation_builds(tmp).items():
            scripts[f"ours, {name}"] = (OURS, path, env)
            ablations.append(f"ours, {name}")
        scripts["ours, no low-overhead step"] = (OURS, artifact, {"LLMD_FAST_STEP": "0"})
        ablations.append("ours, no low-overhead step")

    results: dict[str, list[dict]] = {name: [] for name in scripts}
    stream: list[float] = []
    for r in range(args.runs):
        stream.append(stream_read_gbps(args.threads))
        for name, (script, path, env) in scripts.items():
            results[name].append(
                run_script(script, path, args.prompt_len, args.gen_len, args.threads, env=env)
            )
            print(f"run {r + 1}/{args.runs} {name}: {results[name][-1]}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)

    keys = ["decode_tps", "prefill_tps", "ttft_s", "peak_rss_mb", "load_s"]
    median = {
        name: {k: statistics.median(run[k] for run in runs) for k in keys} for name, runs in results.items()
    }
    print(
        f"\nprompt {args.prompt_len} tokens, {args.gen_len} generated, {args.threads} threads, median of {args.runs}"
    )
    print(f"{'':30}" + "".join(f"{k:>14}" for k in keys))
    for name, m in median.items():
        print(f"{name:30}" + "".join(f"{m[k]:>14.2f}" for k in keys))
    for peer in median:
        if peer == "ours" or peer.startswith("ours,"):
            continue
        ratios = {k: median["ours"][k] / median[peer][k] for k in keys}
        print(f"{'ours/' + peer:30}" + "".join(f"{ratios[k]:>13.2f}x" for k in keys))

    weight_mb = results["ours"][0]["weight_bytes"] / 1e6
    gbps = statistics.median(stream)
    used = weight_mb / 1e3 * median["ours"]["decode_tps"]
    print(
        f"\ndecode bandwidth: {weight_mb:.1f} MB of weights per token x {median['ours']['decode_tps']:.1f} tokens/s"
        f" = {used:.1f} GB/s; a native streaming read: {gbps:.1f} GB/s ({100 * used / gbps:.0f}%)"
    )
    if ablations:
        print(
            "decode tokens/s with one feature off (full build: {:.1f}):".format(median["ours"]["decode_tps"])
        )
        for name in ablations:
            d = median[name]["decode_tps"]
            print(
                f"  {name[len('ours, ') :]:26} {d:8.1f}   (the feature gives {median['ours']['decode_tps'] / d:.2f}x)"
            )
        print(
            f"build time of the default model: {extra['build_s']:.1f} s; artifact load: {median['ours']['load_s']:.2f} s"
        )
    summary = {"median": median, "stream_gbps": gbps, "decode_gbps": used, **extra}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
