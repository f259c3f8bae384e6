"""SET (Mocanu et al. 2018): sparse from the start; periodically drop the smallest weights, regrow at random."""

from __future__ import annotations

import torch

from .rigl import DropGrow


class SET(DropGrow):
    """Like :class:`~acdc.methods.rigl.RigL` but grows uniformly at random among the positions not kept
    (seeded ``torch.Generator``, saved in ``state_dict``), so no dense gradient is ever needed.

    Differences from the original SET, as in the RigL paper's SET baseline: drop by |w| (not separately the
    smallest positive and largest negative weights) and the same cosine-decayed drop fraction by default
    (``decay="constant"`` gives the original fixed ζ). Default layer distribution: ``uniform``.
    """

    name = "set"
    default_distribution = "uniform"
    _needs_grads = False

    def training_flops_per_sample(self, current_flops_per_sample: float,
                                  dense_flops_per_sample: float) -> float:
        """Training FLOPs per sample: ``3 f_s`` (random growth needs no dense gradient)."""
        return 3.0 * current_flops_per_sample

    def _grow_scores(self, name: str, param: torch.Tensor) -> torch.Tensor:
        return torch.rand(param.shape, generator=self.generator).to(param.device)
