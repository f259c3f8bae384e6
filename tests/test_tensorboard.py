"""``acdc train --log tensorboard``: the event file read back holds exactly the (tag, step, value) of metrics.jsonl."""

from __future__ import annotations

import json
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from acdc.cli import main as cli_main
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe

pytest.importorskip("tensorboardX", reason="extra `tensorboard` (tensorboardX) not installed")
from tensorboardX.proto import event_pb2  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
STEPS = 3  # optimizer steps per epoch (max_steps_per_epoch)


def recipe(**over) -> dict:
    r = {"name": "tb", "seed": 2, "epochs": 4, "batch_size": 64, "eval_batch_size": 512,
         "model": {"name": "mlp", "in_features": 64, "hidden": [32]}, "data": {"name": "digits"},
         "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "lr_schedule": {"name": "cosine"},
         "method": {"name": "acdc", "sparsity": 0.8,
                    "schedule": {"phases": [["dense", 0, 1], ["sparse", 1, 2], ["dense", 2, 3], ["sparse", 3, 4]]}},
         "max_steps_per_epoch": STEPS, "progress": False}
    r.update(over)
    return r


def read_scalars(log_dir: Path) -> list[tuple[str, int, float]]:
    """Parse the TFRecord event files in name order (as TensorBoard does); a SessionLog START at step s purges
    scalars at steps >= s (what TensorBoard shows after a resumed run)."""
    out: list[tuple[str, int, float]] = []
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4  # length, length crc, payload, payload crc
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                out = [s for s in out if s[1] < ev.step]
            for v in ev.summary.value:
                out.append((v.tag, ev.step, v.simple_value))
    return out


def expected_from_metrics(run: Path) -> list[tuple[str, int, float]]:
    """The documented mapping, written out independently of acdc.integrations.tensorboard."""
    exp = []
    f32 = lambda v: float(np.float32(v))  # noqa: E731 - event files store float32
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        step = (rec["epoch"] + 1) * STEPS
        for k, v in rec.items():
            if k == "phase":
                exp.append(("phase_sparse", step, 1.0 if v == "sparse" else 0.0))
            elif k == "layer_sparsity":
                exp += [(f"density/{n}", step, f32(1 - s)) for n, s in v.items()]
            elif k == "compressions":
                exp += [("mask_diff/compression", step, f32(c["mask_diff"])) for c in v if c["mask_diff"] is not None]
            elif k == "mask_updates":
                exp += [("mask_diff/update", u["step"], f32(u["mask_diff"])) for u in v if u["mask_diff"] is not None]
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                exp.append((k, step, f32(v)))
    return exp


def test_cli_log_tensorboard_matches_metrics_jsonl(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe()))
    assert cli_main(["train", str(p), "--out", str(tmp_path / "run"), "--log", "tensorboard", "--no-progress"]) == 0
    got = read_scalars(tmp_path / "run" / "tensorboard")
    assert Counter(got) == Counter(expected_from_metrics(tmp_path / "run"))
    tags = {t for t, _, _ in got}
    assert {"phase_sparse", "sparsity", "train_loss", "val_loss", "train_acc", "val_acc", "lr",
            "train_flops_cum_rel", "mask_diff/compression", "density/net.1.weight"} <= tags
    assert [v for t, _, v in sorted(got, key=lambda s: s[1]) if t == "phase_sparse"] == [0.0, 1.0, 0.0, 1.0]
    # a fresh run into the same directory (--overwrite) replaces the old curves instead of appending to them
    assert cli_main(["train", str(p), "--out", str(tmp_path / "run"), "--log", "tensorboard", "--no-progress",
                     "--overwrite"]) == 0
    assert Counter(read_scalars(tmp_path / "run" / "tensorboard")) == Counter(expected_from_metrics(tmp_path / "run"))


def test_mask_updates_logged_at_their_optimizer_step(tmp_path):
    raw = recipe(log="tensorboard", method={"name": "gmp", "sparsity": 0.9, "start_epoch": 0, "end_epoch": 3,
                                            "update_every": 1})
    d = Trainer(parse_recipe(raw), tmp_path / "gmp").run().out_dir
    got = read_scalars(d / "tensorboard")
    assert Counter(got) == Counter(expected_from_metrics(d))
    steps = sorted(s for t, s, _ in got if t == "mask_diff/update")
    assert len(steps) >= 6 and len(set(steps)) == len(steps)  # one point per update, not one per epoch


def test_resume_purges_events_written_after_the_checkpoint(tmp_path, monkeypatch):
    d = tmp_path / "run"

    class Crash(Exception):
        pass

    real = Trainer._checkpoint

    def crash_at_epoch_2(self):  # the epoch's record is in metrics.jsonl and TensorBoard, its checkpoint is not
        if self.state["epoch"] == 3:
            raise Crash
        real(self)

    monkeypatch.setattr(Trainer, "_checkpoint", crash_at_epoch_2)
    with pytest.raises(Crash):
        Trainer(parse_recipe(recipe(log="tensorboard")), d).run()
    monkeypatch.setattr(Trainer, "_checkpoint", real)
    before = read_scalars(d / "tensorboard")
    assert max(s for _, s, _ in before) == 3 * STEPS  # epoch 2 was logged before the crash
    Trainer(parse_recipe(recipe(log="tensorboard")), d, resume=True).run()
    got = read_scalars(d / "tensorboard")
    assert Counter(got) == Counter(expected_from_metrics(d))  # epoch 2 once, from the resumed run
    assert sum(1 for t, _, _ in got if t == "val_loss") == 4


def test_missing_tensorboardx_is_a_one_line_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe()))
    assert cli_main(["train", str(p), "--out", str(tmp_path / "run"), "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'acdc-train[tensorboard]'" in err and "\n" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
