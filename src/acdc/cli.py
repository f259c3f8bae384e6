"""``acdc`` command line: a thin layer that parses arguments and calls the library.

Subcommands live in small modules, each exposing ``register(subparsers)`` that adds its parser and sets
``func(args) -> int``. Add a new command by appending its module to ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

EXIT_NONFINITE = 3  # training diverged (NaN/inf loss or weights); bad input and OS errors exit 2, Ctrl-C 130

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
    # a recipe's deprecated key (e.g. `method.target`) is shown once (the method built from it would repeat it)
    warnings.filterwarnings("ignore", message=r"`target: .*` is deprecated", category=DeprecationWarning)
    warnings.filterwarnings("default", message=r"`method\.\w+: .*` is deprecated", category=DeprecationWarning)
    from .train.checkpoint import CheckpointError
    from .train.loop import NonFiniteError
    from .train.recipe import RecipeError

    try:
        return int(args.func(args) or 0)
    except NonFiniteError as e:  # a diverged run: its own exit status, so scripts can tell it from bad input
        print(f"acdc {args.command}: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except (RecipeError, CheckpointError, ValueError, ImportError, OSError) as e:
        print(f"acdc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"acdc {args.command}: interrupted; a run continues from its last checkpoint with --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
