"""Training-loop features: bf16 autocast, gradient accumulation, label smoothing, LM perplexity, and step-based
(fractional-epoch) AC/DC schedules. Each test checks a number the feature must change, so a no-op fails it."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from acdc.data import DataBundle
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

N_TRAIN, N_VAL, D_IN, N_CLS = 64, 32, 20, 4


def make_bundle(seed: int = 0) -> DataBundle:
    """Linearly separable 4-class data: learnable in a few steps, no file I/O."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D_IN, N_CLS, generator=g)
    x = torch.randn(N_TRAIN + N_VAL, D_IN, generator=g)
    y = (x @ w).argmax(1)
    return DataBundle(train=TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), val=TensorDataset(x[N_TRAIN:], y[N_TRAIN:]),
                      num_classes=N_CLS, input_shape=(D_IN,), name="synthetic")


def raw(**over) -> dict:
    r = {"name": "feat", "seed": 1, "epochs": 1, "batch_size": 16, "eval_batch_size": 64,
         "model": {"name": "mlp", "in_features": D_IN, "hidden": [32]},  # no BN, no dropout
         "data": {"name": "digits"},  # unused: the tests pass their own bundle
         "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
         "lr_schedule": {"name": "constant"}, "method": {"name": "dense"},
         "progress": False, "measure_flops": False}
    r.update(over)
    return r


def run(tmp: Path, trainer_cls=Trainer, bundle: DataBundle | None = None, **over) -> Trainer:
    t = trainer_cls(parse_recipe(raw(**over)), tmp, bundle=bundle or make_bundle())
    t.run()
    return t


