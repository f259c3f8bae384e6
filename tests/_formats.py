"""Tiny dataset files in the real on-disk formats, for the data and recipe tests.

CIFAR pickles come from :func:`acdc.data.cifar.write_cifar` (shared with ``bench/data_loading.py``).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(root: Path, prefix: str, n: int, gz: bool = False, n_labels: int | None = None,
              img_magic: int = 2051, lbl_magic: int = 2049, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte`` (optionally gzipped); returns their arrays."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    n_labels = n if n_labels is None else n_labels
    labels = rng.integers(0, 10, n_labels).astype(np.uint8)
    op = gzip.open if gz else open
    ext = ".gz" if gz else ""
    with op(root / f"{prefix}-images-idx3-ubyte{ext}", "wb") as f:
        f.write(struct.pack(">iIII", img_magic, n, 28, 28) + imgs.tobytes())
    with op(root / f"{prefix}-labels-idx1-ubyte{ext}", "wb") as f:
        f.write(struct.pack(">iI", lbl_magic, n_labels) + labels.tobytes())
    return imgs, labels


def write_imagefolder(root: Path, classes=("cat", "dog", "eel"), n_train: int = 3, n_val: int = 1,
                      size: int = 20) -> Path:
    """``root/{train,val}/<class>/<k>.{jpg,png}`` random RGB images, class ``i`` ``size`` x ``size + i`` pixels."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                arr = rng.integers(0, 256, (size, size + ci, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{k}.{'png' if k % 2 else 'jpg'}")
    return root


def write_wikitext(root: Path, ptb: bool = False) -> tuple[str, str]:
    """WikiText (or PTB) train/valid/test token files with a fixed small text; returns (train, valid) text."""
    train = " = Title = \n\n the cat sat on the mat \n the dog sat \n" * 10
    valid = " the cat ran far \n the zebra sat \n" * 5
    names = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt") if ptb else (
        "wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")
    root.mkdir(parents=True, exist_ok=True)
    for fname, text in zip(names, (train, valid, valid.replace("cat", "dog"))):
        (root / fname).write_text(text, encoding="utf-8")
    return train, valid
