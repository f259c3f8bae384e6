"""Training loop, recipes, checkpoints and resume (on scikit-learn's bundled digits: fast and real)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from acdc.train.checkpoint import CheckpointError, load_model, load_tensors, save_run_state
from acdc.train.loop import Trainer
from acdc.train.recipe import RecipeError, apply_overrides, load_recipe, parse_recipe


def tiny_raw(**over) -> dict:
    raw = {
        "name": "tiny", "seed": 3, "epochs": 6, "batch_size": 64, "eval_batch_size": 512,
        "model": {"name": "mlp", "in_features": 64, "hidden": [64, 32]},
        "data": {"name": "digits"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "lr_schedule": {"name": "cosine", "warmup_epochs": 1},
        "max_steps_per_epoch": 6, "progress": False,
    }
    raw.update(over)
    if "method" not in over:  # D0 S1 D2 S3 ... ending sparse, for any number of epochs
        e = raw["epochs"]
        phases = [["dense" if i % 2 == 0 else "sparse", i, i + 1] for i in range(e - 1)] + [["sparse", e - 1, e]]
        raw["method"] = {"name": "acdc", "sparsity": 0.8, "schedule": {"phases": phases}}
    return raw


def read_metrics(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_run_writes_all_outputs(tmp_path):
    res = Trainer(parse_recipe(tiny_raw()), tmp_path / "run").run()
    d = res.out_dir
    for f in ("sparse.safetensors", "dense.safetensors", "final.safetensors", "metrics.jsonl", "summary.json",
              "recipe.yaml", "last/model.safetensors", "last/masks.safetensors", "last/state.json",
              "last/state.safetensors"):
        assert (d / f).is_file(), f
    m = read_metrics(d)
    assert [r["epoch"] for r in m] == list(range(6))
    # the explicit schedule D0 S1 D2 S3 D4 S5 is what the metrics log
    assert [r["phase"] for r in m] == ["dense", "sparse", "dense", "sparse", "dense", "sparse"]
    for r in m:
        assert set(r) >= {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "sparsity", "layer_sparsity",
                          "time", "inference_flops", "train_flops_cum_rel"}
        if r["phase"] == "sparse":
            assert round(r["sparsity"] * 6464) >= round(0.8 * 6464)  # 6464 prunable weights in the MLP
    # sparse model really is 80% sparse over prunable weights; dense checkpoint comes from a dense epoch
    w, _ = load_tensors(d / "sparse.safetensors")
    prunable = [k for k in w if k.endswith("weight") and w[k].dim() == 2]
    zeros = sum(int((w[k] == 0).sum()) for k in prunable)
    total = sum(w[k].numel() for k in prunable)
    assert zeros == round(0.8 * total)
    summary = json.loads((d / "summary.json").read_text())
    assert m[summary["dense"]["epoch"]]["phase"] == "dense"
    # the dense model: best dense epoch after the first compression (the warm-up D0 is not a candidate)
    assert summary["dense"]["val_acc"] == max(r["val_acc"] for r in m if r["phase"] == "dense" and r["epoch"] > 1)
    # compressions: the first has no previous mask; later ones report a difference in [0, 1]
    comps = [c for r in m for c in r.get("compressions", [])]
    assert comps[0]["mask_diff"] is None and all(0 <= c["mask_diff"] <= 1 for c in comps[1:])


def _interrupt_and_resume(tmp_path, stop_after: int, raw: dict):
    full = Trainer(parse_recipe(raw), tmp_path / "full").run()
    part_raw = dict(raw)
    # run the same recipe but stop after `stop_after` epochs by raising from an epoch hook (a "kill")
    class Stop(Exception):
        pass

    def killer(tr, epoch):
        if epoch == stop_after:
            raise Stop
        return {}

    with pytest.raises(Stop):
        Trainer(parse_recipe(part_raw), tmp_path / "part", epoch_hooks=[killer]).run()
    resumed = Trainer(parse_recipe(part_raw), tmp_path / "part", resume=True).run()
    return full, resumed


def test_resume_mid_phase_is_bit_identical(tmp_path):
    # D0, S1-2, D3, S4-5, D6, S7-8: killing during epoch 5 (inside S4-5) stops mid-phase
    raw = tiny_raw(epochs=9, method={"name": "acdc", "sparsity": 0.8,
                                     "schedule": {"warmup": 1, "sparse": 2, "dense": 1, "final_sparse": 2}})
    full, resumed = _interrupt_and_resume(tmp_path, 5, raw)
    a, _ = load_tensors(full.out_dir / "final.safetensors")
    b, _ = load_tensors(resumed.out_dir / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, _ = load_tensors(full.out_dir / "last" / "masks.safetensors")
    mb, _ = load_tensors(resumed.out_dir / "last" / "masks.safetensors")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    la, lb = read_metrics(full.out_dir), read_metrics(resumed.out_dir)
    assert [r["epoch"] for r in lb] == list(range(9))
    assert [r["val_loss"] for r in la] == [r["val_loss"] for r in lb]


def test_resume_with_adamw_and_augmented_data_is_bit_identical(tmp_path):
    raw = tiny_raw(epochs=5, optimizer={"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
                   model={"name": "small_cnn"}, max_steps_per_epoch=3,
                   method={"name": "acdc", "sparsity": 0.9, "target": "uniform",
                           "schedule": {"warmup": 1, "sparse": 1, "dense": 1, "final_sparse": 2}})
    full, resumed = _interrupt_and_resume(tmp_path, 4, raw)  # D0 S1 D2 S3-4: killed inside the final phase
    a, _ = load_tensors(full.out_dir / "final.safetensors")
    b, _ = load_tensors(resumed.out_dir / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_swap_is_atomic(tmp_path, monkeypatch):
    """A crash while writing a new checkpoint leaves the previous one loadable."""
    d = tmp_path / "run"
    tr = Trainer(parse_recipe(tiny_raw(epochs=2)), d)
    tr.run()
    before = os.readlink(d / "last")
    import acdc.train.checkpoint as ck

    def boom(*a, **k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ck, "_state_files", boom)
    with pytest.raises(KeyboardInterrupt):
        save_run_state(d, model=tr.model, masks=None, state={}, epoch=99)
    assert os.readlink(d / "last") == before
    assert not any(p.name.startswith(".epoch-") for p in (d / "checkpoints").iterdir())  # nothing half-written
    monkeypatch.undo()
    model = tr.model
    state, masks = ck.load_run_state(d, model)
    assert state["run"]["epoch"] == 2


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    d = tmp_path / "run"
    tr = Trainer(parse_recipe(tiny_raw(epochs=2)), d)
    tr.run()
    p = d / "sparse.safetensors"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(p, tr.model)
    (d / "last" / "state.json").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="state.json"):
        Trainer(parse_recipe(tiny_raw(epochs=2)), d, resume=True).run()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(parse_recipe(tiny_raw(epochs=2)), tmp_path / "empty", resume=True).run()


@pytest.mark.parametrize(
    "raw_update, match",
    [
        ({"epocs": 3}, "unknown recipe key `epocs`"),
        ({"optimizer": {"name": "sgd", "momentun": 0.9}}, "optimizer.momentun"),
        ({"optimizer": {"name": "lion"}}, "optimizer.name"),
        ({"batch_size": "big"}, "`batch_size` must be an integer"),
        ({"epochs": 0}, "`epochs` must be >= 1"),
        ({"method": {"name": "acdc", "sparsity": 1.2}}, "method.sparsity"),
        ({"lr_schedule": {"name": "cosine", "warmup_epochs": 99}}, "warmup_epochs"),
        ({"model": 5}, "`model` must be a mapping"),
        ({"amp": "fp8"}, "`amp` must be one of"),
    ],
)
def test_bad_recipes_name_the_key(raw_update, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(tiny_raw(**raw_update))


@pytest.mark.parametrize(
    "raw_update, exc, match",
    [
        ({"data": {"name": "digits", "pathh": "x"}}, ValueError, "pathh"),
        ({"data": {"name": "cifar10", "path": "/nonexistent/cifar"}}, (ValueError, FileNotFoundError), "nonexistent"),
        ({"model": {"name": "resnet21"}}, ValueError, "resnet21"),
        ({"model": {"name": "mlp", "widht": 3}}, ValueError, "widht"),
        ({"method": {"name": "acdc", "sparsity": 0.9, "schedule": {"warmup": 1, "sparse": 1, "dense": 1,
                                                                    "final_sparse": 2}}}, ValueError, "add up"),
        ({"method": {"name": "acdc", "sparsity": 0.9, "exclude": ["nothing.*"]}}, ValueError, "nothing"),
        ({"method": {"name": "acdc", "sparsity": 0.9, "targte": "global"}}, ValueError, "targte"),
        ({"method": {"name": "magic"}}, ValueError, "unknown method"),
    ],
)
def test_bad_inputs_fail_before_training(tmp_path, raw_update, exc, match):
    tr = Trainer(parse_recipe(tiny_raw(**raw_update)), tmp_path / "r")
    with pytest.raises(exc, match=match):
        tr.run()
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_overrides_and_recipe_file(tmp_path):
    raw = apply_overrides(tiny_raw(), ["method.sparsity=0.95", "optimizer.lr=1e-3", "data.name=digits"])
    assert raw["method"]["sparsity"] == 0.95 and raw["optimizer"]["lr"] == 1e-3
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_raw()))
    r = load_recipe(p, ["epochs=4"])
    assert r.epochs == 4
    with pytest.raises(RecipeError, match="key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_cli_train_and_finetune_dense(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_raw(epochs=6)))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-m", "acdc.cli"]
    r = subprocess.run(cmd + ["train", str(p), "--out", str(out), "--no-progress", "--set", "method.sparsity=0.7"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["target_sparsity"] == 0.7
    # --model swaps the architecture (here for one whose defaults fit 8x8 digits)
    r = subprocess.run(cmd + ["train", str(p), "--out", str(tmp_path / "cnn"), "--no-progress", "--model", "small_cnn",
                              "--set", "epochs=2", "--set", "method={name: dense}"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((tmp_path / "cnn" / "recipe.yaml").read_text())["model"] == {"name": "small_cnn"}
    r = subprocess.run(cmd + ["finetune-dense", str(out), "--no-progress"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert (out / "dense_finetuned.safetensors").is_file()
    ft = read_metrics(out / "finetune_dense")
    best = json.loads((out / "summary.json").read_text())["dense"]["epoch"]
    assert [x["epoch"] for x in ft] == list(range(best + 1, 6)) and all(x["phase"] == "dense" for x in ft)
    # bad recipe via the CLI: exit code 2 and a message naming the key
    p.write_text(yaml.safe_dump(tiny_raw(epocs=2)))
    r = subprocess.run(cmd + ["train", str(p), "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 2 and "epocs" in r.stderr


def test_gradual_methods_log_mask_updates(tmp_path):
    """GMP's in-phase mask updates are logged with the fraction of weights that changed status."""
    raw = tiny_raw(epochs=4, method={"name": "gmp", "sparsity": 0.9, "start_epoch": 0, "end_epoch": 3})
    d = Trainer(parse_recipe(raw), tmp_path / "gmp").run().out_dir
    updates = [u for r in read_metrics(d) for u in r.get("mask_updates", [])]
    diffs = [u["mask_diff"] for u in updates if u["mask_diff"] is not None]
    assert len(diffs) >= 2 and all(0 < x <= 1 for x in diffs)  # sparsity rises, so masks do change
