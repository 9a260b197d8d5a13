"""`llm-deploy build | chat | serve | bench | web`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

TARGET_NAMES = ("llvm", "webgpu", "vulkan")
BUILT_TARGETS = ("llvm", "vulkan")


def _not_built(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"llm-deploy {name}: not built yet in this version.", file=sys.stderr)
        return 2

    return run


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

    target = {"cpu": "llvm", None: "llvm"}.get(device, device)
    _check_target(target)
    return ModelRunner(load_artifact(ensure_artifact(model, target, quantization)))


def cmd_chat(args: argparse.Namespace) -> int:
    from llm_deploy.serve.generate import generate
    from llm_deploy.serve.sampler import SamplingParams

    if args.prompt is None:
        if sys.stdin.isatty():
            print(
                "llm-deploy chat: the interactive chat is not built yet; pass --prompt TEXT", file=sys.stderr
            )
            return 2
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

    for name, help_text in (
        ("serve", "serve an artifact over an OpenAI-compatible HTTP API"),
        ("web", "serve a chat page that runs the model in the browser"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(run=_not_built(name))
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
