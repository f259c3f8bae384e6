"""One evaluation pass over a loader, shared by the loop's validation and ``agree``.

:func:`outputs` runs one or more models in eval mode under ``no_grad`` over a loader and yields their outputs with
the batch's targets; each module's train/eval mode is restored afterwards. Validation (:func:`acdc.train.evaluate`)
and agreement (:func:`acdc.measure.agreement.agreement`) only differ in what they sum from those outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["logits", "outputs", "split_batch"]


def logits(out: Any) -> torch.Tensor:
    """The logits of a model output: a tensor, ``out["logits"]``, ``out[0]`` or ``out.logits`` (HF-style)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out.logits


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, targets or None)`` of a batch ``(x, y)``, ``(x,)``, ``x`` or a dict (input/inputs/x, target/...)."""
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if isinstance(batch, dict):
        x = batch.get("input", batch.get("inputs", batch.get("x")))
        return x, batch.get("target", batch.get("targets", batch.get("y")))
    return batch, None


def _to(v: Any, device: str | torch.device) -> Any:
    return v.to(device) if isinstance(v, torch.Tensor) else v


def outputs(models: tuple[nn.Module, ...], loader: Iterable, device: str | torch.device, *, max_batches: int = 0,
            amp_ctx: Callable[[], Any] = contextlib.nullcontext) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Yield ``(one output per model, targets)`` per batch (at most ``max_batches`` when > 0), in eval mode.

    The forward runs under ``no_grad`` and ``amp_ctx()``; modes are restored when the pass ends or stops early.
    """
    modes = {m: m.training for model in models for m in model.modules()}
    try:
        for model in models:
            model.eval()
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            x, y = split_batch(batch)
            x, y = _to(x, device), _to(y, device)
            with torch.no_grad(), amp_ctx():
                outs = tuple(model(x) for model in models)
            yield outs, y
    finally:
        for m, mode in modes.items():
            m.training = mode
