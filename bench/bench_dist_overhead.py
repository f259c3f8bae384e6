"""Sparse-phase overhead of AC/DC under 2-rank DDP and FSDP2 vs the same plain DDP / FSDP loop (CPU, gloo).

Per strategy, each rank builds three copies of one model — ``plain`` (no library), ``plain2`` (an identical second
plain copy: the noise floor) and ``acdc`` (AC/DC in its sparse phase at 90% global sparsity: gradient-masking hooks,
``method.step()`` every step; masks from the exact sharded top-k under FSDP) — wrapped in DDP or ``fully_shard``.
Configurations run interleaved in rounds, in a shuffled order identical on every rank (collectives must match), a few
steps each; the median step time per configuration is reported with its overhead vs ``plain``. Target: <= 3%.

    .venv/bin/python bench/bench_dist_overhead.py [--rounds N] [--steps N] [--threads T] [--only ddp|fsdp]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


def _build(strategy: str, kind: str):
    from acdc import ACDC, Schedule

    model = _mlp()
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        run = DDP(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        run = model = fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    method = None
    if kind == "acdc":
        method = ACDC(model, opt, sparsity=0.9, schedule=Schedule.from_phases([["sparse", 0, 10**6]]),
                      steps_per_epoch=1000)
    return run, opt, method


def _steps(cfg, x, y, n: int) -> float:
    run, opt, method = cfg
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(run(x), y).backward()
        opt.step()
        if method is not None:
            method.step()
    return (time.perf_counter() - t0) / n


def _rank(rank: int, world: int, init: str, args: argparse.Namespace, out: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(args.batch // world, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (args.batch // world,), generator=g)
        names = [(s, k) for s in args.only for k in ("plain", "plain2", "acdc")]
        cfgs = {n: _build(*n) for n in names}
        for n in names:  # warm-up (first all-gathers, lazy init, optimizer state)
            _steps(cfgs[n], x, y, 2)
        times: dict[tuple, list[float]] = {n: [] for n in names}
        order = random.Random(7)  # the same order on every rank
        for _ in range(args.rounds):
            for n in order.sample(names, len(names)):
                dist.barrier()
                times[n].append(_steps(cfgs[n], x, y, args.steps))
        if rank == 0:
            lines = [f"{world} ranks x {args.threads} thread(s), global batch {args.batch}, MLP 784-1024-1024-10, "
                     f"SGD momentum 0.9, {args.rounds} rounds x {args.steps} steps, AC/DC sparse at 90% global",
                     f"{'strategy':8s} {'config':7s} {'median ms':>10s} {'p25 ms':>8s} {'p75 ms':>8s} {'vs plain':>9s}"]
            for s in args.only:
                base = statistics.median(times[(s, "plain")])
                for k in ("plain", "plain2", "acdc"):
                    t = sorted(times[(s, k)])
                    q = statistics.quantiles(t, n=4)
                    med = statistics.median(t)
                    lines.append(f"{s:8s} {k:7s} {med * 1e3:10.3f} {q[0] * 1e3:8.3f} {q[2] * 1e3:8.3f} "
                                 f"{(med / base - 1) * 100:+8.2f}%")
                acdc = statistics.median(times[(s, "acdc")]) / base - 1
                noise = abs(statistics.median(times[(s, "plain2")]) / base - 1)
                lines.append(f"{s}: AC/DC sparse-phase overhead {acdc * 100:+.2f}% (noise floor plain2 "
                             f"{noise * 100:.2f}%) -> target <= 3%: {'met' if acdc <= 0.03 else 'NOT met'}")
            with open(out, "w") as fh:
                fh.write("\n".join(lines) + "\n")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--only", default="ddp,fsdp", type=lambda s: [x for x in s.split(",") if x])
    args = ap.parse_args()
    bad = [s for s in args.only if s not in ("ddp", "fsdp")]
    if bad or args.batch % args.world:
        raise SystemExit(f"--only takes ddp,fsdp (got {bad}); --batch must divide by --world")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "result.txt")
        mp.start_processes(_rank, args=(args.world, "file://" + os.path.join(d, "rdzv"), args, out),
                           nprocs=args.world, start_method="spawn")
        print(open(out).read(), end="")


if __name__ == "__main__":
    main()
