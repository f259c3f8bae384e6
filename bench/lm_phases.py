"""Does each AC/DC phase reduce validation perplexity on a language model? And how fast is each model here?

``python bench/lm_phases.py`` trains a character-level Transformer LM (2 layers, d_model 128, context 64) on the
Python standard library's own documentation text (``pydoc_data.topics``, ~0.47 MB, always available offline) with
AdamW and the paper's ImageNet AC/DC timeline stretched to ``--epochs`` (``schedule: paper_imagenet``; at 20 epochs
every boundary is a whole epoch: D0-1, S2, D3, S4, ... D15-16, S17-19), each epoch capped at ``--steps`` optimizer
steps. Validation perplexity is measured at the end of every epoch and right after every compression /
decompression, so each phase has a start and an end value. Prints a per-epoch table and a per-phase table
(start -> end ppl); writes ``OUT/lm_phases.json`` and the run files (metrics.jsonl, summary.json, ...).

``python bench/lm_phases.py --models`` instead times training steps of every model in the registry at a small
batch on this machine's CPU (input: the size each model is meant for), and prints steps/s and the implied time of
one epoch of its usual dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from acdc import models as M
from acdc.schedule import Schedule
from acdc.train.loop import Trainer, evaluate
from acdc.train.recipe import parse_recipe


def pydoc_text() -> str:
    import pydoc_data.topics

    return "\n".join(pydoc_data.topics.topics.values())


class PhaseProbe(Trainer):
    """A Trainer that also evaluates right after each phase transition (the start value of every phase)."""

    def setup(self) -> None:
        super().setup()
        self.transitions: list[dict] = []
        self.method.add_listener(self._probe)

    def _probe(self, event: str, info: dict) -> None:
        if event not in ("compress", "decompress"):
            return
        val = evaluate(self.model, self.val_loader, self.task, self.device, self.recipe.eval_max_batches,
                       self._amp_ctx)
        self.transitions.append({"event": event, "step": info["step"], "epoch": info["epoch"],
                                 "val_ppl": val["ppl"], "sparsity": self.method.sparsity()})


def lm_phases(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text_file = Path(tempfile.mkdtemp(prefix="lm_phases_")) / "pydoc_topics.txt"
    text_file.write_text(pydoc_text(), encoding="utf-8")
    raw = {
        "name": "lm-phases", "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
        "eval_batch_size": 64, "max_steps_per_epoch": args.steps, "eval_max_batches": args.eval_batches,
        "model": {"name": "transformer_lm", "n_layers": 2, "n_heads": 4, "d_model": 128, "context": 64,
                  "dropout": 0.1},
        "data": {"name": "chars", "path": str(text_file), "context": 64, "val_fraction": 0.1},
        "optimizer": {"name": "adamw", "lr": args.lr, "betas": [0.9, 0.98], "weight_decay": 0.01,
                      "no_decay_bias_norm": True},
        "lr_schedule": {"name": "cosine", "warmup_epochs": 1},
        "grad_clip": 1.0, "progress": False, "measure_flops": False,
        "method": {"name": "acdc", "sparsity": args.sparsity, "distribution": "global", "exclude": ["tok_emb.weight"],
                   "schedule": "paper_imagenet"},
    }
    recipe = parse_recipe(raw)
    sched = Schedule.from_config("paper_imagenet", args.epochs)
    print(f"text: {text_file.stat().st_size / 1e6:.2f} MB of pydoc_data.topics; schedule: {sched.describe()}")
    t0 = time.perf_counter()
    trainer = PhaseProbe(recipe, out)
    # the ppl of the freshly initialised model is the start of the dense warm-up
    trainer.setup()
    init_ppl = evaluate(trainer.model, trainer.val_loader, "lm", trainer.device, args.eval_batches)["ppl"]
    res = trainer.run()  # run() sets up again from the same seed: same initial model
    wall = time.perf_counter() - t0
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]

    print(f"\n{trainer.steps_per_epoch} steps/epoch x {args.epochs} epochs, batch {args.batch_size}, "
          f"{100 * args.sparsity:.0f}% sparsity (token embedding dense), {wall:.0f} s\n")
    print(f"{'epoch':>5}  {'phase':6}  {'sparsity':>8}  {'val ppl':>8}  {'train loss':>10}  {'time s':>6}")
    for r in metrics:
        print(f"{r['epoch']:5d}  {r['phase']:6}  {r['sparsity']:8.3f}  {r['val_ppl']:8.3f}  "
              f"{r['train_loss']:10.4f}  {r['time']:6.1f}")

    # per phase: start = after the transition (or the initial model), end = last epoch of the phase
    phases = []
    starts = [{"val_ppl": init_ppl, "epoch": 0.0}] + trainer.transitions
    for i, p in enumerate(sched.timeline()):
        end_epochs = [r for r in metrics if p.start <= r["epoch"] < p.end]
        end = end_epochs[-1]["val_ppl"] if end_epochs else math.nan
        start = starts[i]["val_ppl"] if i < len(starts) else math.nan
        phases.append({"phase": p.kind, "start_epoch": p.start, "end_epoch": p.end, "ppl_start": start,
                       "ppl_end": end, "reduced": end < start})
    print(f"\n{'#':>2}  {'phase':6}  {'epochs':>11}  {'ppl start':>9}  {'ppl end':>8}  {'change':>7}")
    for i, p in enumerate(phases):
        print(f"{i:2d}  {p['phase']:6}  {p['start_epoch']:5g}-{p['end_epoch']:<5g}  {p['ppl_start']:9.3f}  "
              f"{p['ppl_end']:8.3f}  {100 * (p['ppl_end'] / p['ppl_start'] - 1):+6.1f}%")
    n_red = {k: sum(p["reduced"] for p in phases if p["phase"] == k) for k in ("dense", "sparse")}
    n_all = {k: sum(p["phase"] == k for p in phases) for k in ("dense", "sparse")}
    print(f"\nphases that reduced val ppl: dense {n_red['dense']}/{n_all['dense']}, "
          f"sparse {n_red['sparse']}/{n_all['sparse']}")
    s = res.summary
    print(f"final sparse model: val ppl {s['final']['val_ppl']:.3f} at sparsity {s['final']['sparsity']:.3f}; "
          f"best dense checkpoint: epoch {s['dense']['epoch']}, val ppl {math.exp(s['dense']['val_loss']):.3f}")
    report = {"args": vars(args), "schedule": sched.describe(), "init_ppl": init_ppl, "epochs": [
        {k: r[k] for k in ("epoch", "phase", "sparsity", "val_ppl", "train_loss", "time")} for r in metrics],
        "transitions": trainer.transitions, "phases": phases, "summary": s, "wall_s": wall}
    (out / "lm_phases.json").write_text(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------------- model speed
# model -> (input shape, classes, dataset it is meant for, samples (or windows) per epoch of that dataset)
MODEL_INPUTS = {
    "small_cnn": ((1, 28, 28), 10, "MNIST", 60_000),
    "mlp": ((1, 28, 28), 10, "MNIST", 60_000),
    "resnet20": ((3, 32, 32), 10, "CIFAR-10", 50_000),
    "resnet32": ((3, 32, 32), 10, "CIFAR-10", 50_000),
    "resnet44": ((3, 32, 32), 10, "CIFAR-10", 50_000),
    "resnet56": ((3, 32, 32), 10, "CIFAR-10", 50_000),
    "wrn": ((3, 32, 32), 100, "CIFAR-100", 50_000),
    "wrn28_10": ((3, 32, 32), 100, "CIFAR-100", 50_000),
    "resnet50": ((3, 224, 224), 1000, "ImageNet", 1_281_167),
    "mobilenet_v1": ((3, 224, 224), 1000, "ImageNet", 1_281_167),
    "transformer_lm": ((64,), 103, "pydoc text (chars, ctx 64)", 6_500),
}


def model_speed(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    rows = []
    print(f"CPU training-step speed, batch {args.batch}, {args.threads} thread(s), SGD momentum, fp32\n")
    print(f"{'model':15} {'params M':>8} {'input':>12} {'steps/s':>8} {'samples/s':>9}  epoch of")
    for name in M.available():
        shape, classes, dataset, n = MODEL_INPUTS.get(name, ((3, 32, 32), 10, "CIFAR-10", 50_000))
        torch.manual_seed(0)
        model = M.build(name, classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if name == "transformer_lm":
            x = torch.randint(0, classes, (args.batch, *shape))
            y = torch.randint(0, classes, (args.batch, *shape))
        else:
            x = torch.randn(args.batch, *shape)
            y = torch.randint(0, classes, (args.batch,))

        def step(model=model, opt=opt, x=x, y=y) -> None:
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up (allocations, kernel selection)
        t0, k = time.perf_counter(), 0
        while k < args.min_steps or (time.perf_counter() - t0 < args.seconds and k < 50):
            step()
            k += 1
        sps = k / (time.perf_counter() - t0)
        epoch_s = n / (sps * args.batch)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append({"model": name, "params_M": params, "input": list(shape), "batch": args.batch,
                     "steps_per_s": sps, "samples_per_s": sps * args.batch, "dataset": dataset,
                     "epoch_samples": n, "epoch_s": epoch_s})
        print(f"{name:15} {params:8.2f} {'x'.join(map(str, shape)):>12} {sps:8.2f} {sps * args.batch:9.1f}  "
              f"{dataset}: {_fmt(epoch_s)}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_speed.json").write_text(json.dumps(rows, indent=2))
    return rows


def _fmt(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h" if s < 172800 else f"{s / 86400:.1f} days"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/lm_phases")
    p.add_argument("--epochs", type=int, default=20, help="epochs (the ImageNet timeline is stretched to them)")
    p.add_argument("--steps", type=int, default=80, help="optimizer steps per epoch (max_steps_per_epoch)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--eval-batches", type=int, default=8, help="validation batches of 64 windows per evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--models", action="store_true", help="time every registry model instead of the LM run")
    p.add_argument("--batch", type=int, default=8, help="--models: batch size")
    p.add_argument("--min-steps", type=int, default=2, help="--models: timed steps at least")
    p.add_argument("--seconds", type=float, default=3.0, help="--models: time budget per model")
    args = p.parse_args()
    if args.models:
        model_speed(args)
    else:
        lm_phases(args)


if __name__ == "__main__":
    main()
