"""``acdc train --compress-checkpoints``: sparse-phase checkpoints as one compressed file; resume from it."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_loop import read_metrics, tiny_raw

from acdc.cli import main
from acdc.export.compressed import is_compressed, read_sparsity_config
from acdc.train.checkpoint import load_tensors
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe

pytestmark = pytest.mark.usefixtures("single_thread")


def test_resume_from_compressed_last_equals_uninterrupted(tmp_path):
    # D0 S1 D2 S3-4: killed in epoch 4, so `last` is the checkpoint written inside the final sparse phase
    raw = tiny_raw(epochs=5, method={"name": "acdc", "sparsity": 0.8,
                                     "schedule": {"warmup": 1, "sparse": 1, "dense": 1, "final_sparse": 2}})

    class Stop(Exception):
        pass

    def killer(tr, epoch):
        if epoch == 4:
            raise Stop
        return {}

    full = Trainer(parse_recipe(raw), tmp_path / "full").run()
    part = tmp_path / "part"
    with pytest.raises(Stop):
        Trainer(parse_recipe(raw), part, epoch_hooks=[killer], compress_checkpoints=True).run()
    last = part / "last"
    assert is_compressed(last / "model.safetensors") and not (last / "masks.safetensors").exists()
    assert read_sparsity_config(last / "model.safetensors")["global_sparsity"] == pytest.approx(0.8, abs=1e-3)
    plain = (full.out_dir / "last" / "model.safetensors").stat().st_size
    assert (last / "model.safetensors").stat().st_size < plain / 2
    resumed = Trainer(parse_recipe(raw), part, resume=True, compress_checkpoints=True).run()
    a, _ = load_tensors(full.out_dir / "final.safetensors")
    b, _ = load_tensors(resumed.out_dir / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # values equal (a -0.0 may come back as +0.0)
    la, lb = read_metrics(full.out_dir), read_metrics(resumed.out_dir)
    assert [r["val_loss"] for r in la] == [r["val_loss"] for r in lb]
    assert json.loads((part / "summary.json").read_text())["final"] == json.loads(
        (full.out_dir / "summary.json").read_text())["final"]
    # export reads the masks out of the compressed last/
    assert main(["export", str(part), "--format", "compressed", "--out", str(tmp_path / "c.st")]) == 0


def test_cli_flag(tmp_path):
    import yaml

    raw = tiny_raw(epochs=2)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(out), "--no-progress",
                 "--compress-checkpoints"]) == 0
    assert is_compressed(out / "last" / "model.safetensors")  # ends in a sparse phase
