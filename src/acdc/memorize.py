"""Label-corruption memorization study (paper Fig. 2b, 8, 9).

``--corrupt N`` training samples (chosen with ``--seed``) get a label drawn uniformly from all classes; data
augmentation is turned off; the recipe's method trains on the corrupted set and after every epoch the model's
accuracy on those samples is logged against the corrupted labels (``mem_acc_corrupted``: memorization) and
against their true labels (``mem_acc_true``). Writes the usual run files plus ``DIR/memorization.json`` and
``DIR/memorization.png``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import data as data_mod
from .measure.memorization import CorruptedDataset, corrupt_labels, corrupted_accuracy, train_targets
from .report import load_run
from .report.plots import plot_memorization
from .train.checkpoint import atomic_write_text
from .train.loop import Trainer
from .train.recipe import load_recipe
from .train.rundir import RunDirError, stale_files

__all__ = ["memorize"]


def _corrupted_bundle(recipe: Any, n: int, seed: int) -> tuple[Any, Any, dict[str, Any], tuple[Any, Any, Any]]:
    """The recipe's data without augmentation, ``n`` training labels corrupted.

    Returns (bundle, corrupted bundle, memorization.json contents, (indices, corrupted labels, true labels)).
    """
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
    corrupted = dataclasses.replace(bundle, train=train_ds, info={**bundle.info, "augment": False, "corrupted": info})
    result: dict[str, Any] = {"indices": idx.tolist(), "corrupted_labels": new[idx].tolist(),
                              "true_labels": true[idx].tolist(), "info": info, "recipe": recipe.name,
                              "method": recipe.method_name, "curves": []}
    return bundle, corrupted, result, (idx, new, true)


def _claim_out(out: Path, recipe: Any, resume: bool, overwrite: bool) -> None:
    """Create ``out`` unless it is a file or holds another run (then a RunDirError naming the fix)."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; choose a folder path for the run")
    stale = [] if resume or overwrite else stale_files(out, recipe)
    if stale:
        raise RunDirError(f"{out} already holds another run ({', '.join(stale[:5])}); continue it with --resume, "
                          "replace it with --overwrite, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def _accuracy_hook(bundle: Any, labels: tuple[Any, Any, Any]) -> Callable[[Trainer, int], dict[str, Any]]:
    """The per-epoch hook logging accuracy on the corrupted samples vs their corrupted / true / other labels."""
    idx, new, true = labels

    def hook(trainer: Trainer, epoch: int) -> dict[str, Any]:
        r = corrupted_accuracy(trainer.model, bundle.train, idx, new, true, device=trainer.device,
                               batch_size=trainer.recipe.eval_batch_size)
        return {"mem_acc_corrupted": r["acc_vs_corrupted"], "mem_acc_true": r["acc_vs_true"],
                "mem_acc_other": r["acc_vs_other"]}

    return hook


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
    recipe = load_recipe(recipe_path, overrides)
    bundle, corrupted_bundle, result, labels = _corrupted_bundle(recipe, n, seed)
    out = Path(out_dir)
    _claim_out(out, recipe, resume, overwrite)
    if not resume:  # indices exist even if training stops
        atomic_write_text(out / "memorization.json", json.dumps(result))
    res = Trainer(recipe, out, bundle=corrupted_bundle, epoch_hooks=[_accuracy_hook(bundle, labels)],
                  progress=progress, resume=resume, overwrite=overwrite).run()
    run = load_run(out)  # reads metrics.jsonl once, for the curves and the figure
    keys = ("mem_acc_corrupted", "mem_acc_true", "mem_acc_other")
    result["curves"] = [{"epoch": m["epoch"], "phase": m["phase"], **{k: m[k] for k in keys}} for m in run.metrics]
    result["summary"] = {k: res.summary.get(k) for k in ("final", "sparse", "dense")}
    atomic_write_text(out / "memorization.json", json.dumps(result))
    run.memorization = result
    plot_memorization([run], out / "memorization.png")
    return result
