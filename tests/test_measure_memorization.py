"""Label corruption: reproducibility, exactly-n replaced label sources, accuracy w.r.t. both labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from acdc.measure.memorization import CorruptedDataset, corrupt_labels, corrupted_accuracy


def test_reproducible_and_exactly_n():
    y = torch.arange(200) % 10
    new, idx, info = corrupt_labels(y, 10, n=50, seed=3)
    new2, idx2, info2 = corrupt_labels(y.tolist(), 10, n=50, seed=3)
    assert torch.equal(new, new2) and torch.equal(idx, idx2) and info == info2
    other, idx3, _ = corrupt_labels(y, 10, n=50, seed=4)
    assert not torch.equal(idx, idx3)
    assert idx.unique().numel() == 50 and torch.equal(idx, idx.sort().values)
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(new[untouched], y[untouched])  # only the chosen n sources are replaced
    kept = int((new[idx] == y[idx]).sum())
    assert info["kept_true_label"] == kept and info["changed"] == 50 - kept
    assert int((new != y).sum()) == 50 - kept
    assert new.min() >= 0 and new.max() < 10


def test_uniform_over_all_classes_keeps_about_one_in_c():
    y = torch.zeros(20000, dtype=torch.long)
    _, _, info = corrupt_labels(y, 4, n=20000, seed=0)
    assert 0.23 < info["kept_true_label"] / 20000 < 0.27  # ~1/C keep the true label by chance


def test_too_many_raises():
    with pytest.raises(ValueError):
        corrupt_labels(torch.zeros(5, dtype=torch.long), 3, n=6)


def test_dataset_and_accuracy():
    x = torch.arange(6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ds = TensorDataset(x, y)
    cds = CorruptedDataset(ds, [1, 4], [2, 0])
    assert [int(cds[i][1]) for i in range(6)] == [0, 2, 2, 0, 0, 2]
    assert int(cds[-2][1]) == 0 and cds.is_corrupted(4) and not cds.is_corrupted(0)
    new = y.clone()
    new[[1, 4]] = torch.tensor([2, 0])
    cds2 = CorruptedDataset.from_new_targets(ds, new, [1, 4])
    assert [int(cds2[i][1]) for i in range(6)] == [0, 2, 2, 0, 0, 2]

    # model predicts class (id % 3) for ids 0..2 and 0 for 3..5: x=1 -> 1 (true), x=4 -> 0 (corrupted)
    table = torch.zeros(6, 3)
    for i, c in enumerate([0, 1, 2, 0, 0, 0]):
        table[i, c] = 1.0

    class Lookup(nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return table[ids]

    res = corrupted_accuracy(Lookup(), cds, [1, 4], [2, 0], [1, 1])
    assert res == {"acc_vs_corrupted": 0.5, "acc_vs_true": 0.5, "acc_vs_other": 0.0, "n": 2}
    res_full = corrupted_accuracy(Lookup(), ds, torch.tensor([1, 4]), new, y, batch_size=1)
    assert res_full == res
