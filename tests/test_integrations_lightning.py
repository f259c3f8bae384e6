"""Lightning ``Trainer`` + ``acdc.integrations.lightning.ACDCCallback``: automatic optimization steps every optimizer
with a closure, so masks must hold inside the closure's backward (SGD-momentum, AdamW, LBFGS)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch", reason="extra `lightning` not installed")
from lightning.pytorch.callbacks import ModelCheckpoint, ModelPruning  # noqa: E402

from acdc.integrations.lightning import ACDCCallback  # noqa: E402

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

N, D, C, BATCH = 64, 12, 3, 8  # 8 batches per epoch
# D0 S1 D2 S3-4: a run stopped after epoch 3 resumes inside a sparse phase
SCHEDULE = {"phases": [["dense", 0, 1], ["sparse", 1, 2], ["dense", 2, 3], ["sparse", 3, 5]]}


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = (x @ torch.randn(D, C, generator=g)).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


class Net(pl.LightningModule):
    def __init__(self, opt: str = "sgd") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, C))
        self.opt = opt

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        if self.opt == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        if self.opt == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.01)
        return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=3)


def fit(module, callbacks, *, epochs=5, accum=1, ckpt_dir=None, ckpt_path=None, clip=None):
    cbs = list(callbacks)
    if ckpt_dir is not None:
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1,
                                   save_on_train_epoch_end=True))
    t = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=ckpt_dir is not None, callbacks=cbs,
                   accumulate_grad_batches=accum, gradient_clip_val=clip, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(module, loader(), ckpt_path=ckpt_path)
    return t


class SparseProbe(pl.Callback):
    """After every batch in a sparse phase: pruned weights (and momentum/Adam moments) are exactly 0."""

    def __init__(self, cb: ACDCCallback) -> None:
        self.cb, self.checked = cb, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = self.cb.method
        if m.masks is None:
            return
        for n, p in m.masked.params.items():
            off = ~m.masks[n]
            assert torch.count_nonzero(p.detach()[off]) == 0, (n, trainer.global_step)
            for k, v in m.optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert torch.count_nonzero(v[off]) == 0, (n, k)
        self.checked += 1


@pytest.mark.parametrize("opt, accum, clip", [("sgd", 2, 0.5), ("adamw", 1, None), ("lbfgs", 1, None)])
def test_pruned_weights_stay_exactly_zero_under_closures(opt, accum, clip):
    cb = ACDCCallback(method="acdc", sparsity=0.8, schedule=SCHEDULE)
    probe = SparseProbe(cb)
    module = Net(opt)
    t = fit(module, [cb, probe], accum=accum, clip=clip)
    steps = 8 // accum
    assert t.global_step == 5 * steps and cb.method.steps == t.global_step  # one method step per optimizer step
    assert cb.method.phase == "sparse" and cb.method.compressions == 2
    assert probe.checked == 3 * 8 + 1  # epochs 1, 3, 4 and the last batch of epoch 0 (its step compresses)
    assert abs(cb.method.sparsity() - 0.8) < 0.01


def _zeros(module) -> dict[str, torch.Tensor]:
    return {n: (p.detach() == 0) for n, p in module.named_parameters() if n.endswith("weight")}


def test_resume_is_bitwise_equal_and_keeps_masks_unlike_model_pruning(tmp_path):
    # ours: resume after epoch 3 (inside the final sparse phase) = uninterrupted, masks included
    full, cb_full = Net("sgd"), ACDCCallback(method="acdc", sparsity=0.8, schedule=SCHEDULE)
    fit(full, [cb_full], ckpt_dir=tmp_path / "ours")
    resumed, cb = Net("sgd"), ACDCCallback(method="acdc", sparsity=0.8, schedule=SCHEDULE)
    with torch.no_grad():  # a different starting point: everything must come from the checkpoint
        for p in resumed.parameters():
            p.add_(1.0)
    fit(resumed, [cb], ckpt_path=str(tmp_path / "ours" / "epoch=3.ckpt"))
    assert cb.method.steps == cb_full.method.steps == 40
    for n in cb_full.method.masks:
        assert torch.equal(cb.method.masks[n], cb_full.method.masks[n]), n
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k

    # Lightning's ModelPruning, pruning once after epoch 0: uninterrupted, its zeros stay; resumed from its own
    # checkpoint, the masks are gone (it saves mask * weight) and pruned weights train back to non-zero
    def pruning():
        return ModelPruning("l1_unstructured", amount=0.8, use_global_unstructured=True,
                            apply_pruning=lambda epoch: epoch == 0, verbose=0)

    mp_full = Net("sgd")
    fit(mp_full, [pruning()], epochs=3, ckpt_dir=tmp_path / "mp")
    state = torch.load(tmp_path / "mp" / "epoch=0.ckpt", weights_only=False)["state_dict"]
    pruned = {k: v == 0 for k, v in state.items() if k.endswith("weight")}
    assert not any(k.endswith("_mask") for k in state)  # no masks in the checkpoint
    assert sum(int(m.sum()) for m in pruned.values()) > 0
    kept_zero = sum(int((~(mp_full.state_dict()[k] != 0) & m).sum()) for k, m in pruned.items())
    assert kept_zero == sum(int(m.sum()) for m in pruned.values())  # uninterrupted: still exactly zero
    mp_resumed = Net("sgd")
    fit(mp_resumed, [pruning()], epochs=3, ckpt_path=str(tmp_path / "mp" / "epoch=0.ckpt"))
    revived = sum(int(((mp_resumed.state_dict()[k] != 0) & m).sum()) for k, m in pruned.items())
    assert revived > 0  # resumed: the pruned weights moved, the sparse model is lost


class NoLinear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 2)

    def training_step(self, batch, batch_idx):
        return self.emb.weight.pow(2).sum() + 0 * batch[0].sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class PartialOptimizer(Net):
    def configure_optimizers(self):
        return torch.optim.SGD(self.net[2].parameters(), lr=0.1)  # net.0.weight is not in it


@pytest.mark.parametrize("module, match", [(NoLinear, "no prunable parameters"),
                                           (PartialOptimizer, "not in the optimizer")])
def test_bad_input_is_a_one_line_error_at_train_start(module, match):
    with pytest.raises(ValueError, match=match) as e:
        fit(module(), [ACDCCallback(method="acdc", sparsity=0.8, schedule=SCHEDULE)])
    assert str(e.value).startswith("ACDCCallback:") and "\n" not in str(e.value)


def test_checkpoint_from_another_schedule_is_refused(tmp_path):
    fit(Net("sgd"), [ACDCCallback(method="acdc", sparsity=0.8, schedule=SCHEDULE)], ckpt_dir=tmp_path)
    other = ACDCCallback(method="gmp", sparsity=0.8)
    with pytest.raises(ValueError, match="another method configuration") as e:
        fit(Net("sgd"), [other], ckpt_path=str(tmp_path / "epoch=0.ckpt"))
    assert "\n" not in str(e.value)
