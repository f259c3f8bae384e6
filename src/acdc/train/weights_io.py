"""The weights and masks of one resumable checkpoint: a plain safetensors pair, or one compressed file.

Plain (default): ``model.safetensors`` (:func:`acdc.train.checkpoint.save_model`) and, in sparse phases,
``masks.safetensors``. Compressed (``acdc train --compress-checkpoints``, sparse phases only; a dense phase has
nothing to compress): ``model.safetensors`` in the sparse-bitmask layout of :mod:`acdc.export.compressed`, which
holds the true masks too. Loading detects which one a checkpoint holds, so ``--resume`` accepts either.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model, load_tensors, save_model, save_tensors


def save_weights(ckpt_dir: str | Path, model: nn.Module, masks: dict[str, torch.Tensor] | None, epoch: int,
                 compress: bool = False) -> None:
    """Write the model (and masks) of a checkpoint into ``ckpt_dir``."""
    ckpt_dir = Path(ckpt_dir)
    if compress and masks is not None:
        from ..export.compressed import save_compressed

        save_compressed(ckpt_dir / "model.safetensors", model, masks, metadata={"epoch": epoch})
        return
    save_model(ckpt_dir / "model.safetensors", model, {"epoch": epoch})
    if masks is not None:
        save_tensors(ckpt_dir / "masks.safetensors", masks)


def load_weights(ckpt_dir: str | Path, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Load a checkpoint's weights into ``model``; returns its masks (None in a dense phase)."""
    from ..export.compressed import is_compressed, load_compressed

    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / "model.safetensors"
    if path.is_file() and is_compressed(path):
        return load_compressed(path, model)
    load_model(path, model)
    masks_path = ckpt_dir / "masks.safetensors"
    return load_tensors(masks_path)[0] if masks_path.exists() else None
