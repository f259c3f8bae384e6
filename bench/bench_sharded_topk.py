"""Exact global top-k over dim-0 shards (``acdc.distributed.topk``) on 2 gloo ranks: bytes sent into
collectives, time, and peak extra memory per rank — with the single-process ``global_magnitude`` beside it.

Run (CPU; each size in fresh processes)::

    .venv/bin/python bench/bench_sharded_topk.py                  # ResNet50-shaped, 25.5M parameters, 54 tensors
    .venv/bin/python bench/bench_sharded_topk.py --size 1b        # 60 x (4096, 4096) = 1.007B parameters
    .venv/bin/python bench/bench_sharded_topk.py --size 1b --world 2 --repeats 1

Each rank builds only its own ``torch.chunk`` row blocks of random fp32 tensors, reads ``ru_maxrss``, runs the
sharded top-k once (first call) and ``--repeats`` more times (median), and reads ``ru_maxrss`` again: the
difference is the peak extra memory, output masks (1 B/parameter) included. A ``CommCounter`` adds up the payload
bytes this rank hands to all_reduce / all_gather. At 1B random fp32 values some magnitudes repeat, so the tie
table is exchanged as well (4 collectives); ``--zeros 0.95`` sets that fraction to exact zeros (the state after a
sparse phase: ties at the threshold). The script checks that exactly round(s*n) are pruned.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SPARSITY = 0.9


def _shapes(size: str) -> list[tuple[int, ...]]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_global_topk import resnet50_weight_shapes

    return resnet50_weight_shapes() if size == "25m" else [(4096, 4096)] * 60


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tensor(i: int, shape, zeros: float, rows: slice | None = None):
    import torch

    g = torch.Generator().manual_seed(i)
    w = torch.randn(shape, generator=g)[rows] if rows is not None else torch.randn(shape, generator=g)
    if zeros:
        w[torch.rand(w.shape, generator=torch.Generator().manual_seed(10_000 + i)) < zeros] = 0.0
    return w


def _local_weights(shapes, rank: int, world: int, zeros: float) -> dict:
    import torch

    out = {}
    for i, s in enumerate(shapes):
        # rank's torch.chunk block of the full tensor, generated block by block to keep memory at the shard size
        per = -(-s[0] // world)
        lo, hi = min(rank * per, s[0]), min((rank + 1) * per, s[0])
        g = torch.Generator().manual_seed(i)
        full_rows = []
        for r in range(world):  # draw every block in order so the values equal the full tensor's, keep ours
            a, b = min(r * per, s[0]), min((r + 1) * per, s[0])
            blk = torch.randn((b - a, *s[1:]), generator=g)
            if r == rank:
                full_rows.append(blk)
            del blk
        w = full_rows[0] if full_rows else torch.empty((0, *s[1:]))
        assert w.shape[0] == hi - lo
        if zeros:
            z = torch.Generator().manual_seed(10_000 + i)
            for r in range(world):
                a, b = min(r * per, s[0]), min((r + 1) * per, s[0])
                draw = torch.rand((b - a, *s[1:]), generator=z)
                if r == rank:
                    w[draw < zeros] = 0.0
        out[f"w{i}"] = w
    return out


def _rank(rank: int, world: int, init: str, size: str, repeats: int, zeros: float, out_path: str) -> None:
    import torch
    import torch.distributed as dist

    from acdc import masks
    from acdc.distributed.topk import CommCounter, sharded_global_magnitude

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    shapes = _shapes(size)
    w = _local_weights(shapes, rank, world, zeros)
    n_local = sum(t.numel() for t in w.values())
    n = sum(torch.Size(s).numel() for s in shapes)
    dist.barrier()
    before = _maxrss()
    times, counts = [], []
    for _ in range(1 + repeats):
        c = CommCounter()
        dist.barrier()
        t0 = time.perf_counter()
        m = sharded_global_magnitude(w, SPARSITY, group=dist.group.WORLD, counter=c)
        times.append(time.perf_counter() - t0)
        counts.append((c.bytes, c.calls))
        pruned = torch.tensor([sum(int((~x).sum()) for x in m.values())])
        del m
    after = _maxrss()
    dist.all_reduce(pruned)
    assert int(pruned) == masks.pruned_count(n, SPARSITY), (int(pruned), n)
    res = {"rank": rank, "n": n, "n_local": n_local, "first_s": times[0],
           "median_s": statistics.median(times[1:]) if repeats else times[0], "extra_bytes": after - before,
           "bytes_sent": counts[0][0], "collectives": counts[0][1], "threads": torch.get_num_threads()}
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


def _single(size: str, repeats: int, zeros: float) -> dict:
    import torch

    from acdc import masks

    w = {f"w{i}": _tensor(i, s, zeros) for i, s in enumerate(_shapes(size))}
    before = _maxrss()
    times = []
    for _ in range(1 + repeats):
        t0 = time.perf_counter()
        m = masks.global_magnitude(w, SPARSITY)
        times.append(time.perf_counter() - t0)
        del m
    return {"first_s": times[0], "median_s": statistics.median(times[1:]) if repeats else times[0],
            "extra_bytes": _maxrss() - before, "n": sum(t.numel() for t in w.values()),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("25m", "1b"), default="25m")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--zeros", type=float, default=0.0, help="fraction of exact zeros in the weights")
    ap.add_argument("--single", action="store_true", help="also time single-process global_magnitude")
    ap.add_argument("--single-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single_worker:
        print("RESULT " + json.dumps(_single(args.size, args.repeats, args.zeros)))
        return
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "res")
        mp.spawn(_rank, args=(args.world, "file://" + os.path.join(d, "rdv"), args.size, args.repeats, args.zeros,
                              out), nprocs=args.world, join=True)
        ranks = [json.load(open(f"{out}.{r}")) for r in range(args.world)]
    print(f"sharded top-k, {ranks[0]['n']:,} parameters over {args.world} gloo ranks, s={SPARSITY}, "
          f"zeros={args.zeros}, {ranks[0]['threads']} thread(s)/rank")
    for r in ranks:
        print(f"  rank {r['rank']}: {r['n_local']:,} local  first {r['first_s']:.3f} s  median {r['median_s']:.3f} s"
              f"  peak extra {r['extra_bytes'] / 2**20:.1f} MiB = {r['extra_bytes'] / max(r['n_local'], 1):.2f}"
              f" B/local param  sent {r['bytes_sent']:,} B in {r['collectives']} collectives")
    print(f"  slowest rank median: {max(r['median_s'] for r in ranks):.3f} s;"
          f" max bytes sent by a rank: {max(r['bytes_sent'] for r in ranks) / 2**20:.3f} MiB")
    if args.single:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--single-worker", "--size", args.size,
                            "--repeats", str(args.repeats), "--zeros", str(args.zeros)],
                           capture_output=True, text=True, check=True)
        s = json.loads(p.stdout.split("RESULT ", 1)[1])
        print(f"single-process global_magnitude on the full model ({s['threads']} threads): first "
              f"{s['first_s']:.3f} s  median {s['median_s']:.3f} s  peak extra {s['extra_bytes'] / s['n']:.2f} B/param")


if __name__ == "__main__":
    main()
