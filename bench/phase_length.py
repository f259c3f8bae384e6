"""Accuracy vs AC/DC phase length on the demo setup (5,000 real MNIST digits, small CNN, 16 epochs).

The demo recipe (``recipes/mnist5k_acdc.yaml``) with its sparse and dense phases set to 1, 2 or 4 epochs
(63, 125, 250 optimizer steps at batch 64), everything else fixed: 3 warm-up epochs, 5 final sparse epochs,
90% global sparsity, the same cosine LR. Each length for each seed, plus the dense baseline per seed::

    L=1: D0-3 (S1 D1)x4 S11-16      L=2: D0-3 (S2 D2)x2 S11-16 (= make demo)      L=4: D0-3 S4 D4 S11-16

Reported, all without model selection: the final sparse model, AC/DC's last dense epoch (end of its last dense
phase) and the dense baseline's final model, top-1 % on the 1,000 held-out digits. Finished runs in ``--out`` are
reused (delete the folder to re-measure).

    .venv/bin/python bench/phase_length.py [--lengths 1,2,4] [--seeds 2] [--dense-seeds N] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from acdc.train.loop import Trainer  # noqa: E402
from acdc.train.recipe import parse_recipe  # noqa: E402

WARMUP, FINAL_SPARSE = 3, 5


def recipe_for(base: dict, length: int | None, seed: int) -> dict:
    """The demo recipe with sparse = dense = ``length`` epochs (``None``: the dense baseline)."""
    r = copy.deepcopy(base)
    r["seed"] = base["seed"] + seed
    r["progress"] = False
    if length is None:
        r["name"] = f"phase-length-dense-seed{seed}"
        r["method"] = {"name": "dense"}
    else:
        r["name"] = f"phase-length-L{length}-seed{seed}"
        r["method"]["schedule"] = {"warmup": WARMUP, "sparse": length, "dense": length, "final_sparse": FINAL_SPARSE}
    return r


def run(raw: dict, out: Path) -> tuple[dict, float]:
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text()), 0.0
    t0 = time.perf_counter()
    s = Trainer(parse_recipe(raw), out, progress=False).run().summary
    return s, time.perf_counter() - t0


def fmt(vals: list[float]) -> str:
    pct = [100 * v for v in vals]
    m = statistics.fmean(pct)
    return f"{m:.2f} ({', '.join(f'{v:.1f}' for v in pct)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1,2,4", help="sparse/dense phase lengths in epochs (default 1,2,4)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--dense-seeds", type=int, default=None, help="dense-baseline seeds (default: --seeds)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-phase-length"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = yaml.safe_load((ROOT / "recipes" / "mnist5k_acdc.yaml").read_text())
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    out = Path(args.out)
    t_all = time.perf_counter()
    dense = []
    for k in range(args.seeds if args.dense_seeds is None else args.dense_seeds):
        s, dt = run(recipe_for(base, None, k), out / f"dense-seed{k}")
        dense.append(s["final"]["val_acc"])
        print(f"dense seed {k}: {100 * dense[-1]:.2f}% ({dt:.0f}s)", flush=True)
    rows = []
    for L in lengths:
        sparse, dlast, spars = [], [], []
        for k in range(args.seeds):
            s, dt = run(recipe_for(base, L, k), out / f"L{L}-seed{k}")
            sparse.append(s["sparse"]["val_acc"])
            spars.append(s["sparse"]["sparsity"])
            dlast.append(s["dense_last"]["val_acc"])
            print(f"L={L} seed {k}: sparse {100 * sparse[-1]:.2f}%, dense last {100 * dlast[-1]:.2f}% ({dt:.0f}s)",
                  flush=True)
        rows.append((L, sparse, dlast, spars))
    spe = -(-4000 // base["batch_size"])  # mnist5k: 4,000 training digits
    print(f"\naccuracy vs phase length: mnist5k, small_cnn width 16, {base['epochs']} epochs, {spe} steps/epoch, "
          f"{args.seeds} seeds (mean (per seed)), top-1 % on 1,000 held-out digits, "
          f"total {time.perf_counter() - t_all:.0f}s")
    print(f"{'phase (epochs / steps)':<24}{'sparse final':<26}{'AC/DC dense (last)':<26}{'dense baseline final':<26}")
    for L, sparse, dlast, spars in rows:
        print(f"{f'{L} / {L * spe}':<24}{fmt(sparse):<26}{fmt(dlast):<26}{fmt(dense):<26}"
              f"sparsity {statistics.fmean(spars):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
