"""Run a function on N gloo processes on this machine (loopback, file rendezvous: no ports to race for)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# forkserver: one clean server process imports torch once; each rank is then a cheap fork of it (no thread pools
# inherited from pytest's process, which can hang a plain fork, and no 5-10 s torch import per rank as with spawn)
_START = "forkserver"
mp.get_context(_START).set_forkserver_preload(
    ["torch", "torch.distributed", "torch.distributed.tensor", "torch.distributed.fsdp", "torch._dynamo", "acdc.masks"]
)


def _entry(rank: int, world: int, init: str, fn: Callable, args: tuple) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, fn: Callable, *args, timeout: float = 300.0) -> None:
    """Call ``fn(rank, world, *args)`` in ``world`` processes; an exception in any rank (or a hang past
    ``timeout`` seconds) fails the caller."""
    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "rendezvous")
        ctx = mp.start_processes(_entry, args=(world, init, fn, args), nprocs=world, join=False,
                                 start_method=_START)
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise TimeoutError(f"{world}-rank run of {fn.__name__} did not finish in {timeout:.0f} s")
