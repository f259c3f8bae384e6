"""Local shards of FSDP2 parameters: what the masking mechanism needs to work on DTensors without gathering them.

Under ``fully_shard`` every parameter, its ``.grad`` and its optimizer state are DTensors sharded on dim 0
(``torch.chunk`` row blocks, possibly uneven or empty). A mask for such a parameter is a bool DTensor with the same
global shape and placement, built from the local rows only (:func:`like`): it is never materialised in full, it
checkpoints through ``torch.distributed.checkpoint`` like the weights, and ``mask.shape == param.shape`` holds as
for plain tensors. In-place work (masking weights, gradients, optimizer state) runs on :func:`local` views under
``no_grad``. Counts are *never* read from a reduced DTensor (``int(dt.sum())`` returns this rank's partial sum):
:func:`global_counts` sums local counts explicitly.

Nothing here imports ``torch.distributed.tensor`` unless it is already loaded: no DTensor can exist before that.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import torch

__all__ = ["is_dtensor", "any_dtensor", "local", "like", "shard_like", "global_counts", "load_full_state",
           "magnitude_within", "sharded_target_masks"]


def is_dtensor(t: object) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (cheap: no import when DTensors were never loaded)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def any_dtensor(tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The first DTensor among ``tensors`` (a mapping's values), or None."""
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return next((t for t in values if is_dtensor(t)), None)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: in-place changes under ``no_grad`` reach the DTensor); ``t`` itself
    for a plain tensor."""
    return t.to_local() if is_dtensor(t) else t


def like(local_t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Wrap ``local_t`` (this rank's rows) as a DTensor placed like ``ref`` (same mesh, placement, global shape);
    ``local_t`` itself when ``ref`` is a plain tensor. The global shape is passed explicitly: uneven shards."""
    if not is_dtensor(ref):
        return local_t
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local_t, ref.device_mesh, ref.placements, run_check=False, shape=ref.shape,
                              stride=ref.stride())


def shard_like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A full-size tensor (e.g. a mask saved by a 1-process run) cut to ``ref``'s local rows and wrapped like it.

    FSDP2 shards dim 0 with ``torch.chunk``: rank ``r`` holds chunk ``r`` (an empty block when there are fewer
    chunks than ranks)."""
    if not is_dtensor(ref) or is_dtensor(full):
        return full
    mesh = ref.device_mesh
    chunks = torch.chunk(full, mesh.size(0), dim=0)
    r = mesh.get_local_rank(0)
    part = chunks[r] if r < len(chunks) else full[0:0]
    return like(part.contiguous().to(ref.device), ref)


def load_full_state(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """``module.load_state_dict(tensors, strict=True)`` for full-size tensors (a 1-process file), also into a
    sharded module: each rank copies its rows of each tensor into its shard (no communication)."""
    sd = module.state_dict()
    if any_dtensor(sd) is None:
        module.load_state_dict(tensors, strict=True)
        return
    missing, extra = sorted(set(sd) - set(tensors)), sorted(set(tensors) - set(sd))
    bad = [f"{k}: {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in sd.items()
           if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    if missing or extra or bad:
        raise RuntimeError(f"state dict mismatch: missing {missing[:5]}, unexpected {extra[:5]}, shapes {bad[:5]}")
    with torch.no_grad():
        for k, v in sd.items():
            local(v).copy_(local(shard_like(tensors[k].to(v.dtype), v)))


def global_counts(counts: Sequence[int], tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> list[int]:
    """``counts`` (one per local tensor) summed over the ranks of the tensors' mesh when they are DTensors;
    unchanged for plain tensors. Every rank must call it at the same point (one all-reduce)."""
    ref = any_dtensor(tensors)
    if ref is None or not counts:
        return [int(c) for c in counts]
    import torch.distributed as dist

    group = ref.device_mesh.get_group(0)
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    t = torch.tensor([int(c) for c in counts], dtype=torch.int64, device=dev)
    dist.all_reduce(t, group=group)
    return [int(c) for c in t.tolist()]


def magnitude_within(weights: Mapping[str, torch.Tensor],
                     allowed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores whose plain top-k is the top-k of |w| among ``allowed`` positions (``topk_within``'s rule): allowed
    positions score ``nextafter(|w|, inf)`` — order and ties among them unchanged, an allowed zero above every
    disallowed position — and disallowed ones 0. So the exact sharded top-k of these scores keeps the largest
    allowed |w|, ties and allowed zeros lowest global index first, as the single-process selection does."""
    out = {}
    for n, w in weights.items():
        lw = local(w).detach().abs().float()
        up = torch.nextafter(lw, torch.full_like(lw, float("inf")))
        out[n] = like(torch.where(local(allowed[n]).to(lw.device), up, torch.zeros_like(lw)), w)
    return out


def sharded_target_masks(kind: str, weights: Mapping[str, torch.Tensor], sparsity: float,
                         layer_sparsity: Mapping[str, float] | None = None, n: int = 0, m: int = 0,
                         skipped: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Masks of a sparsity target over DTensor weights, as DTensors placed like them; bit-identical to the
    single-process rule on the gathered weights (``global`` / ``uniform``: the exact sharded top-k of
    :mod:`acdc.distributed.topk`; ``nm``: N:M groups lie inside one row, and dim-0 shards keep rows whole)."""
    from .. import masks as _masks
    from .topk import sharded_global_magnitude, sharded_uniform_magnitude

    if kind == "nm":
        out = {}
        for name, w in weights.items():
            lw = local(w).detach()
            lm = torch.ones(lw.shape, dtype=torch.bool, device=lw.device) if name in skipped else _masks.n_m(lw, n, m)
            out[name] = like(lm, w)
        return out
    if kind == "uniform":
        per = {k: layer_sparsity.get(k, sparsity) for k in weights} if layer_sparsity else sparsity
        local_masks = sharded_uniform_magnitude(weights, per)
    elif kind == "global":
        local_masks = sharded_global_magnitude(weights, sparsity)
    else:
        raise ValueError(f"target {kind!r} has no sharded (FSDP) selection; use global, uniform or N:M")
    return {k: like(v, weights[k]) for k, v in local_masks.items()}
