"""MNIST / Fashion-MNIST from the original IDX files (optionally gzipped)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from .base import DataBundle, UInt8ImageDataset, data_path

_STATS = {"mnist": ((0.1307,), (0.3081,)), "fashion_mnist": ((0.2860,), (0.3530,))}
_SUBDIRS = {"mnist": ("raw", "MNIST/raw"), "fashion_mnist": ("raw", "FashionMNIST/raw")}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def _find(root: Path, stem: str, name: str) -> Path:
    """Locate ``stem`` (or ``stem.gz``, or the ``-idx`` -> ``.idx`` spelling) under root."""
    alt = stem.replace("-idx", ".idx")
    dirs = [root] + [root / s for s in _SUBDIRS[name]]
    for d in dirs:
        for cand in (stem, stem + ".gz", alt, alt + ".gz"):
            if (d / cand).is_file():
                return d / cand
    raise FileNotFoundError(
        f"{name}: missing IDX file {stem!r} (or {stem}.gz) in {str(root)!r}; data.path must be the folder "
        f"with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
    )


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Parse an IDX file (big-endian header: magic, then one uint32 per dimension; uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read IDX file {str(path)!r}: {e}") from e
    if len(raw) < 8:
        raise ValueError(f"IDX file {str(path)!r} is truncated ({len(raw)} bytes)")
    magic = struct.unpack(">i", raw[:4])[0]
    if magic != expect_magic:
        what = "images" if expect_magic == IMAGES_MAGIC else "labels"
        raise ValueError(
            f"IDX file {str(path)!r} has magic number {magic}, expected {expect_magic} for {what}; "
            f"the file is corrupt, not an IDX {what} file, or swapped with another file"
        )
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(
            f"IDX file {str(path)!r} header says shape {tuple(dims)} ({int(np.prod(dims))} values) "
            f"but holds {data.size}; the file is truncated or corrupt - re-download it"
        )
    return data.reshape(dims)


def build_idx(cfg: dict, seed: int) -> DataBundle:
    """MNIST-format dataset: train = train-*, val = t10k-*; images (1, 28, 28), normalised."""
    name = cfg["name"]
    root = data_path(cfg, "the folder holding the IDX files", hint="; point it at the IDX files")

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        fi = _find(root, f"{split}-images-idx3-ubyte", name)
        fl = _find(root, f"{split}-labels-idx1-ubyte", name)
        x = read_idx(fi, IMAGES_MAGIC)
        y = read_idx(fl, LABELS_MAGIC)
        if x.ndim != 3:
            raise ValueError(f"IDX images file {str(fi)!r} has {x.ndim} dims, expected 3 (N, rows, cols)")
        if len(x) != len(y):
            raise ValueError(
                f"{name}: {str(fi)!r} has {len(x)} images but {str(fl)!r} has {len(y)} labels; "
                f"the files are from different sets or truncated"
            )
        return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))

    xtr, ytr = load("train")
    xte, yte = load("t10k")
    mean, std = _STATS[name]
    return DataBundle(
        train=UInt8ImageDataset(xtr, ytr, mean, std),
        val=UInt8ImageDataset(xte, yte, mean, std),
        num_classes=10,
        input_shape=tuple(xtr.shape[1:]),
        name=name,
        info={"n_train": len(ytr), "n_val": len(yte), "path": str(root), "augment": False},
    )
