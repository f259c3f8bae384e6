"""One-shot magnitude pruning of a trained dense model, then fine-tuning at the fixed mask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..distributed.shards import load_full_state
from ..masking import canonical_name, unwrap_model
from .base import SharedOptions, SparseMethod

if TYPE_CHECKING:
    from typing import Unpack


def load_trained(model: nn.Module, path: str | Path) -> None:
    """Load the trained weights to prune from a ``.safetensors`` file (e.g. a run's ``final.safetensors`` or
    ``dense.safetensors``) into ``model``, strictly. Never unpickles; a missing, unreadable or non-matching file
    raises ``ValueError`` naming it and the fix. Names saved from a DDP/``torch.compile`` wrapper are accepted."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"oneshot: from_checkpoint file not found: {str(p)!r}; point it at a trained model's "
                         ".safetensors file (e.g. RUN_DIR/final.safetensors), relative to the working directory")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"oneshot: from_checkpoint {str(p)!r} is not a readable safetensors file ({e}); save the "
                         "trained model with acdc's save_model or safetensors.torch.save_file") from None
    for k in set(json.loads(meta.get("bool_keys", "[]"))) & set(tensors):
        tensors[k] = tensors[k].bool()
    target = unwrap_model(model)
    names = set(target.state_dict())
    if set(tensors) != names:
        tensors = {canonical_name(k): v for k, v in tensors.items()}
    missing, unexpected = sorted(names - set(tensors)), sorted(set(tensors) - names)
    if missing or unexpected:
        raise ValueError(f"oneshot: from_checkpoint {str(p)!r} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; use a checkpoint of the same architecture")
    try:
        load_full_state(target, tensors)  # plain, or each rank's rows into an FSDP2-sharded model
    except RuntimeError as e:
        raise ValueError(f"oneshot: from_checkpoint {str(p)!r} does not match the model: {e}") from None


class OneShot(SparseMethod):
    """Prune ``model`` once at construction (``structure`` × ``distribution``: global / uniform / ERK magnitude,
    or N:M) and keep the mask.

    ``from_checkpoint``: a ``.safetensors`` file of trained weights loaded into ``model`` first (see
    :func:`load_trained`); without it the model is pruned as given.
    """

    name = "oneshot"
    needs_dense_init = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sparsity: float,
        from_checkpoint: str | Path | None = None,
        **shared: Unpack[SharedOptions],
    ) -> None:
        if from_checkpoint is not None:
            load_trained(model, from_checkpoint)
        super().__init__(model, optimizer, sparsity=sparsity, **shared)
        masks = self.target.compute(self.masked.weights(), self.target_sparsity)
        self._install_masks(masks)
        self._emit("compress", masks=masks)
