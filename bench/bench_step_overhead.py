"""Per-step overhead of the ACDC controller vs a plain training step without the library.

Run (2-core CPU: a few minutes on a quiet machine)::

    .venv/bin/python bench/bench_step_overhead.py              # MLP and ResNet-20
    .venv/bin/python bench/bench_step_overhead.py --only mlp --rounds 60

Workloads: MLP 784-1024-1024-10 at batch 128 and CIFAR ResNet-20 (``acdc.models.build('resnet20')``) at batch 64
on 32x32 inputs, cross-entropy, SGD(lr=0.01, momentum=0.9), fixed random batch.

Configurations, each with its own copy of the same initial model and optimizer:

* ``plain``   : zero_grad, forward, backward, optimizer.step() -- no library;
* ``plain2``  : a second, identical plain copy: the A/A' difference is the measurement noise floor;
* ``sparse``  : the same plus ``ac.step()``, ACDC at 90% global sparsity inside a sparse phase (gradients masked by
  post-accumulate-grad hooks as backward produces them; no weight re-masking for torch.optim optimizers);
* ``prehook`` : (with ``--prehook``) the same sparse controller with the pre-issue-8 mechanism instead: gradients
  masked in one ``_foreach_mul_`` from an optimizer step pre-hook (not exact under closures or clipping);
* ``dense``   : the same plus ``ac.step()``, ACDC inside its dense warm-up (hooks installed, masks off).

They are interleaved: each round runs ``--steps`` timed steps of every configuration, in a shuffled order; the
figure per configuration is the median over all its timed steps. Overhead = median(config) / median(plain) - 1.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch import nn

from acdc import ACDC, Schedule

SPARSE_SCHED = Schedule.from_phases([("sparse", 0, 1)])
DENSE_SCHED = Schedule.from_phases([("dense", 0, 1), ("sparse", 1, 2)])
FOREVER = 10**9  # steps per epoch: the controller never leaves its first phase during the benchmark


def build_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


def build_resnet20() -> nn.Module:
    from acdc.models import build

    return build("resnet20", num_classes=10)


WORKLOADS = {
    "mlp": (build_mlp, (128, 1, 28, 28), "MLP 784-1024-1024-10, batch 128"),
    "resnet20": (build_resnet20, (64, 3, 32, 32), "ResNet-20 (CIFAR), batch 64, 32x32"),
}


class Runner:
    def __init__(self, name: str, model: nn.Module, kind: str) -> None:
        self.name = name
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.ac = None
        if kind == "sparse":
            self.ac = ACDC(model, self.opt, sparsity=0.9, schedule=SPARSE_SCHED, steps_per_epoch=FOREVER)
            assert self.ac.phase == "sparse"
        elif kind == "prehook":
            self.ac = ACDC(model, self.opt, sparsity=0.9, schedule=SPARSE_SCHED, steps_per_epoch=FOREVER)
            self.ac.masked.enable_grad_hooks(False)
            masked = self.ac.masked
            self.opt.register_step_pre_hook(lambda opt, args, kwargs: masked.apply_to_grads())
        elif kind == "dense":
            self.ac = ACDC(model, self.opt, sparsity=0.9, schedule=DENSE_SCHED, steps_per_epoch=FOREVER)
            assert self.ac.phase == "dense"
        self.times: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        if self.ac is not None:
            self.ac.step()
        return time.perf_counter() - t0


def bench(workload: str, rounds: int, steps: int, warmup: int, seed: int, prehook: bool = False) -> dict[str, float]:
    factory, shape, title = WORKLOADS[workload]
    torch.manual_seed(seed)
    base = factory()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    runners = []
    configs = [("plain", "plain"), ("plain2", "plain"), ("sparse", "sparse"), ("dense", "dense")]
    for name, kind in configs + ([("prehook", "prehook")] if prehook else []):
        m = factory()
        m.load_state_dict(state)
        runners.append(Runner(name, m, kind))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, 10, (shape[0],), generator=g)
    for r in runners:
        for _ in range(warmup):
            r.step(x, y)
    rng = random.Random(seed)
    for _ in range(rounds):
        order = runners[:]
        rng.shuffle(order)
        for r in order:
            for _ in range(steps):
                r.times.append(r.step(x, y))
    sp = next(r for r in runners if r.name == "sparse")
    n = sp.ac.masked.numel()
    assert sp.ac.phase == "sparse" and round(sp.ac.sparsity() * n) == round(0.9 * n)
    med = {r.name: statistics.median(r.times) for r in runners}
    print(f"\n{title}: {rounds} rounds x {steps} steps per configuration, torch threads={torch.get_num_threads()}")
    print(f"{'config':<8} {'median ms':>10} {'p25 ms':>8} {'p75 ms':>8} {'vs plain':>9}")
    for r in runners:
        q = statistics.quantiles(r.times, n=4)
        print(f"{r.name:<8} {med[r.name] * 1e3:>10.3f} {q[0] * 1e3:>8.3f} {q[2] * 1e3:>8.3f} "
              f"{(med[r.name] / med['plain'] - 1) * 100:>+8.2f}%")
    return {k: (v / med["plain"] - 1) * 100 for k, v in med.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(WORKLOADS), action="append", help="run only this workload")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: 40 MLP, 25 ResNet-20)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per configuration per round")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per configuration first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prehook", action="store_true", help="also time the old step-pre-hook gradient masking")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (1 avoids bimodal times when the shared CPU is oversubscribed)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for w in args.only or ["mlp", "resnet20"]:
        rounds = args.rounds or {"mlp": 40, "resnet20": 25}[w]
        results[w] = bench(w, rounds, args.steps, args.warmup, args.seed, args.prehook)
    print("\nsummary (overhead of the median step vs plain; plain2 = noise floor):")
    for w, o in results.items():
        old = f"  prehook {o['prehook']:+.2f}%" if "prehook" in o else ""
        print(f"  {w:<9} sparse {o['sparse']:+.2f}%  dense {o['dense']:+.2f}%{old}  (plain2 {o['plain2']:+.2f}%)"
              f"  target: sparse <= 2%, dense 0%")


if __name__ == "__main__":
    main()
