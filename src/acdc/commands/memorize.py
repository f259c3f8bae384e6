"""``acdc memorize RECIPE --out DIR``: label-corruption memorization study (paper Fig. 2b, 8, 9).

``--corrupt N`` training samples (chosen with ``--seed``) get a label drawn uniformly from all classes; data
augmentation is turned off; the recipe's method trains on the corrupted set and after every epoch the model's
accuracy on those samples is logged against the corrupted labels (``mem_acc_corrupted``: memorization) and
against their true labels (``mem_acc_true``). Writes the usual run files plus ``DIR/memorization.json`` and
``DIR/memorization.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

__all__ = ["memorize", "train_targets", "register"]


def train_targets(dataset: Any) -> Any:
    """The labels of a classification dataset as a 1-D long tensor (fast paths for the built-in datasets)."""
    import torch

    for attr in ("targets", "labels"):
        t = getattr(dataset, attr, None)
        if t is not None and not callable(t):
            return torch.as_tensor(t, dtype=torch.long).reshape(-1)
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        return tensors[1].long().reshape(-1)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def memorize(
    recipe_path: str | Path,
    out_dir: str | Path,
    *,
    n: int = 1000,
    seed: int = 0,
    overrides: list[str] | None = None,
    progress: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the memorization study; returns the contents of ``memorization.json``.

    The corrupted set is a pure function of (data, ``n``, ``seed``), so ``resume=True`` continues an interrupted
    study from ``out_dir/last``; the curves are read back from ``metrics.jsonl`` at the end.
    """
    from .. import data as data_mod
    from ..measure.memorization import CorruptedDataset, corrupt_labels, corrupted_accuracy
    from ..report import load_run
    from ..report.plots import plot_memorization
    from ..train.checkpoint import atomic_write_text
    from ..train.loop import Trainer
    from ..train.recipe import load_recipe
    from ..train.rundir import RunDirError, stale_files

    recipe = load_recipe(recipe_path, overrides)
    data_cfg = dict(recipe.data)
    augment_was = data_cfg.get("augment")
    if "augment" in data_mod.allowed_keys(str(data_cfg["name"])):
        data_cfg["augment"] = False
    recipe.data = data_cfg
    bundle = data_mod.build(data_cfg, seed=recipe.seed)
    if bundle.task != "classification":
        raise ValueError(f"memorization needs a classification dataset, {bundle.name!r} is a {bundle.task} task")
    true = train_targets(bundle.train)
    new, idx, info = corrupt_labels(true, bundle.num_classes, n=n, seed=seed)
    info = {**info, "augment_disabled": "augment" in data_cfg, "augment_in_recipe": augment_was}
    train_ds = CorruptedDataset.from_new_targets(bundle.train, new, idx)
    corrupted_bundle = dataclasses.replace(bundle, train=train_ds,
                                           info={**bundle.info, "augment": False, "corrupted": info})
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; choose a folder path for the run")
    stale = [] if resume or overwrite else stale_files(out, recipe)
    if stale:
        raise RunDirError(f"{out} already holds another run ({', '.join(stale[:5])}); continue it with --resume, "
                          "replace it with --overwrite, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "indices": idx.tolist(),
        "corrupted_labels": new[idx].tolist(),
        "true_labels": true[idx].tolist(),
        "info": info,
        "recipe": recipe.name,
        "method": recipe.method_name,
        "curves": [],
    }
    if not resume:  # indices exist even if training stops
        atomic_write_text(out / "memorization.json", json.dumps(result))

    def hook(trainer: Trainer, epoch: int) -> dict[str, Any]:
        r = corrupted_accuracy(trainer.model, bundle.train, idx, new, true, device=trainer.device,
                               batch_size=trainer.recipe.eval_batch_size)
        return {"mem_acc_corrupted": r["acc_vs_corrupted"], "mem_acc_true": r["acc_vs_true"],
                "mem_acc_other": r["acc_vs_other"]}

    res = Trainer(recipe, out, bundle=corrupted_bundle, epoch_hooks=[hook], progress=progress, resume=resume,
                  overwrite=overwrite).run()
    run = load_run(out)  # reads metrics.jsonl once, for the curves and the figure
    keys = ("mem_acc_corrupted", "mem_acc_true", "mem_acc_other")
    result["curves"] = [{"epoch": m["epoch"], "phase": m["phase"], **{k: m[k] for k in keys}} for m in run.metrics]
    result["summary"] = {k: res.summary.get(k) for k in ("final", "sparse", "dense")}
    atomic_write_text(out / "memorization.json", json.dumps(result))
    run.memorization = result
    plot_memorization([run], out / "memorization.png")
    return result


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
