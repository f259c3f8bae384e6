"""Sample-level agreement between two models, e.g. a sparse/dense AC/DC pair (paper section 4, Table 14).

Cross-entropy direction: ``H(p_a, p_b) = -sum_c p_a(c) log p_b(c)`` — how well model B's distribution codes
model A's predictions (A is the "reference", e.g. the dense model). It equals the entropy of A plus
``KL(p_a || p_b)``, so a model compared with itself gives its mean entropy. Both directions and their mean
(the symmetric one) are returned. Everything is averaged over samples; for LM outputs ``(B, T, V)`` every token
position is a sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .evaluation import logits as _logits
from .evaluation import outputs

__all__ = ["agreement", "agreement_from_logits"]


class _Acc:
    """Running sums over samples (float64 for stable means)."""

    def __init__(self) -> None:
        self.n = 0
        self.n_labeled = 0
        self.s: dict[str, float] = {}

    def add(self, key: str, value: torch.Tensor | float) -> None:
        self.s[key] = self.s.get(key, 0.0) + float(value)


def _update(acc: _Acc, la: torch.Tensor, lb: torch.Tensor, y: torch.Tensor | None, ignore_index: int) -> None:
    if la.shape != lb.shape:
        raise ValueError(f"model outputs differ in shape: {tuple(la.shape)} vs {tuple(lb.shape)}")
    v = la.shape[-1]
    la = la.reshape(-1, v).double()
    lb = lb.reshape(-1, v).double()
    if y is not None:
        y = y.reshape(-1).to(la.device)
        if y.numel() != la.shape[0]:
            raise ValueError(f"{y.numel()} targets for {la.shape[0]} output positions")
        keep = y != ignore_index
        if not bool(keep.all()):
            la, lb, y = la[keep], lb[keep], y[keep]
    lpa, lpb = F.log_softmax(la, -1), F.log_softmax(lb, -1)
    pa, pb = lpa.exp(), lpb.exp()
    pred_a, pred_b = la.argmax(-1), lb.argmax(-1)
    acc.n += la.shape[0]
    acc.add("agree", (pred_a == pred_b).sum())
    acc.add("ce_ab", -(pa * lpb).sum(-1).sum())
    acc.add("ce_ba", -(pb * lpa).sum(-1).sum())
    acc.add("ent_a", -(pa * lpa).sum(-1).sum())
    acc.add("ent_b", -(pb * lpb).sum(-1).sum())
    if y is not None:
        ra, rb = pred_a == y, pred_b == y
        acc.n_labeled += y.numel()
        acc.add("acc_a", ra.sum())
        acc.add("acc_b", rb.sum())
        acc.add("both_right", (ra & rb).sum())
        acc.add("only_a_right", (ra & ~rb).sum())
        acc.add("only_b_right", (~ra & rb).sum())
        wrong = ~ra & ~rb
        acc.add("both_wrong", wrong.sum())
        acc.add("both_wrong_same", (wrong & (pred_a == pred_b)).sum())
        acc.add("both_wrong_different", (wrong & (pred_a != pred_b)).sum())


def _result(acc: _Acc) -> dict[str, Any]:
    n, s = acc.n, acc.s
    if n == 0:
        raise ValueError("no samples to compare")
    res: dict[str, Any] = {
        "n": n,
        "agreement": s["agree"] / n,
        "disagreement": 1.0 - s["agree"] / n,
        "cross_entropy_ab": s["ce_ab"] / n,
        "cross_entropy_ba": s["ce_ba"] / n,
        "cross_entropy_sym": 0.5 * (s["ce_ab"] + s["ce_ba"]) / n,
        "entropy_a": s["ent_a"] / n,
        "entropy_b": s["ent_b"] / n,
        "kl_ab": (s["ce_ab"] - s["ent_a"]) / n,
    }
    keys = ("acc_a", "acc_b", "both_right", "only_a_right", "only_b_right", "both_wrong",
            "both_wrong_same", "both_wrong_different")
    m = acc.n_labeled
    for k in keys:
        res[k] = s.get(k, 0.0) / m if m else None
    return res


def agreement_from_logits(
    logits_a: torch.Tensor, logits_b: torch.Tensor, targets: torch.Tensor | None = None, ignore_index: int = -100
) -> dict[str, Any]:
    """:func:`agreement` on precomputed outputs ``(N, C)`` or ``(B, T, V)`` (+ optional targets)."""
    acc = _Acc()
    _update(acc, logits_a.detach(), logits_b.detach(), targets, ignore_index)
    return _result(acc)


def agreement(
    model_a: nn.Module,
    model_b: nn.Module,
    loader: Iterable,
    device: str | torch.device = "cpu",
    *,
    ignore_index: int = -100,
) -> dict[str, Any]:
    """Compare two models' predictions over ``loader`` (batches ``(x, y)``, ``(x,)``, ``x`` or a dict).

    Returns fractions over samples: ``agreement`` (same top-1), ``cross_entropy_ab`` = H(p_a, p_b) (see module
    docstring), ``cross_entropy_ba``, ``cross_entropy_sym`` (their mean), ``entropy_a/b``, ``kl_ab``, and when
    targets are given ``acc_a``, ``acc_b`` and the breakdown ``both_right``, ``only_a_right``, ``only_b_right``,
    ``both_wrong`` = ``both_wrong_same`` (same wrong class) + ``both_wrong_different`` (else None). Positions with
    target ``ignore_index`` are skipped. Models run in eval mode; their modes are restored afterwards.
    """
    acc = _Acc()
    for (out_a, out_b), y in outputs((model_a, model_b), loader, device):
        _update(acc, _logits(out_a), _logits(out_b), y, ignore_index)
    return _result(acc)
