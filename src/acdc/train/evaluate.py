"""Validation of a model over a loader: mean loss and top-1 accuracy (per token for LMs, plus perplexity).

The forward pass in eval mode under ``no_grad`` is :func:`acdc.measure.evaluation.outputs`, the same one
``agree`` uses, so the loop's validation numbers and ``acdc agree``'s accuracies come from one pass.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..measure.evaluation import outputs

__all__ = ["evaluate", "loss_and_correct"]


def loss_and_correct(out: torch.Tensor, y: torch.Tensor, task: str, smoothing: float = 0.0):
    """Cross-entropy (label-smoothed), number of correct top-1 predictions and of targets (tokens for LMs)."""
    if task == "lm":
        logits = out.reshape(-1, out.shape[-1])
        y = y.reshape(-1)
    else:
        logits = out
    loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
    correct = (logits.argmax(-1) == y).sum()
    return loss, correct, y.numel()


def evaluate(model: nn.Module, loader: DataLoader, task: str, device: torch.device, max_batches: int = 0,
             amp_ctx=contextlib.nullcontext) -> dict[str, float]:
    """Mean loss and top-1 accuracy (per token for LMs, plus perplexity)."""
    tot_loss, tot_correct, tot_n = 0.0, 0, 0
    for (out,), y in outputs((model,), loader, device, max_batches=max_batches, amp_ctx=amp_ctx):
        loss, correct, n = loss_and_correct(out, y, task)
        tot_loss += float(loss) * n
        tot_correct += int(correct)
        tot_n += n
    res = {"loss": tot_loss / max(1, tot_n), "acc": tot_correct / max(1, tot_n)}
    if task == "lm":
        res["ppl"] = math.exp(min(res["loss"], 50.0))
    return res
