"""``acdc memorize RECIPE --out DIR``: the label-corruption memorization study (:mod:`acdc.memorize`)."""

from __future__ import annotations

import argparse

from ..memorize import memorize

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memorize", help="train with N corrupted labels and track their memorization per epoch")
    p.add_argument("recipe", help="YAML recipe file")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--corrupt", type=int, default=1000, metavar="N", help="number of corrupted labels (1000)")
    p.add_argument("--seed", type=int, default=0, help="seed choosing the samples and their new labels (0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (repeatable)")
    p.add_argument("--progress", action="store_true", help="progress bars / per-epoch lines")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study from OUT/last")
    p.add_argument("--overwrite", action="store_true", help="start fresh in an OUT that holds another run")
    p.set_defaults(func=cmd_memorize)


def cmd_memorize(args: argparse.Namespace) -> int:
    res = memorize(args.recipe, args.out, n=args.corrupt, seed=args.seed, overrides=args.overrides,
                   progress=args.progress, resume=args.resume, overwrite=args.overwrite)
    i = res["info"]
    print(f"corrupted {i['n']} training labels (seed {i['seed']}); {i['kept_true_label']} drew their true label")
    w = max([len(c["phase"]) for c in res["curves"]] + [5])
    print(f"{'epoch':>5}  {'phase'.ljust(w)}  {'acc vs corrupted':>16}  {'acc vs true':>11}")
    for c in res["curves"]:
        print(f"{c['epoch']:5d}  {c['phase'].ljust(w)}  {100 * c['mem_acc_corrupted']:15.1f}%  "
              f"{100 * c['mem_acc_true']:10.1f}%")
    print(f"wrote {args.out}/memorization.json and {args.out}/memorization.png")
    return 0
