"""Dense fine-tuning of an AC/DC run's dense model to the end of its schedule (``acdc finetune-dense``, compare)."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import link_or_copy, load_metadata
from .loop import Trainer
from .recipe import load_recipe

__all__ = ["finetune_dense"]


def finetune_dense(run_dir: str | Path, epochs: int | None = None, progress: bool = True) -> dict:
    """Continue from ``run_dir/dense.safetensors`` with dense training to the end of the original schedule.

    That file is the run's dense model (recipe keys ``dense_pick`` / ``dense_from``; by default the best dense
    epoch on validation after the first compression, never the dense warm-up). The LR schedule continues where
    that model left it (the optimizer starts fresh, as at any dense-phase start); writes
    ``run_dir/dense_finetuned.safetensors`` and ``run_dir/finetune_dense/``.
    """
    run_dir = Path(run_dir)
    rpath, dpath = run_dir / "recipe.yaml", run_dir / "dense.safetensors"
    if rpath.is_file() and (run_dir / "summary.json").is_file() and not dpath.is_file():
        raise FileNotFoundError(f"{run_dir} has no dense model: no dense epoch after the first compression "
                                "(recipe key `dense_from: any` also counts the dense warm-up)")
    for p in (rpath, dpath):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: finetune-dense needs a finished AC/DC run directory")
    recipe = load_recipe(rpath)
    best_epoch = int(json.loads(load_metadata(dpath)["epoch"]))
    start = best_epoch + 1
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    ft = recipe.with_method("dense", **({} if epochs is None else {"epochs": start + epochs}))
    if start >= ft.epochs:
        raise ValueError(f"the dense model is from the last epoch ({best_epoch}); pass --epochs N")
    out = run_dir / "finetune_dense"
    # the fine-tune folder belongs to this run: a re-run replaces it
    trainer = Trainer(ft, out, progress=progress, init_weights=dpath, start_epoch=start, overwrite=True)
    res = trainer.run()
    # the fine-tuned model is the final dense model of that run
    link_or_copy(out / "final.safetensors", run_dir / "dense_finetuned.safetensors")
    summary = dict(res.summary)
    summary["start_epoch"] = start
    summary["files"] = {"dense_finetuned": str(run_dir / "dense_finetuned.safetensors")}
    return summary
