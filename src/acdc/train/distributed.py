"""Data-parallel training under torchrun (``strategy: ddp``): process group, per-rank data, mask agreement.

The loop calls these small pieces; with one process (no torchrun, or ``WORLD_SIZE=1``) every one is a no-op, so a
single-process run is unchanged. Design:

- ``batch_size`` in a recipe is the *global* batch; each rank loads ``batch_size / world`` samples per step.
- Each epoch's shuffle is one permutation of the dataset (the same ``randperm`` a single-process run draws from
  its per-epoch seed); rank ``r`` takes positions ``r, r + world, ...``, so the union of the ranks' batch ``b`` is
  exactly the single-process batch ``b`` (``DistributedSampler``'s interleaving, with the single-process order).
- Masks are computed on every rank from identical weights; :meth:`DistContext.check_masks` all-reduces a 64-bit
  hash of them (MIN and MAX) at every mask change and raises on divergence instead of silently training apart.
- Only rank 0 writes files (``is_main``); train metrics are summed across ranks.

``strategy: fsdp`` (FSDP2, ``fully_shard`` on a 1-D mesh of every rank; the root module is one parameter group):
parameters, gradients, optimizer state and masks are dim-0 shards (see :mod:`acdc.distributed.shards`), masks come
from the exact sharded top-k, so they equal the single-process masks bit for bit without being gathered. Ranks hold
different shards, so instead of the hash, :meth:`DistContext.check_masks` sums the kept counts over ranks and checks
them against the target, and checks that every rank's pruned weights are exactly zero. Final models are gathered to
rank 0 (``full_state_dict``); resumable checkpoints use DCP (:mod:`acdc.train.sharded_checkpoint`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..distributed.shards import global_counts, local

STRATEGIES = ("ddp", "fsdp")
BACKENDS = ("auto", "gloo", "nccl")


class EpochShardSampler(Sampler[int]):
    """This rank's share of the single-process per-epoch shuffle: ``perm[rank::world]``.

    The permutation is truncated to a multiple of ``world`` so every rank runs the same number of steps. With
    ``world == 1`` it yields exactly what ``DataLoader(shuffle=True, generator=g)`` yields for the same seed.
    """

    def __init__(self, n: int, rank: int, world: int, seed_fn) -> None:
        self.n, self.rank, self.world, self.seed_fn = n, rank, world, seed_fn
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed_fn(self.epoch))
        # DataLoader(shuffle=True, generator=g) first draws its workers' base seed from g, then shuffles: same here
        torch.empty((), dtype=torch.int64).random_(generator=g)
        perm = torch.randperm(self.n, generator=g)[: len(self) * self.world]
        return iter(perm[self.rank :: self.world].tolist())


def mask_hash(masks: Mapping[str, torch.Tensor] | None) -> int:
    """Signed 64-bit hash of the masks (names, shapes and bits); a constant for ``None`` (dense)."""
    h = hashlib.blake2b(digest_size=8)
    if masks is not None:
        for n in sorted(masks):
            m = masks[n].detach()
            h.update(f"{n}:{tuple(m.shape)};".encode())
            h.update(m.to("cpu", torch.bool).contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


@dataclass
class DistContext:
    """World size, rank and strategy of this process (world 1 = plain single-process training)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    strategy: str = "ddp"
    owns_group: bool = False  # this process called init_process_group (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def local_batch(self, global_batch: int) -> int:
        """Per-rank batch; the recipe's ``batch_size`` must divide by the world size."""
        if global_batch % self.world:
            raise ValueError(f"recipe key `batch_size` ({global_batch}) is the global batch and must be divisible by "
                             f"the world size ({self.world}); use a multiple of {self.world}")
        return global_batch // self.world

    @property
    def fsdp(self) -> bool:
        """Launched distributed with ``strategy: fsdp``."""
        return self.active and self.strategy == "fsdp"

    def shard(self, model: nn.Module, device: torch.device) -> nn.Module:
        """FSDP2: ``fully_shard`` the model in place (before the optimizer is built: it must see the DTensor
        parameters); a no-op otherwise. One parameter group (the root module): every forward all-gathers it."""
        if not self.fsdp:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        fully_shard(model, mesh=init_device_mesh(device.type, (self.world,)))
        return model

    def data_parallel_group(self) -> dist.ProcessGroup | None:
        """The group gradients are averaged over under DDP (``None`` in one process and under FSDP)."""
        return dist.group.WORLD if self.active and not self.fsdp else None

    def reshard(self, model: nn.Module) -> None:
        """FSDP: free the all-gathered parameters a forward without backward (evaluation) leaves behind; the next
        forward then all-gathers the sharded weights again, so mask changes made to the shards in between count."""
        if self.fsdp:
            model.reshard()

    def sync_buffers(self, model: nn.Module) -> None:
        """FSDP: give every rank rank 0's buffers (BatchNorm running statistics). FSDP2 neither shards nor
        synchronises buffers, so each rank's statistics follow its own batches; rank 0's are what DDP keeps (it
        broadcasts them) and what the saved model holds. Without this, ranks evaluate different models and a DCP
        checkpoint may keep another rank's copy, so a resumed run would not continue the uninterrupted one."""
        if self.fsdp:
            with torch.no_grad():
                for b in model.buffers():
                    dist.broadcast(b, src=0)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's full state dict: gathered to rank 0 on CPU under FSDP (collective; other ranks get ``{}``),
        ``model.state_dict()`` otherwise."""
        if not self.fsdp:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def any_nonfinite(self, tensors: Mapping[str, torch.Tensor]) -> list[str]:
        """Names of ``tensors`` with a NaN/inf on any rank (every rank gets the same answer under FSDP)."""
        names = [n for n, t in tensors.items() if t.is_floating_point()]
        bad = [int(not bool(local(tensors[n]).isfinite().all())) for n in names]
        if self.fsdp:
            bad = global_counts(bad, tensors)
        return [n for n, b in zip(names, bad) if b]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to run forward/backward through: DDP around ``model`` when distributed (FSDP: the sharded
        model itself)."""
        if not self.active or self.fsdp:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def sum_(self, *tensors: torch.Tensor) -> None:
        """Sum tensors across ranks in place (train loss/accuracy counters)."""
        if self.active:
            for t in tensors:
                dist.all_reduce(t)

    def check_masks(self, masks: Mapping[str, torch.Tensor] | None, where: str,
                    params: Mapping[str, torch.Tensor] | None = None, expected_kept: int | None = None) -> None:
        """DDP: all-reduce MIN and MAX of the masks' 64-bit hash; raise on every rank if any two ranks differ.
        FSDP: see :meth:`check_sharded_masks`."""
        if not self.active:
            return
        if self.fsdp:
            self.check_sharded_masks(masks, where, params or {}, expected_kept)
            return
        h = mask_hash(masks)
        t = torch.tensor([h, -h], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        hi, lo = int(t[0]), -int(t[1])
        if hi != lo:
            raise RuntimeError(f"masks differ across ranks at {where} (hash min {lo:#x}, max {hi:#x}); the ranks' "
                               "weights diverged — check that every rank runs the same model, seed and data order")

    def check_sharded_masks(self, masks: Mapping[str, torch.Tensor] | None, where: str,
                            params: Mapping[str, torch.Tensor], expected_kept: int | None) -> None:
        """FSDP: ranks hold different rows, so hashes cannot agree. One all-reduce of [kept entries, non-zero
        weights at pruned entries] over every rank's shards; raise on every rank when a pruned weight is non-zero
        on some shard, or when the global kept count is not ``expected_kept`` (the target's exact count)."""
        if masks is None:
            return
        names = list(masks)
        kept = sum(int(local(masks[n]).sum()) for n in names)
        leaked = sum(int((local(params[n]).detach()[~local(masks[n])] != 0).sum()) for n in names if n in params)
        kept, leaked = global_counts([kept, leaked], masks)
        if leaked:
            raise RuntimeError(f"{leaked} pruned weights are non-zero across the shards at {where}; the sharded "
                               "masks and weights disagree")
        if expected_kept is not None and kept != expected_kept:
            raise RuntimeError(f"the sharded masks keep {kept} weights at {where}, the target keeps {expected_kept}; "
                               "the ranks' top-k diverged")

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def _comm_device(self) -> torch.device:
        nccl = dist.get_backend() == "nccl"
        return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")


def process_rank() -> int:
    """This process's rank before the loop's setup: the initialised group's, else torchrun's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class UnclaimedRunDir:
    """What ranks other than 0 hold instead of a claimed run folder: they never write it."""

    def remove_stale(self, recipe) -> None:
        pass

    def discard(self) -> None:
        pass

    def release(self) -> None:
        pass


def init_distributed(cfg: Mapping[str, str], device: torch.device) -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE``/``RANK``/...), or use one already initialised.

    ``cfg`` is the recipe's ``distributed`` block. Returns a world-1 context when not launched distributed.
    """
    strategy = cfg.get("strategy", "ddp")
    backend = cfg.get("backend", "auto")
    if dist.is_available() and dist.is_initialized():
        ctx = DistContext(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), strategy)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise ValueError("recipe key `distributed.backend` is nccl but `device` is cpu; use backend: gloo")
        local = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
        ctx = DistContext(dist.get_world_size(), dist.get_rank(), local, strategy, owns_group=True)
    else:
        return DistContext(strategy=strategy)
    return ctx


# methods whose masks the sharded selection reproduces exactly (magnitude top-k of the current weights, GMP's among
# the kept positions); RigL/SET grow by gradients or at random, STR learns thresholds: not sharded
FSDP_METHODS = ("acdc", "gmp", "oneshot", "dense")


def check_fsdp_recipe(method: str, measure_flops: bool, amp: str) -> None:
    """Refuse, before any training, what ``strategy: fsdp`` cannot run exactly (one-line errors naming the key)."""
    if method not in FSDP_METHODS:
        raise ValueError(f"recipe key `method.name: {method}` is not supported with `distributed.strategy: fsdp` (its "
                         f"mask updates are not exact over shards; supported: {', '.join(FSDP_METHODS)}); use "
                         "strategy: ddp")
    if measure_flops:
        raise ValueError("recipe key `measure_flops: true` is not supported with `distributed.strategy: fsdp` (FLOPs "
                         "are counted on a whole model); set measure_flops: false or use strategy: ddp")
    if amp == "fp16":
        raise ValueError("recipe key `amp: fp16` is not supported with `distributed.strategy: fsdp`; use amp: bf16 "
                         "or strategy: ddp")
