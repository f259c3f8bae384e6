"""``acdc train`` and ``acdc finetune-dense``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ..train.finetune import finetune_dense
from ..train.loop import Trainer
from ..train.recipe import load_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a recipe (writes sparse/dense models, metrics, checkpoints)")
    p.add_argument("recipe", help="YAML recipe file")
    p.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set method.sparsity=0.95 (repeatable)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="train this registry model instead of the recipe's (e.g. resnet20, torchvision:resnet18)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/last")
    p.add_argument("--compress-checkpoints", action="store_true",
                   help="write sparse-phase checkpoints as bitmask + non-zeros (~7x smaller at 90%%)")
    p.add_argument("--overwrite", action="store_true",
                   help="start fresh in an OUT that holds another run, deleting that run's files")
    p.add_argument("--log", choices=["none", "tensorboard"], default=None,
                   help="also log metrics to OUT/tensorboard/ (recipe key `log`; needs the `tensorboard` extra)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars / per-epoch lines")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="launch N processes on this machine with torchrun (data parallel; see `distributed:`)")
    p.set_defaults(func=cmd_train)

    f = sub.add_parser("finetune-dense", help="fine-tune the dense model of an AC/DC run densely")
    f.add_argument("run_dir", help="directory of a finished `acdc train` run")
    f.add_argument("--epochs", type=int, default=None,
                   help="epochs of dense fine-tuning (default: from the dense model's epoch to the run's end)")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=cmd_finetune_dense)


def _launch_torchrun(nproc: int) -> int:
    """Re-run this command under ``torchrun --standalone --nproc-per-node N`` (without ``--nproc``)."""
    argv = list(sys.argv[1:])
    for i, a in enumerate(argv):
        if a == "--nproc":
            del argv[i : i + 2]
            break
        if a.startswith("--nproc="):
            del argv[i]
            break
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "acdc", *argv]
    return subprocess.run(cmd).returncode


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and "RANK" not in os.environ:
        load_recipe(args.recipe, list(args.overrides))  # a bad recipe fails here once, not on every rank
        return _launch_torchrun(args.nproc)
    overrides = list(args.overrides)
    if args.model:  # a bare name replaces the recipe's whole model block (its kwargs belong to the old model)
        overrides.insert(0, f"model={{name: '{args.model}'}}")
    if args.log:
        overrides.append(f"log={args.log}")
    recipe = load_recipe(args.recipe, overrides)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run or replace it")
    res = Trainer(recipe, out, resume=args.resume, progress=not args.no_progress,
                  compress_checkpoints=args.compress_checkpoints, overwrite=args.overwrite).run()
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps(res.summary, indent=2))
    return 0


def cmd_finetune_dense(args: argparse.Namespace) -> int:
    print(json.dumps(finetune_dense(args.run_dir, args.epochs, progress=not args.no_progress), indent=2))
    return 0
