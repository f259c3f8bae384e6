"""AC/DC inside a Lightning ``Trainer``: an MLP on scikit-learn's bundled digits (local, nothing downloaded).

    python examples/lightning_acdc.py [--out DIR] [--epochs 10] [--sparsity 0.9] [--resume]

Needs the ``lightning`` extra. Prints validation accuracy per epoch with the phase, then the final sparsity.
Checkpoints (``DIR/last.ckpt``) carry the masks and phase: ``--resume`` continues exactly where a run stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from acdc.integrations.lightning import ACDCCallback


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean(), prog_bar=False)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.trainer.max_epochs)
        return {"optimizer": opt, "lr_scheduler": sched}


class PrintPhase(pl.Callback):
    """Per epoch: the phase it trained in, the sparsity at its end (after its last step, which may compress or
    decompress) and the validation accuracy of that model."""

    def __init__(self, acdc: ACDCCallback) -> None:
        self.acdc, self.phase = acdc, "?"

    def on_train_epoch_start(self, trainer, pl_module):
        self.phase = self.acdc.method.phase

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        print(f"epoch {trainer.current_epoch:2d}  trained {self.phase:6s}  sparsity now "
              f"{self.acdc.method.sparsity():.3f}  val_acc {float(trainer.callback_metrics['val_acc']):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/lightning_example")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    tr, va = perm[:1500], perm[1500:]
    train = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=32, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x[va], y[va]), batch_size=512)

    pl.seed_everything(0, verbose=False)
    # D0-1 S2-3 D4-5 S6-9 for 10 epochs (lengths must tile --epochs; the error says which fit)
    schedule = {"warmup": 2, "sparse": 2, "dense": 2, "final_sparse": 4}
    acdc = ACDCCallback(method="acdc", sparsity=a.sparsity, schedule=schedule)
    ckpt = ModelCheckpoint(dirpath=a.out, save_last=True, save_top_k=0)
    trainer = pl.Trainer(max_epochs=a.epochs, accelerator="cpu", devices=1, accumulate_grad_batches=2,
                         callbacks=[acdc, PrintPhase(acdc), ckpt], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    last = Path(a.out) / "last.ckpt"
    trainer.fit(Classifier(), train, val, ckpt_path=str(last) if a.resume and last.exists() else None)
    m = acdc.method
    print(f"phases: {m.schedule.describe()}; final sparsity {m.sparsity():.4f}")


if __name__ == "__main__":
    main()
