"""`llm-deploy build | chat | serve | bench | web`."""

from __future__ import annotations

import argparse
import sys

# Subcommands land one issue at a time; until then each says so and exits with code 2.
COMMANDS = {
    "build": "compile a model into an artifact folder",
    "chat": "chat with an artifact or a model",
    "serve": "serve an artifact over an OpenAI-compatible HTTP API",
    "bench": "measure prefill and decode speed",
    "web": "serve a chat page that runs the model in the browser",
}


def _not_built(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"llm-deploy {name}: not built yet in this version.", file=sys.stderr)
        return 2

    return run


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(run=_not_built(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
