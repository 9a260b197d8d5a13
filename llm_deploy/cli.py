"""`llm-deploy build | chat | serve | bench | web`."""

from __future__ import annotations

import argparse
import json
import sys

TARGET_NAMES = ("llvm", "webgpu", "vulkan")
BUILT_TARGETS = ("llvm", "webgpu", "vulkan")
DEVICE_TARGETS = {"cpu": "llvm", "webgpu": "webgpu", "vulkan": "vulkan"}  # --device -> what runs there


def _check_target(target: str) -> None:
    if target not in BUILT_TARGETS:
        raise SystemExit(
            f"llm-deploy: target {target!r} is not built yet; available: {', '.join(BUILT_TARGETS)}"
        )


def cmd_build(args: argparse.Namespace) -> int:
    from llm_deploy.build import build_model

    _check_target(args.target)
    overrides = {
        k: v
        for k, v in {
            "context_window": args.context_window,
            "prefill_chunk": args.prefill_chunk,
            "kv_page_size": args.kv_page_size,
            "kv_dtype": args.kv_dtype,
        }.items()
        if v is not None
    }
    out = build_model(
        args.model, args.target, args.output, args.quantization, progress=not args.quiet, **overrides
    )
    print(out)
    return 0


def _runner(model: str, device: str | None, quantization: str | None = None):
    from llm_deploy.build import ensure_artifact
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    target = _device_target(model, device)
    _check_target(target)
    return ModelRunner(load_artifact(ensure_artifact(model, target, quantization)))


def _device_target(model: str, device: str | None) -> str:
    """The target to run: an artifact's own (`--device` defaults to it and must agree), else the
    one for `--device` (default cpu)."""
    from pathlib import Path

    from llm_deploy.runtime.artifact import is_artifact

    if is_artifact(model):
        built = json.loads((Path(model) / "manifest.json").read_text())["target"]
        if device is not None and DEVICE_TARGETS[device] != built:
            runs_on = next((d for d, t in DEVICE_TARGETS.items() if t == built), built)
            raise SystemExit(
                f"llm-deploy: {model} was built for --target {built}, which runs on --device {runs_on}, "
                f"not {device}; rebuild it with --target {DEVICE_TARGETS[device]}"
            )
        return built
    return DEVICE_TARGETS[device or "cpu"]


def cmd_chat(args: argparse.Namespace) -> int:
    from llm_deploy.serve.generate import generate
    from llm_deploy.serve.sampler import SamplingParams

    if args.prompt is None:
        if sys.stdin.isatty():
            from llm_deploy.serve.chat import run_chat

            sampling = {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
            sampling["max_tokens"] = args.max_tokens
            sampling = {k: v for k, v in sampling.items() if v is not None}
            return run_chat(args.model, device=args.device, sampling=sampling)
        args.prompt = sys.stdin.read()
    runner = _runner(args.model, args.device)
    tokenizer = runner.artifact.tokenizer
    defaults = runner.artifact.chat_config.get("default_sampling", {})
    params = SamplingParams(
        temperature=args.temperature if args.temperature is not None else defaults.get("temperature", 1.0),
        top_p=args.top_p if args.top_p is not None else defaults.get("top_p", 1.0),
        seed=args.seed,
        max_tokens=args.max_tokens or defaults.get("max_tokens", 256),
    )
    ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
    for text in generate(runner, tokenizer, ids, params):
        print(text, end="", flush=True)
    print()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from llm_deploy.serve.server import ServerConfig, serve

    config = ServerConfig(
        model_name=args.served_model_name,
        api_key=args.api_key,
        max_queue_len=args.max_queue_len,
        max_request_bytes=args.max_request_bytes,
        cors_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
        cors_allow_credentials=args.allow_credentials,
    )
    engine = dict(device=args.device, quantization=args.quantization, num_threads=args.num_threads)
    engine |= dict(max_num_seqs=args.max_num_seqs, kv_cache_bytes=args.kv_cache_bytes)
    serve(args.model, config, host=args.host, port=args.port, log_level=args.log_level, **engine)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from llm_deploy.serve.bench import run_bench

    runner = _runner(args.model, args.device)
    result = run_bench(runner, args.prompt_len, args.gen_len, args.runs)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>14}: {value}")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from llm_deploy.web.server import WebServer

    server = WebServer(args.artifact, host=args.host, port=args.port, quiet=args.quiet)
    print(
        f"llm-deploy web: {server.url}/ (the model runs in the visitor's browser; Ctrl+C to stop)", flush=True
    )
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="compile a model into an artifact folder")
    p.add_argument(
        "--model", default="llama", help="preset name (llama, llama-tiny, ...), HF folder or .gguf file"
    )
    p.add_argument("--target", default="llvm", choices=TARGET_NAMES)
    p.add_argument("--quantization", default=None, help="weight format (default: the preset's)")
    p.add_argument("--output", default=None, help="artifact folder (default: dist/<model>-<quant>-<target>)")
    p.add_argument("--context-window", type=int)
    p.add_argument("--prefill-chunk", type=int)
    p.add_argument("--kv-page-size", type=int)
    p.add_argument("--kv-dtype", choices=("float32", "float16"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_build)

    p = sub.add_parser("chat", help="chat with an artifact or a model")
    p.add_argument(
        "model", nargs="?", default="llama", help="artifact folder, preset name, HF folder or .gguf"
    )
    p.add_argument("--prompt", help="answer this once and exit (without it: interactive)")
    p.add_argument("--device", choices=("cpu", "webgpu", "vulkan"))
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("bench", help="measure prefill and decode speed")
    p.add_argument("model", nargs="?", default="llama")
    p.add_argument("--device", choices=("cpu", "webgpu", "vulkan"))
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--runs", type=int, default=3, help="median of this many runs")
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API, with a chat page")
    p.add_argument("model", nargs="?", default="llama", help="artifact folder, preset name, HF folder, .gguf")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: open)")
    p.add_argument("--served-model-name", help="the model id clients use (default: the artifact's)")
    p.add_argument("--device", choices=("cpu", "webgpu", "vulkan"))
    p.add_argument("--quantization", help="weight format when building a model (default: the preset's)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together at most")
    p.add_argument("--max-queue-len", type=int, default=64, help="requests that may wait beyond a full batch")
    p.add_argument("--max-request-bytes", type=int, default=4 << 20, help="larger bodies get a 413")
    p.add_argument("--kv-cache-bytes", type=int, help="KV cache pool (default: 4 context windows)")
    p.add_argument("--num-threads", type=int, help="kernel threads (default: every core)")
    p.add_argument("--allowed-origins", default="", help="CORS: origins, comma-separated, or '*'")
    p.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("web", help="serve a chat page that runs the model in the browser (WebGPU)")
    p.add_argument("artifact", help="an artifact folder built with --target webgpu")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--quiet", action="store_true", help="do not log requests")
    p.set_defaults(run=cmd_web)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"llm-deploy {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
