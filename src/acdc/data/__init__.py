"""Datasets for AC/DC recipes.

``build(cfg, seed=...)`` turns the ``data:`` block of a recipe into a :class:`DataBundle`.
Each dataset declares the config keys it accepts (``allowed_keys``) so a recipe with a typo
fails at validation time rather than after hours of training.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import DataBundle, LMWindows, UInt8ImageDataset, stratified_split
from .cifar import build_cifar
from .idx import build_idx
from .imagefolder import build_imagefolder
from .small import SPLIT_KEYS, build_digits, build_mnist5k
from .subset import EVAL_SUBSET_SEED, dataset_labels, eval_subset, stratified_indices
from .text import build_chars, build_wikitext

Builder = Callable[[dict, int], DataBundle]

_REGISTRY: dict[str, tuple[Builder, frozenset[str]]] = {
    "mnist5k": (build_mnist5k, SPLIT_KEYS),
    "digits": (build_digits, SPLIT_KEYS),
    "cifar10": (build_cifar, frozenset({"name", "path", "augment"})),
    "cifar100": (build_cifar, frozenset({"name", "path", "augment"})),
    "imagefolder": (build_imagefolder, frozenset({"name", "path", "augment", "image_size"})),
    "mnist": (build_idx, frozenset({"name", "path", "augment"})),
    "fashion_mnist": (build_idx, frozenset({"name", "path", "augment"})),
    "wikitext": (build_wikitext, frozenset({"name", "path", "context", "stride", "eval_split"})),
    "chars": (build_chars, frozenset({"name", "path", "context", "stride", "val_fraction"})),
}

DATASETS: tuple[str, ...] = tuple(_REGISTRY)


def _lookup(name: object) -> tuple[Builder, frozenset[str]]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return _REGISTRY[name]


def allowed_keys(name: str) -> set[str]:
    """Config keys accepted for dataset ``name`` (raises ValueError for an unknown dataset)."""
    return set(_lookup(name)[1])


def validate(cfg: dict) -> None:
    """Check a ``data:`` config block (known dataset, no unknown keys) without loading anything."""
    if not isinstance(cfg, dict):
        raise ValueError(f"data config must be a mapping, got {type(cfg).__name__}")
    if "name" not in cfg:
        raise ValueError(f"data config needs a 'name' key (one of: {', '.join(DATASETS)})")
    _, keys = _lookup(cfg["name"])
    for k in cfg:
        if k not in keys:
            raise ValueError(
                f"unknown key {k!r} for dataset {cfg['name']!r}; allowed keys: {', '.join(sorted(keys))}"
            )


def build(cfg: dict, *, seed: int = 0) -> DataBundle:
    """Load the dataset described by ``cfg`` (the recipe's ``data:`` block).

    ``seed`` drives random train/val splits where the dataset has no fixed split.
    """
    validate(cfg)
    builder, _ = _lookup(cfg["name"])
    return builder(dict(cfg), seed)


__all__ = [
    "DATASETS",
    "EVAL_SUBSET_SEED",
    "DataBundle",
    "LMWindows",
    "UInt8ImageDataset",
    "allowed_keys",
    "build",
    "dataset_labels",
    "eval_subset",
    "stratified_indices",
    "stratified_split",
    "validate",
]
