"""Label-corruption ("memorization") probe of the paper (section 4, Fig. 2b, appendix B.6).

``corrupt_labels`` picks ``n`` distinct training samples and replaces each label by one drawn uniformly from
ALL ``num_classes`` classes (as "randomly change their labels"), so about ``n / C`` keep their true label by
chance; ``info`` reports how many. ``CorruptedDataset`` serves the corrupted labels, and
``corrupted_accuracy`` measures how the model classifies the chosen samples w.r.t. the corrupted and the true
labels (the sparse phases tend to predict the true class, the dense phases memorize the corrupted one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

__all__ = ["corrupt_labels", "CorruptedDataset", "corrupted_accuracy", "train_targets"]


def _as_long(t: torch.Tensor | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()


def corrupt_labels(
    targets: torch.Tensor | Sequence[int], num_classes: int, n: int = 1000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Replace the label source of ``n`` distinct random samples by a uniform draw over all classes.

    Reproducible by ``seed`` (a private ``torch.Generator``; the global RNG is untouched). Returns
    ``(new_targets, indices, info)``: ``indices`` sorted ascending, ``info`` with ``n``, ``kept_true_label``
    (draws that hit the true class), ``changed`` (= n - kept), ``seed``, ``num_classes``.
    """
    y = _as_long(targets)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0 <= n <= y.numel():
        raise ValueError(f"cannot corrupt n={n} labels of a dataset with {y.numel()} samples")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(y.numel(), generator=g)[:n].sort().values
    new_labels = torch.randint(0, num_classes, (n,), generator=g)
    new = y.clone()
    new[idx] = new_labels
    kept = int((new_labels == y[idx]).sum())
    info = {"n": n, "kept_true_label": kept, "changed": n - kept, "seed": int(seed), "num_classes": num_classes}
    return new, idx, info


class CorruptedDataset(Dataset):
    """Wraps a ``(x, y)`` dataset and returns ``corrupted_labels[j]`` as the label of sample ``indices[j]``.

    Other samples are passed through unchanged. Use :meth:`from_new_targets` with the full ``new_targets`` of
    :func:`corrupt_labels`.
    """

    def __init__(
        self, dataset: Dataset, indices: torch.Tensor | Sequence[int], corrupted_labels: torch.Tensor | Sequence[int]
    ) -> None:
        idx, lab = _as_long(indices), _as_long(corrupted_labels)
        if idx.numel() != lab.numel():
            raise ValueError(f"{idx.numel()} indices but {lab.numel()} corrupted labels")
        self.dataset = dataset
        self.indices = idx
        self.labels = {int(i): int(l) for i, l in zip(idx.tolist(), lab.tolist())}

    @classmethod
    def from_new_targets(
        cls, dataset: Dataset, new_targets: torch.Tensor | Sequence[int], indices: torch.Tensor | Sequence[int]
    ) -> CorruptedDataset:
        """Build from the full per-sample ``new_targets`` and the corrupted ``indices``."""
        idx = _as_long(indices)
        return cls(dataset, idx, _as_long(new_targets)[idx])

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def is_corrupted(self, i: int) -> bool:
        return int(i) in self.labels

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        key = int(i) if int(i) >= 0 else int(i) + len(self)
        if key not in self.labels:
            return item
        x, y, *rest = item
        new = self.labels[key]
        y = torch.as_tensor(new, dtype=y.dtype) if isinstance(y, torch.Tensor) else new
        return (x, y, *rest)


def _aligned(t: torch.Tensor | Sequence[int], idx: torch.Tensor, n_data: int, what: str) -> torch.Tensor:
    t = _as_long(t)
    if t.numel() == idx.numel():
        return t
    if t.numel() == n_data:
        return t[idx]
    raise ValueError(f"{what} has {t.numel()} entries: expected {idx.numel()} (one per index) or {n_data}")


@torch.no_grad()
def corrupted_accuracy(
    model: nn.Module,
    dataset: Dataset,
    indices: torch.Tensor | Sequence[int],
    corrupted_targets: torch.Tensor | Sequence[int],
    true_targets: torch.Tensor | Sequence[int],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> dict[str, float]:
    """Top-1 accuracy of ``model`` on ``dataset[indices]`` w.r.t. the corrupted and the true labels.

    The targets are aligned with ``indices`` (one per index) or full per-dataset tensors (indexed by
    ``indices``); only the inputs of ``dataset`` are used. Returns ``acc_vs_corrupted``, ``acc_vs_true``,
    ``acc_vs_other`` (neither) and ``n``. The model runs in eval mode; its mode is restored.
    """
    idx = _as_long(indices)
    n_data = len(dataset)  # type: ignore[arg-type]
    yc = _aligned(corrupted_targets, idx, n_data, "corrupted_targets")
    yt = _aligned(true_targets, idx, n_data, "true_targets")
    if idx.numel() == 0:
        raise ValueError("no indices to evaluate")
    modes = {m: m.training for m in model.modules()}
    preds = []
    try:
        model.eval()
        for s in range(0, idx.numel(), batch_size):
            xs = [dataset[int(i)][0] for i in idx[s : s + batch_size]]
            x = torch.stack([torch.as_tensor(v) for v in xs]).to(device)
            out = model(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            preds.append(out.argmax(-1).cpu())
    finally:
        for m, mode in modes.items():
            m.training = mode
    p = torch.cat(preds)
    hit_c, hit_t = p == yc, p == yt
    n = idx.numel()
    return {
        "acc_vs_corrupted": float(hit_c.sum()) / n,
        "acc_vs_true": float(hit_t.sum()) / n,
        "acc_vs_other": float((~hit_c & ~hit_t).sum()) / n,
        "n": n,
    }


def train_targets(dataset: Any) -> Any:
    """The labels of a classification dataset as a 1-D long tensor (fast paths for the built-in datasets)."""
    for attr in ("targets", "labels"):
        t = getattr(dataset, attr, None)
        if t is not None and not callable(t):
            return torch.as_tensor(t, dtype=torch.long).reshape(-1)
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        return tensors[1].long().reshape(-1)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)
