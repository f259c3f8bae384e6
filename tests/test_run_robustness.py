"""A long run that nobody watches: NaN stops, kills and Ctrl-C resume exactly, one writer per folder, OS errors.

Every wrong situation gives a one-line error (CLI exit 2; 3 for a diverged run, 130 for Ctrl-C), leaves the last
good checkpoint untouched and writes only strict JSON.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import acdc
from acdc.cli import main
from acdc.train.checkpoint import load_tensors
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe

SRC = str(Path(acdc.__file__).resolve().parents[1])  # the subprocesses run the code under test
WALL = ("time", "epoch_time", "elapsed")


def raw(**over) -> dict:
    r = {"name": "tiny", "seed": 3, "epochs": 5, "batch_size": 64,
         "model": {"name": "mlp", "in_features": 64, "hidden": [32, 16]}, "data": {"name": "digits"},
         "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
         "lr_schedule": {"name": "cosine", "warmup_epochs": 1},
         "max_steps_per_epoch": 3, "progress": False,
         "measure_flops": False}
    r.update(over)
    if "method" not in over:  # D0 S1 D2 S3-end: phase changes at the end of epochs 0, 1, 2
        e = r["epochs"]
        phases = [["dense", 0, 1], ["sparse", 1, 2], ["dense", 2, 3], ["sparse", 3, e]] if e >= 4 else \
            [["dense", 0, 1], ["sparse", 1, e]]
        r["method"] = {"name": "acdc", "sparsity": 0.8, "schedule": {"phases": phases}}
    return r


def write_recipe(tmp: Path, **over) -> Path:
    p = tmp / "r.yaml"
    p.write_text(yaml.safe_dump(raw(**over)))
    return p


def strict_lines(path: Path) -> list[dict]:
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name} in {path}")

    return [json.loads(ln, parse_constant=no_constants) for ln in path.read_text().splitlines() if ln.strip()]


def comparable(path: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in WALL} for m in strict_lines(path / "metrics.jsonl")]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """The uninterrupted reference run."""
    out = tmp_path_factory.mktemp("full") / "run"
    Trainer(parse_recipe(raw()), out).run()
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- non-finite values
def test_exploding_lr_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # lr x 1e12 from epoch 2 on: epochs 0-1 are fine, epoch 2 diverges
    p = write_recipe(tmp_path, lr_schedule={"name": "step", "milestones": [2], "gamma": 1e12})
    out = tmp_path / "run"
    rc = main(["train", str(p), "--out", str(out), "--no-progress"])
    err = one_error_line(capsys)
    assert rc == 3 and "non-finite" in err and "epoch 2" in err and "lower optimizer.lr" in err
    assert os.readlink(out / "last") == os.path.join("checkpoints", "epoch-00002")  # after epoch 1, untouched
    w, _ = load_tensors(out / "last" / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in w.values())
    assert not (out / "final.safetensors").exists() and not (out / "summary.json").exists()
    assert [m["epoch"] for m in strict_lines(out / "metrics.jsonl")] == [0, 1]


def test_metrics_and_summary_are_strict_json(tmp_path):
    def hook(tr, epoch):
        return {"probe_nan": float("nan"), "probe_inf": [float("inf"), 1.0]}

    tr = Trainer(parse_recipe(raw(epochs=2)), tmp_path / "run", epoch_hooks=[hook])
    tr.run()
    lines = strict_lines(tmp_path / "run" / "metrics.jsonl")
    assert lines[0]["probe_nan"] is None and lines[0]["probe_inf"] == [None, 1.0]
    json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=lambda c: 1 / 0)


# ----------------------------------------------------------------------------- kills and resume
class Stop(Exception):
    pass


def stop_at(epoch: int):
    """An epoch hook that "kills" the run after ``epoch``'s validation."""
    def hook(tr, e):
        if e == epoch:
            raise Stop
        return {}
    return hook