def metrics(t: Trainer) -> list[dict]:
    return [json.loads(x) for x in (t.out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


# ---------------------------------------------------------------------- bf16 autocast on CPU
def test_bf16_autocast_on_cpu_trains_and_keeps_pruned_weights_zero(tmp_path):
    seen: set[torch.dtype] = set()

    class Probe(Trainer):
        def setup(self):
            super().setup()
            first = self.model.net[1]  # the first Linear
            first.register_forward_hook(lambda m, i, o: seen.add(o.dtype) if m.training else None)

    t = run(tmp_path / "bf16", Probe, amp="bf16", epochs=4, optimizer={
        "name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        method={"name": "acdc", "sparsity": 0.8, "schedule": {"phases": [["dense", 0, 1], ["sparse", 1, 4]]}})
    assert seen == {torch.bfloat16}  # the forward really ran in bf16
    m = metrics(t)
    assert [r["phase"] for r in m] == ["dense", "sparse", "sparse", "sparse"]
    assert m[-1]["train_loss"] < 0.85 * m[0]["train_loss"]  # it trains (1.42 -> 1.01 at seed 1)
    assert t.method.masks is not None
    for name, p in t.method.masked.params.items():
        assert p.dtype == torch.float32
        assert torch.count_nonzero(p.detach()[~t.method.masks[name]]) == 0, name  # exactly 0, not bf16-tiny
    assert t.method.sparsity() == pytest.approx(0.8, abs=1e-3)
    assert all(r["sparsity"] == pytest.approx(0.8, abs=1e-3) for r in m[1:])


def test_fp16_is_refused_on_cpu(tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        run(tmp_path / "fp16", amp="fp16")


# ---------------------------------------------------------------------- gradient accumulation
def test_grad_accum_matches_the_large_batch_step(tmp_path):
    """batch 16 x accum 2 == batch 32 x accum 1 after one SGD step (same samples: the shuffle is seeded)."""
    init = weights(run(tmp_path / "init", max_steps_per_epoch=1, optimizer={"name": "sgd", "lr": 1e-12}))
    big = run(tmp_path / "big", batch_size=32, grad_accum=1, max_steps_per_epoch=1)
    acc = run(tmp_path / "acc", batch_size=16, grad_accum=2, max_steps_per_epoch=1)
    small = run(tmp_path / "small", batch_size=16, grad_accum=1, max_steps_per_epoch=1)
    assert big.steps_per_epoch == acc.steps_per_epoch == 1
    wb, wa, ws = weights(big), weights(acc), weights(small)
    assert any(not torch.allclose(wb[k], init[k]) for k in wb)  # the step did something
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(ws[k], wb[k], atol=1e-5) for k in wb)  # half the batch differs
    # the logged train loss is the mean over the 32 samples in both runs
    assert metrics(acc)[0]["train_loss"] == pytest.approx(metrics(big)[0]["train_loss"], rel=1e-5)


# ---------------------------------------------------------------------- label smoothing
def test_label_smoothing_changes_the_training_loss(tmp_path):
    bundle = make_bundle()
    ref = Trainer(parse_recipe(raw(batch_size=N_TRAIN)), tmp_path / "ref", bundle=bundle)
    ref.setup()  # the same seeded initial model the runs below start from
    model0 = copy.deepcopy(ref.model).eval()
    x, y = bundle.train.tensors
    with torch.no_grad():
        logits = model0(x)
    runs = {}
    for ls in (0.0, 0.3):
        t = run(tmp_path / f"ls{ls}", bundle=bundle, batch_size=N_TRAIN, label_smoothing=ls)
        runs[ls] = t
        # one full-batch step: the logged loss is the (smoothed) CE of the initial model on all samples
        assert metrics(t)[0]["train_loss"] == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=ls)),
                                                            rel=1e-5)
    assert abs(metrics(runs[0.3])[0]["train_loss"] - metrics(runs[0.0])[0]["train_loss"]) > 1e-3
    w0, w3 = weights(runs[0.0]), weights(runs[0.3])
    assert any(not torch.allclose(w0[k], w3[k]) for k in w0)  # and the gradient


# ---------------------------------------------------------------------- language modelling
def test_lm_on_chars_reports_val_ppl(tmp_path):
    text = "".join(f"the {w} sat on the mat. " for w in ("cat", "dog", "rat", "bat") * 60)
    f = tmp_path / "text.txt"
    f.write_text(text)
    r = raw(epochs=2, batch_size=16, max_steps_per_epoch=15, data={"name": "chars", "path": str(f), "context": 32},
            model={"name": "transformer_lm", "n_layers": 1, "n_heads": 2, "d_model": 32, "context": 32,
                   "dropout": 0.0},
            optimizer={"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}, measure_flops=True,
            method={"name": "acdc", "sparsity": 0.5, "exclude": ["tok_emb.weight"],
                    "schedule": {"phases": [["dense", 0, 1], ["sparse", 1, 2]]}})
    t = Trainer(parse_recipe(r), tmp_path / "lm")
    summary = t.run().summary
    vocab = len(set(text))
    assert t.task == "lm" and t.bundle.num_classes == vocab
    m = metrics(t)
    for rec in m:
        assert rec["val_ppl"] == pytest.approx(math.exp(rec["val_loss"]), rel=1e-9)
    assert m[0]["val_ppl"] < 0.5 * vocab  # learned something beyond the uniform guess (ppl = vocab)
    assert m[1]["val_ppl"] < m[0]["val_ppl"] * 1.5  # sparse phase still a usable LM
    assert summary["final"]["val_ppl"] == pytest.approx(math.exp(summary["final"]["val_loss"]))
    assert "tok_emb.weight" not in t.method.masks


# ---------------------------------------------------------------------- step-based (fractional) schedules
def test_fractional_schedule_switches_mid_epoch_at_the_right_step(tmp_path):
    """4 steps/epoch; S from t=1.25 (step 5), D from 2.5 (step 10), S from 2.75 (step 11)."""
    log: list[tuple[int, float, str]] = []

    class Probe(Trainer):
        def setup(self):
            super().setup()

            def after_step(opt, args, kwargs):  # runs after the method's own post-step masking hook
                log.append((self.method.steps, self.method.sparsity(), self.method.phase))

            self.optimizer.register_step_post_hook(after_step)

    phases = [["dense", 0, 1.25], ["sparse", 1.25, 2.5], ["dense", 2.5, 2.75], ["sparse", 2.75, 3]]
    t = run(tmp_path / "frac", Probe, epochs=3, method={"name": "acdc", "sparsity": 0.75,
                                                        "schedule": {"phases": phases}})
    assert t.steps_per_epoch == 4 and len(log) == 12
    # optimizer step k (0-based) trains at time k/4 epochs
    kinds = ["sparse" if (1.25 <= k / 4 < 2.5 or k / 4 >= 2.75) else "dense" for k in range(12)]
    assert [phase for _, _, phase in log] == kinds
    assert [k for k, _, _ in log] == list(range(12))
    for k, s, phase in log:
        if phase == "sparse":
            assert s == pytest.approx(0.75, abs=1e-3), k
        else:
            assert s < 0.6, k  # re-opened weights move (a few stay 0: units whose in- and out-weights were all pruned)
    events = [(e["event"], e["step"], e["epoch"]) for r in metrics(t) for e in r.get("events", [])]
    assert events == [("compress", 5, 1.25), ("decompress", 10, 2.5), ("compress", 11, 2.75)]
    m = metrics(t)
    # the phase of the model each epoch evaluates (epoch 1 starts dense but is compressed at 1.25)
    assert [r["phase"] for r in m] == ["dense", "sparse", "sparse"]
