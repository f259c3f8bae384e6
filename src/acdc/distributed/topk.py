"""Exact global magnitude top-k over dim-0 shards, without gathering weights.

Every rank holds a contiguous block of rows of each tensor (what FSDP2's ``fully_shard`` does: ``Shard(0)`` via
``torch.chunk``, so shards may be uneven or empty). The global order of the single-process rule
(:func:`acdc.masks.global_magnitude`: tensors in dict order, row-major inside each) is then
*tensor, shard (rank in mesh order), local row-major*. The selection is the same radix select as ``acdc.masks``:

1. all-reduce the 2**15-bin histogram of the high 15 bits of |w| (256 KiB) -> bucket of the k-th largest;
2. all-reduce the 2**16-bin histogram of the low 16 bits inside that bucket (512 KiB) -> exact threshold T;
3. only if some but not all values equal to T are kept: all-gather each rank's count of ``|w| == T`` per tensor
   (8 B x (tensors + 1) per rank), so each rank knows how many ties precede its shard in global order and fills
   its share, lowest global index first.

The result is bit-identical to ``global_magnitude`` on the gathered weights, and the masks returned are for the
local shards only (never materialised in full). Collective payload: 768 KiB + 8 B x world x (tensors + 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from acdc import masks as _m

__all__ = ["sharded_global_magnitude", "sharded_uniform_magnitude", "local_shards", "CommCounter"]


class CommCounter:
    """Counts the bytes each rank sends into collectives (payload sizes, one count per call)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0

    def add(self, t: torch.Tensor) -> None:
        self.bytes += t.numel() * t.element_size()
        self.calls += 1


def _placement_error(name: str, what: str) -> ValueError:
    return ValueError(
        f"sharded top-k: parameter {name!r} is {what}; only 1-D device meshes with Shard(0) placement (FSDP2 "
        "fully_shard) are supported — 2-D meshes (HSDP, FSDP + tensor parallel), Shard(d>0) and Replicate/Partial "
        "(tensor parallel) are not. Use fully_shard on a 1-D mesh, or plain tensors with acdc.masks.global_magnitude"
    )


def local_shards(
    weights: Mapping[str, torch.Tensor], group: dist.ProcessGroup | None = None
) -> tuple[dict[str, torch.Tensor], dist.ProcessGroup | None, int]:
    """Local row blocks of ``weights`` plus the process group and this rank's shard index.

    DTensors must live on one 1-D mesh with ``Shard(0)``; anything else raises a ValueError naming the placement.
    Plain tensors are taken as this rank's dim-0 block, shards ordered by rank in ``group``.
    """
    from torch.distributed.tensor import DTensor, Shard

    local: dict[str, torch.Tensor] = {}
    mesh = None
    for name, w in weights.items():
        if isinstance(w, DTensor):
            if w.device_mesh.ndim != 1:
                raise _placement_error(name, f"on a {w.device_mesh.ndim}-D device mesh {tuple(w.device_mesh.shape)}")
            pl = w.placements[0]
            if not (isinstance(pl, Shard) and pl.dim == 0):
                raise _placement_error(name, f"placed as {pl}")
            if mesh is None:
                mesh = w.device_mesh
            elif w.device_mesh != mesh:
                raise ValueError(f"sharded top-k: parameter {name!r} lives on a different device mesh than the others")
            local[name] = w.to_local().detach()
        else:
            if mesh is not None:
                raise ValueError(f"sharded top-k: mix of DTensors and plain tensors ({name!r} is plain)")
            local[name] = w.detach()
    if mesh is not None:
        if group is not None:
            raise ValueError("sharded top-k: pass either DTensors (their mesh gives the group) or a group, not both")
        return local, mesh.get_group(0), mesh.get_local_rank(0)
    return local, group, dist.get_rank(group)


def _all_reduce(t: torch.Tensor, group, counter: CommCounter | None) -> torch.Tensor:
    if counter is not None:
        counter.add(t)
    dist.all_reduce(t, group=group)
    return t


