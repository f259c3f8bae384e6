"""2:4 sparse inference on an NVIDIA GPU with ``torch.sparse.to_sparse_semi_structured`` (CUDA only).

Run::

    .venv/bin/python bench/gpu_2of4.py                      # an MLP 1024-4096-4096-1024, pruned 2:4 by magnitude
    .venv/bin/python bench/gpu_2of4.py --source RUN_DIR     # a run whose recipe structure is "2:4"

Every Linear whose weight passes the 2:4 check (``acdc.export.check_nm``) and whose shape the semi-structured
kernels accept is converted; the logits of the fp16 model before and after conversion must agree within fp16
tolerance (atol 2e-2 + rtol 2e-2), and the script prints the time of both. Without CUDA it prints "skipped" and
exits 0 (``to_sparse_semi_structured`` raises on CPU).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn


def _time(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=None, help="run directory or model file of a 2:4 run (default: an MLP)")
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("skipped: no CUDA device (torch 2:4 semi-structured sparsity is CUDA-only)")
        return 0
    from torch.sparse import to_sparse_semi_structured

    from acdc import masks as M
    from acdc.export import check_nm, load_source

    if a.source:
        src = load_source(a.source)
        model, x = src.model, src.example.expand(a.batch, *src.example.shape[1:]).contiguous()
    else:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                              nn.Linear(4096, 1024))
        with torch.no_grad():
            for mod in model:
                if isinstance(mod, nn.Linear):
                    mod.weight.mul_(M.n_m(mod.weight, 2, 4))
        x = torch.randn(a.batch, 1024)
    model = model.half().cuda().eval()
    x = x.cuda() if not x.is_floating_point() else x.half().cuda()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    checked = check_nm({n: m.weight for n, m in linears.items()}, "2:4")  # raises on a violated pattern
    with torch.inference_mode():
        ref = model(x).float()
        t_dense = _time(lambda: model(x))
        converted = []
        for n in checked:
            w = linears[n].weight
            try:
                linears[n].weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
                converted.append(n)
            except (RuntimeError, ValueError) as e:  # shape not supported by the kernels: stays dense
                print(f"  {n} {tuple(w.shape)} stays dense: {str(e).splitlines()[0]}")
        out = model(x).float()
        t_sparse = _time(lambda: model(x))
    err = float((out - ref).abs().max())
    ok = torch.allclose(out, ref, atol=2e-2, rtol=2e-2)
    print(f"{len(converted)}/{len(linears)} Linear layers as 2:4; max |logit diff| {err:.2e} "
          f"({'within' if ok else 'OUTSIDE'} fp16 tolerance); dense {1e3 * t_dense:.3f} ms, 2:4 "
          f"{1e3 * t_sparse:.3f} ms ({t_dense / t_sparse:.2f}x) at batch {a.batch}")
    return 0 if ok and converted else 1


if __name__ == "__main__":
    sys.exit(main())