@pytest.mark.parametrize("moment, epoch", [
    ("epoch_start", 1),  # right after the D0 -> S1 compression was checkpointed
    ("epoch_start", 3),  # right after the D2 -> S3 compression
    ("after_validation", 2),  # mid-epoch, before that epoch's phase change
    ("after_metrics_line", 2),  # the metrics line is on disk, its checkpoint is not
])
def test_killed_and_resumed_run_logs_the_same_metrics(tmp_path, monkeypatch, full_run, moment, epoch):
    out = tmp_path / "run"
    hooks = []
    if moment == "epoch_start":
        orig = Trainer._train_epoch

        def train_epoch(self, e):
            if e == epoch:
                raise Stop
            return orig(self, e)

        monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    elif moment == "after_validation":
        hooks.append(stop_at(epoch))
    else:
        orig_ck = Trainer._checkpoint

        def checkpoint(self):
            if self.state["epoch"] == epoch + 1:
                raise Stop
            orig_ck(self)

        monkeypatch.setattr(Trainer, "_checkpoint", checkpoint)
    with pytest.raises(Stop):
        Trainer(parse_recipe(raw()), out, epoch_hooks=hooks).run()
    monkeypatch.undo()
    Trainer(parse_recipe(raw()), out, resume=True).run()
    assert comparable(out) == comparable(full_run)
    a, _ = load_tensors(full_run / "final.safetensors")
    b, _ = load_tensors(out / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torn_last_metrics_line_is_tolerated_on_resume(tmp_path, full_run):
    out = tmp_path / "run"
    with pytest.raises(Stop):
        Trainer(parse_recipe(raw()), out, epoch_hooks=[stop_at(3)]).run()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "phase": "spa')  # a kill in the middle of an append
    Trainer(parse_recipe(raw()), out, resume=True).run()
    assert comparable(out) == comparable(full_run)


_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from acdc import cli
    from acdc.train import loop
    sig, at = os.environ["KILL_SIG"], int(os.environ["KILL_AT"])
    orig = loop.Trainer._train_epoch
    def train_epoch(self, epoch):
        if epoch == at:
            os.kill(os.getpid(), getattr(signal, sig))
        return orig(self, epoch)
    loop.Trainer._train_epoch = train_epoch
    sys.exit(cli.main(sys.argv[1:]))
""")


def _driver(tmp_path: Path, sig: str, at: int, *args: str) -> subprocess.CompletedProcess:
    d = tmp_path / "driver.py"
    d.write_text(_DRIVER)
    env = dict(os.environ, PYTHONPATH=SRC, KILL_SIG=sig, KILL_AT=str(at))
    return subprocess.run([sys.executable, str(d), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("sig, at", [("SIGKILL", 3), ("SIGINT", 1)])
def test_real_signal_then_resume_logs_the_same_metrics(tmp_path, full_run, sig, at):
    p = write_recipe(tmp_path)
    out = tmp_path / "run"
    r = _driver(tmp_path, sig, at, "train", str(p), "--out", str(out), "--no-progress")
    if sig == "SIGKILL":
        assert r.returncode == -signal.SIGKILL
    else:  # Ctrl-C: a clean one-line exit with status 130, no traceback
        assert r.returncode == 130 and "Traceback" not in r.stderr and "--resume" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = _driver(tmp_path, "SIGINT", 99, "train", str(p), "--out", str(out), "--no-progress", "--resume")
    assert r.returncode == 0, r.stderr
    assert comparable(out) == comparable(full_run)


# ----------------------------------------------------------------------------- one writer per run folder
def test_second_writer_on_the_same_folder_is_refused(tmp_path, capsys):
    from acdc.train.rundir import claim_run_dir

    p = write_recipe(tmp_path, epochs=2)
    out = tmp_path / "run"
    held = claim_run_dir(out, parse_recipe(raw(epochs=2)), resume=False, overwrite=False)  # a first `acdc train`
    try:
        rc = main(["train", str(p), "--out", str(out), "--no-progress"])
        err = one_error_line(capsys)
        assert rc == 2 and "another acdc process is writing to" in err
        assert not (out / "metrics.jsonl").exists() and not (out / "recipe.yaml").exists()
    finally:
        held.release()
    assert main(["train", str(p), "--out", str(out), "--no-progress"]) == 0


def test_fresh_run_into_another_runs_folder_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(parse_recipe(raw(epochs=2)), out).run()  # an AC/DC run: sparse/dense/final models
    (out / "extra.safetensors").write_bytes(b"old model")
    before = {f: (out / f).read_bytes() for f in ("metrics.jsonl", "sparse.safetensors")}
    p = write_recipe(tmp_path, epochs=2, method={"name": "dense"})
    rc = main(["train", str(p), "--out", str(out), "--no-progress"])
    err = one_error_line(capsys)
    assert rc == 2 and "already holds another run" in err and "--overwrite" in err
    assert {f: (out / f).read_bytes() for f in before} == before
    assert main(["train", str(p), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    capsys.readouterr()
    # every stale model file of the AC/DC run is gone; the dense run's own files are there
    assert not (out / "sparse.safetensors").exists() and not (out / "extra.safetensors").exists()
    assert sorted(x.name for x in out.glob("*.safetensors")) == ["dense.safetensors", "final.safetensors"]
    assert json.loads((out / "summary.json").read_text())["method"] == "dense"


def test_resume_with_a_changed_recipe_names_the_keys(tmp_path, capsys):
    out = tmp_path / "run"
    p = write_recipe(tmp_path, epochs=3)
    with pytest.raises(Stop):
        Trainer(parse_recipe(raw(epochs=3)), out, epoch_hooks=[stop_at(1)]).run()
    rc = main(["train", str(p), "--out", str(out), "--resume", "--no-progress", "--set", "optimizer.lr=0.1",
               "--set", "batch_size=32"])
    err = one_error_line(capsys)
    assert rc == 2 and "batch_size, optimizer.lr" in err
    assert main(["train", str(p), "--out", str(out), "--resume", "--no-progress"]) == 0


# ----------------------------------------------------------------------------- OS errors
def test_out_is_a_file(tmp_path, capsys):
    p = write_recipe(tmp_path, epochs=2)
    f = tmp_path / "taken"
    f.write_text("keep me")
    assert main(["train", str(p), "--out", str(f), "--no-progress"]) == 2
    assert "is a file, not a folder" in one_error_line(capsys) and f.read_text() == "keep me"
    for argv in (["compare", str(p), "--methods", "dense", "--out", str(f)],
                 ["report", str(tmp_path), "--out", str(f)]):
        assert main(argv) == 2
        assert "is a file, not a folder" in one_error_line(capsys)


def test_read_only_folder_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    p = write_recipe(tmp_path, epochs=2)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: simulate the read-only mount at the first write into the folder
        import acdc.train.rundir as rd

        real_open = os.open

        def deny(path, *a, **k):
            if str(path).startswith(str(ro)):
                raise PermissionError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, *a, **k)

        monkeypatch.setattr(rd.os, "open", deny)
        out = ro
    else:
        ro.chmod(0o555)
        out = ro / "run"
    rc = main(["train", str(p), "--out", str(out), "--no-progress"])
    err = one_error_line(capsys)
    assert rc == 2 and "cannot write to run folder" in err and "writable --out" in err


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch, full_run):
    import acdc.train.checkpoint as ck

    p = write_recipe(tmp_path)
    out = tmp_path / "run"
    real = ck.atomic_write_bytes

    def full_disk(path, data):
        if Path(path).name == "state.json" and "epoch-00004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(ck, "atomic_write_bytes", full_disk)
    rc = main(["train", str(p), "--out", str(out), "--no-progress"])
    err = one_error_line(capsys)
    assert rc == 2 and "No space left on device" in err
    assert os.readlink(out / "last") == os.path.join("checkpoints", "epoch-00003")
    assert not [x for x in (out / "checkpoints").iterdir() if x.name.startswith(".")]  # nothing half-written
    monkeypatch.undo()
    assert main(["train", str(p), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert comparable(out) == comparable(full_run)


def test_json_out_that_is_a_folder_fails_before_loading(tmp_path, capsys):
    p = write_recipe(tmp_path, epochs=2)
    for m in ("a", "b"):
        (tmp_path / f"{m}.safetensors").write_bytes(b"")  # never read: the check comes first
    rc = main(["agree", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--recipe", str(p),
               "--json-out", str(tmp_path)])
    err = one_error_line(capsys)
    assert rc == 2 and "--json-out" in err and "is a folder" in err


def test_failed_resume_or_bad_data_leaves_no_folder(tmp_path, capsys):
    p = write_recipe(tmp_path, epochs=2)
    assert main(["train", str(p), "--out", str(tmp_path / "nothing"), "--resume", "--no-progress"]) == 2
    assert "no checkpoint" in one_error_line(capsys) and not (tmp_path / "nothing").exists()
    p = write_recipe(tmp_path, epochs=2, data={"name": "digits", "pathh": 1})
    assert main(["train", str(p), "--out", str(tmp_path / "nested" / "run"), "--no-progress"]) == 2
    assert "pathh" in one_error_line(capsys) and not (tmp_path / "nested").exists()