def _sharded_topk(
    local: Mapping[str, torch.Tensor], total: int, keep: int, group, shard: int, counter: CommCounter | None
) -> dict[str, torch.Tensor]:
    """Keep exactly ``keep`` of the ``total`` gathered values across all ranks' ``local`` shards (global rule)."""
    dev = next(iter(local.values())).device
    if keep == 0 or keep == total:
        return {n: torch.full(t.shape, keep > 0, dtype=torch.bool, device=dev) for n, t in local.items()}
    hist = _all_reduce(_m._high_hist(local), group, counter)
    if int(hist[_m._NONFINITE_BUCKET :].sum()):  # every rank sees it, so every rank raises (no hang)
        for n, t in local.items():
            _m._check_finite(n, t)
        raise ValueError("weights on another rank contain NaN or inf; cannot rank by magnitude (check the loss)")
    b, greater = _m._kth_bucket(hist, keep)
    need = keep - greater
    hist2 = _all_reduce(_m._low_hist(local, b), group, counter)
    lo, greater2 = _m._kth_bucket(hist2, need)
    thr = _m._bits_to_float((b << 16) | lo)
    ties_take = need - greater2  # values equal to thr to keep, lowest global index first
    n_ties = int(hist2[lo])
    names = list(local)
    if ties_take == n_ties:  # every tie kept: no ordering needed
        skips = dict.fromkeys(names, 0)
        takes = dict.fromkeys(names, n_ties)
    else:
        row = torch.zeros(len(names) + 1, dtype=torch.int64, device=dev)
        row[0] = shard
        for j, n in enumerate(names):
            row[j + 1] = sum(int((_m._f32(c).abs() == thr).sum()) for _, c in _m._chunks(local[n]))
        rows = [torch.empty_like(row) for _ in range(dist.get_world_size(group))]
        if counter is not None:
            counter.add(row)
        dist.all_gather(rows, row, group=group)
        table = torch.stack(rows).cpu()
        table = table[torch.argsort(table[:, 0])][:, 1:]  # rows in shard order; [shard, tensor] tie counts
        before_tensor = torch.cumsum(table.sum(0), 0) - table.sum(0)  # ties in earlier tensors, all shards
        before_shard = table[:shard].sum(0)  # ties in earlier shards of the same tensor
        skips, takes = {}, {}
        for j, n in enumerate(names):
            before = int(before_tensor[j] + before_shard[j])
            skips[n] = 0
            takes[n] = max(0, min(ties_take - before, int(table[shard, j])))
    out = {}
    for n, t in local.items():
        mask, _ = _m._threshold_mask(t, thr, skips[n], takes[n])
        out[n] = mask.view(t.shape)
    return out


def sharded_global_magnitude(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    group: dist.ProcessGroup | None = None,
    counter: CommCounter | None = None,
) -> dict[str, torch.Tensor]:
    """Masks for the local shards equal to ``global_magnitude`` over the gathered weights, bit for bit.

    ``weights``: FSDP2 DTensors (1-D mesh, ``Shard(0)``) or plain local dim-0 blocks with ``group``. Every rank
    must call it with the same names in the same order. Prunes exactly ``round(sparsity * n_total)``.
    """
    s = _m.check_sparsity(sparsity)
    if not weights:
        raise ValueError("sharded_global_magnitude: no weights given")
    local, group, shard = local_shards(weights, group)
    total = torch.tensor([sum(t.numel() for t in local.values())], dtype=torch.int64)
    total = int(_all_reduce(total.to(next(iter(local.values())).device), group, counter))
    return _sharded_topk(local, total, _m.keep_count(total, s), group, shard, counter)


def sharded_uniform_magnitude(
    weights: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float],
    group: dist.ProcessGroup | None = None,
    counter: CommCounter | None = None,
) -> dict[str, torch.Tensor]:
    """Per-tensor top-|w| masks over shards, equal to ``uniform_magnitude`` on the gathered weights.

    One exact selection per tensor (768 KiB of collectives each).
    """
    local, group, shard = local_shards(weights, group)
    dev = next(iter(local.values())).device
    sizes = _all_reduce(torch.tensor([t.numel() for t in local.values()], dtype=torch.int64, device=dev),
                        group, counter)
    out = {}
    for (n, t), size in zip(local.items(), sizes.tolist()):
        s = _m.check_sparsity(sparsity[n] if isinstance(sparsity, Mapping) else sparsity, f"sparsity[{n}]")
        out.update(_sharded_topk({n: t}, size, _m.keep_count(size, s), group, shard, counter))
    return out
