"""Fraction of an epoch spent in data loading, for CIFAR-format and ImageFolder data.

Generates synthetic data in the real on-disk formats (CIFAR python pickles; an ImageFolder of
small JPEG/PNG files) in a temporary folder, then for each dataset times

* one epoch of iterating the DataLoader alone (``load``), and
* one epoch of loading + a training step (``train``: ResNet-20 on CIFAR, small CNN on ImageFolder),

and prints ``load / train`` side by side, plus the time the training loop actually waited on
the loader. Run: ``python bench/data_loading.py [--n-cifar 10000] [--n-images 500] [--workers 0]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from acdc import data as D
from acdc import models as M
from acdc.data.cifar import write_cifar


def make_imagefolder(root: Path, n_images: int, n_classes: int = 10, size: int = 80) -> Path:
    """Write train/ and val/ class folders of smooth random images, alternating JPEG and PNG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_images), ("val", max(n_classes, n_images // 10))):
        for k in range(n):
            c = k % n_classes
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
            img.save(root / split / f"class{c}" / f"{k}.{'jpg' if k % 2 == 0 else 'png'}")
    return root


class PerItem(Dataset):
    """Hide ``__getitems__`` so the DataLoader fetches sample by sample (for comparison)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[i]


def epoch_times(loader: DataLoader, model: torch.nn.Module, max_batches: int | None) -> dict[str, float]:
    """Seconds for a load-only epoch and a load+train epoch, and the loader wait inside the latter."""
    t0 = time.perf_counter()
    for i, _ in enumerate(loader):
        if max_batches and i + 1 >= max_batches:
            break
    load = time.perf_counter() - t0

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    wait = 0.0
    t0 = time.perf_counter()
    it = iter(loader)
    for i in range(len(loader)):
        tw = time.perf_counter()
        x, y = next(it)
        wait += time.perf_counter() - tw
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if max_batches and i + 1 >= max_batches:
            break
    train = time.perf_counter() - t0
    return {"load": load, "train": train, "wait": wait}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-cifar", type=int, default=10_000, help="CIFAR-format training images")
    ap.add_argument("--n-images", type=int, default=500, help="ImageFolder training images")
    ap.add_argument("--image-size", type=int, default=64, help="ImageFolder crop size")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--max-batches", type=int, default=None, help="stop each epoch early (quick runs)")
    args = ap.parse_args()
    torch.manual_seed(0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        cifar_dir = write_cifar(tmp / "cifar", "cifar10", n_train=args.n_cifar, n_test=1000)
        folder = make_imagefolder(tmp / "imagefolder", args.n_images)
        print(f"generated data in {time.perf_counter() - t:.1f}s "
              f"(torch threads: {torch.get_num_threads()}, workers: {args.workers})")

        cifar = D.build({"name": "cifar10", "path": str(cifar_dir), "augment": True})
        imf = D.build({"name": "imagefolder", "path": str(folder), "image_size": args.image_size})
        cases = [
            ("cifar10 (batched uint8 aug)", cifar.train, lambda: M.build("resnet20", 10)),
            ("cifar10 (per-sample aug)", PerItem(cifar.train), lambda: M.build("resnet20", 10)),
            ("imagefolder (PIL RRC+flip)", imf.train,
             lambda: M.build("small_cnn", imf.num_classes, in_channels=3)),
        ]
        for label, ds, make_model in cases:
            loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=False,
                                num_workers=args.workers, persistent_workers=args.workers > 0)
            r = epoch_times(loader, make_model(), args.max_batches)
            rows.append((label, len(ds), r))

    print(f"\n{'dataset':30s} {'images':>7s} {'load s':>8s} {'load+train s':>13s} "
          f"{'load/train':>11s} {'wait/train':>11s}")
    for label, n, r in rows:
        print(f"{label:30s} {n:7d} {r['load']:8.2f} {r['train']:13.2f} "
              f"{r['load'] / r['train']:11.1%} {r['wait'] / r['train']:11.1%}")
    print("\nload/train: load-only epoch time over load+train epoch time (ResNet-20 on CIFAR, small CNN "
          "on ImageFolder);\nwait/train: time the training loop blocked on the DataLoader.")


if __name__ == "__main__":
    main()
