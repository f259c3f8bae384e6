"""Sharded global top-k: per-shard masks, gathered, equal acdc.masks.global_magnitude bit for bit (2 and 3 ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _dist import run_ranks

from acdc import masks
from acdc.distributed.topk import CommCounter, sharded_global_magnitude, sharded_uniform_magnitude

SPARSITIES = (0.5, 0.9, 0.95, 0.98)
# rows < ranks (empty shards), rows not divisible by 2 or 3 (uneven), 1-D and 4-D tensors
SHAPES = [(5, 7), (1, 9), (64, 3, 3, 3), (130,), (2, 50), (33, 17), (7, 4, 5)]


def _weights(kind: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate(SHAPES):
        w = torch.randn(shape, generator=g) * (0.5 + i)
        if kind == "bf16":  # few distinct magnitudes: many exact ties at every threshold
            w = (w * 4).round().bfloat16()
        elif kind == "mostly_zero":  # ~95% exact zeros (after a sparse phase): the threshold falls in the zeros
            w = w * (torch.rand(shape, generator=g) < 0.05)
            w[w == 0] = torch.where(torch.rand(int((w == 0).sum()), generator=g) < 0.5, 0.0, -0.0)
        out[f"t{i}"] = w
    return out


def _shard(w: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank's dim-0 block as FSDP2 places it (torch.chunk; empty when there are fewer blocks than ranks)."""
    blocks = torch.chunk(w, world, 0)
    return blocks[rank] if rank < len(blocks) else w[:0]


def _check_all(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor.placement_types import Shard

    mesh = init_device_mesh("cpu", (world,))
    tie_tables = 0
    for kind in ("random", "bf16", "mostly_zero"):
        full = _weights(kind, 0)
        dts = {n: distribute_tensor(w, mesh, [Shard(0)]) for n, w in full.items()}
        plain = {n: _shard(w, rank, world) for n, w in full.items()}
        for n in full:
            assert torch.equal(dts[n].to_local(), plain[n]), "distribute_tensor shards differ from torch.chunk"
        for s in SPARSITIES:
            ref = masks.global_magnitude(full, s)
            counter = CommCounter()
            got = sharded_global_magnitude(plain, s, group=dist.group.WORLD, counter=counter)
            assert counter.bytes <= 1 << 20, counter.bytes
            tie_tables += counter.calls == 4  # total, 2 histograms, tie table
            got_dt = sharded_global_magnitude(dts, s)
            for n in full:  # each rank's mask is its block of the single-process mask: gathered, they are equal
                assert got[n].shape == plain[n].shape
                assert torch.equal(got[n], _shard(ref[n], rank, world)), (kind, s, n, rank)
                assert torch.equal(got_dt[n], got[n]), (kind, s, n, rank)
        per = {n: 0.3 + 0.1 * i for i, n in enumerate(full)}
        ref_u = masks.uniform_magnitude(full, per)
        got_u = sharded_uniform_magnitude(dts, per)
        for n in full:
            assert torch.equal(got_u[n], _shard(ref_u[n], rank, world)), (kind, n)
    assert tie_tables >= 4, "the partial-tie path (tie table) was not exercised"


def _check_refusals(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor.placement_types import Replicate, Shard

    w = torch.randn(8, 6)
    mesh = init_device_mesh("cpu", (world,))
    for placement, words in ((Replicate(), "Replicate"), (Shard(1), "Shard(dim=1)")):
        with pytest.raises(ValueError, match=r"placed as .*" + words.split("(")[0]):
            sharded_global_magnitude({"w": distribute_tensor(w, mesh, [placement])}, 0.5)
    mesh2 = init_device_mesh("cpu", (1, world))
    with pytest.raises(ValueError, match="2-D device mesh"):
        sharded_global_magnitude({"w": distribute_tensor(w, mesh2, [Shard(0), Replicate()])}, 0.5)
    bad = torch.randn(4, 3)
    if rank == 1:
        bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):  # every rank raises: no rank hangs in a collective
        sharded_global_magnitude({"w": bad}, 0.5, group=dist.group.WORLD)


def test_sharded_topk_matches_single_process_2_ranks():
    run_ranks(2, _check_all)


@pytest.mark.slow
def test_sharded_topk_matches_single_process_3_ranks_uneven():
    run_ranks(3, _check_all)


def test_sharded_topk_refuses_unsupported_placements():
    run_ranks(2, _check_refusals)
