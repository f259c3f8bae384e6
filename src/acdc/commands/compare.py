"""``acdc compare``: train several methods on one recipe with equal budgets and tabulate the results."""

from __future__ import annotations

import argparse
import sys

from ..compare import compare


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train methods x sparsities x seeds on one recipe; write compare.md/.csv")
    p.add_argument("recipe", help="YAML recipe (model, data, optimizer, LR schedule, epochs shared by all runs)")
    p.add_argument("--methods", type=_names, default=["dense", "acdc", "gmp", "rigl"],
                   help="comma-separated methods (default: dense,acdc,gmp,rigl)")
    p.add_argument("--sparsity", type=_floats, default=[0.9], help="comma-separated target sparsities (default 0.9)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per (method, sparsity); seed k = recipe seed + k")
    p.add_argument("--out", required=True, help="output directory (runs/, compare.md, compare.csv)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key for every run, e.g. --set epochs=12 (repeatable)")
    p.add_argument("--method-opt", dest="method_opts", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="an option for one method, e.g. --method-opt rigl.update_every=50 (repeatable)")
    p.add_argument("--oneshot-epochs", type=int, default=None,
                   help="fine-tuning epochs after one-shot pruning (default: 25%% of the recipe's epochs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from . import check_out_folder

    check_out_folder(args.out)
    res = compare(args.recipe, args.methods, args.sparsity, args.seeds, args.out, overrides=args.overrides,
                  method_opts=args.method_opts, oneshot_epochs=args.oneshot_epochs,
                  progress=not args.no_progress)
    print(f"trained {len(res.ran)} run(s), skipped {len(res.skipped)} finished; wrote {res.markdown} and {res.csv}",
          file=sys.stderr)
    print(res.markdown.read_text())
    return 0
