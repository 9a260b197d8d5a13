"""Load time and peak memory of our runtime, and where each goes, in a fresh process.

    python bench/memory.py                       # default model: 128-token prompt, 128 generated
    python bench/memory.py --artifact dist/x --prompt-len 128 --gen-len 128 --threads 2

Runs what bench/peers.py's script for us runs (load, one prefill, greedy decode) in a child
process and prints:
- load time split into imports, `load_artifact` (program, kernels, weights mapped) and the
  model runner (VM, KV pool), and what the tokenizer costs on first use (the runner never uses it);
- peak RSS of load + run (before the tokenizer is loaded), and the resident memory after the run by
  origin: the weights (the mapped params file, from /proc/self/smaps), the KV pools and planned
  storage (anonymous mappings: exactly the pages touched, by mincore), LLVM (libllvmlite, loaded
  only when the ELF loader cannot link the kernels), and the rest (Python, numpy, the heap).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()

    def peak_mb():  # VmHWM starts afresh at exec; ru_maxrss would carry this script's parent's
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner
    from llm_deploy.serve.bench import run_once
    t1 = time.perf_counter()
    folder, prompt_len, gen_len, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    art = load_artifact(folder, num_threads=threads)
    t2 = time.perf_counter()
    runner = ModelRunner(art, max_tokens=prompt_len + gen_len + 8)
    t3 = time.perf_counter()
    rss_loaded = int(open("/proc/self/statm").read().split()[1]) * 4096
    prompt = list(range(100, 100 + prompt_len))
    run_once(runner, prompt, gen_len)

    def mappings():
        out, cur = [], None
        for line in open("/proc/self/smaps"):
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                cur = [lo, hi, head[5] if len(head) > 5 else "", 0]
                out.append(cur)
            elif head[0] == "Rss:":
                cur[3] += int(head[1]) * 1024
        return out

    maps = mappings()
    import ctypes, mmap
    libc = ctypes.CDLL(None)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    def owned(arrays):  # resident pages of each array's own mapping (mincore: exact per range)
        total = 0
        for a in arrays:
            pages = -(-a.nbytes // mmap.PAGESIZE)
            vec = ctypes.create_string_buffer(pages)
            assert libc.mincore(a.ctypes.data, a.nbytes, vec) == 0
            total += sum(b & 1 for b in vec.raw) * mmap.PAGESIZE
        return total
    parts = {
        "weights": sum(m[3] for m in maps if m[2].endswith("params.safetensors")),
        "kv": owned(runner.cache.k_pools + runner.cache.v_pools),
        "storage": owned(runner.vm._storage.values()),
        "llvm": sum(m[3] for m in maps if "llvmlite" in m[2]),
    }
    parts["rest"] = sum(m[3] for m in maps) - sum(parts.values())
    peak = peak_mb()
    t4 = time.perf_counter()
    art.tokenizer.encode("hello")
    tokenizer_s = time.perf_counter() - t4
    tokenizer_mb = peak_mb() - peak
    print(json.dumps({
        "imports_s": t1 - t0, "load_artifact_s": t2 - t1, "runner_s": t3 - t2, "load_s": t3 - t0,
        "tokenizer_first_use_s": tokenizer_s, "tokenizer_mb": tokenizer_mb,
        "rss_loaded_mb": rss_loaded / 2**20, "peak_rss_mb": peak,
        **{f"{k}_mb": v / 2**20 for k, v in parts.items()},
    }))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", help="artifact folder (default: the default model, built if needed)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from llm_deploy.build import ensure_artifact

    folder = args.artifact or str(ensure_artifact("llama"))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, folder, str(args.prompt_len), str(args.gen_len), str(args.threads)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{folder}: prompt {args.prompt_len}, {args.gen_len} generated, {args.threads} threads")
    print(
        f"load {r['load_s']:.3f} s = imports {r['imports_s']:.3f} + load_artifact {r['load_artifact_s']:.3f}"
        f" + runner {r['runner_s']:.3f}; the tokenizer on first use: {r['tokenizer_first_use_s']:.3f} s,"
        f" +{r['tokenizer_mb']:.1f} MB peak"
    )
    print(
        f"peak RSS {r['peak_rss_mb']:.1f} MB (after load {r['rss_loaded_mb']:.1f} MB); resident after the run:"
    )
    for k in ("weights", "kv", "storage", "llvm", "rest"):
        print(f"  {k:8} {r[f'{k}_mb']:7.1f} MB")


if __name__ == "__main__":
    main()
