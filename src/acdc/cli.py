"""``acdc`` command line: a thin layer that parses arguments and calls the library.

Subcommands live in small modules, each exposing ``register(subparsers)`` that adds its parser and sets
``func(args) -> int``. Add a new command by appending its module to ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "acdc.commands.train",
    "acdc.commands.report",
    "acdc.commands.agree",
    "acdc.commands.memorize",
    "acdc.commands.compare",
    "acdc.commands.export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acdc", description="AC/DC sparse-dense co-training for PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .train.checkpoint import CheckpointError
    from .train.recipe import RecipeError

    try:
        return int(args.func(args) or 0)
    except (RecipeError, CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"acdc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
