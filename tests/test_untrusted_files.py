"""Untrusted files never run code: crafted pickles in a run folder or a CIFAR folder are refused, not executed.

Each payload would create a marker file when unpickled (``os.system`` / ``builtins.exec`` via ``__reduce__``); it is
fed through the commands a user runs on downloaded files (``train --resume``, ``compare``, ``train`` on a CIFAR
folder, ``agree``). The marker must never appear and the command must fail with a one-line error (exit 2).
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _recipes import tiny_dense_raw

from acdc.cli import main
from acdc.data.cifar import write_cifar
from acdc.train.checkpoint import save_run_state
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe


class SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


tiny_raw = tiny_dense_raw


def _plant_state_payload(run_dir: Path, payload: object) -> None:
    """Replace the run state of ``run_dir/last`` with a pickle (the old ``state.pt`` format) holding ``payload``."""
    last = run_dir / "last"
    for f in ("state.json", "state.safetensors"):
        (last / f).unlink(missing_ok=True)
    torch.save({"run": payload}, last / "state.pt")


@pytest.mark.parametrize("payload_cls", [SystemPayload, ExecPayload])
def test_untrusted_state_pickle_never_runs_through_train_resume(tmp_path, capsys, payload_cls):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_raw()))
    out, marker = tmp_path / "run", tmp_path / "pwned"
    tr = Trainer(parse_recipe(tiny_raw()), out)
    tr.setup()
    out.mkdir()
    (out / "recipe.yaml").write_text(recipe.read_text())
    save_run_state(out, model=tr.model, masks=None, state={"run": {"epoch": 1}}, epoch=1)
    _plant_state_payload(out, payload_cls(marker))
    rc = main(["train", str(recipe), "--out", str(out), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert rc == 2 and "state.pt" in err and "pickle" in err and len(err.strip().splitlines()) == 1


def test_untrusted_state_pickle_never_runs_through_compare(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_raw()))
    out, marker = tmp_path / "cmp", tmp_path / "pwned"
    run = out / "runs" / "dense-s0-seed0"  # a half-finished run that compare resumes
    tr = Trainer(parse_recipe(tiny_raw()), run)
    tr.setup()
    run.mkdir(parents=True)
    save_run_state(run, model=tr.model, masks=None, state={"run": {"epoch": 1}}, epoch=1)
    _plant_state_payload(run, SystemPayload(marker))
    rc = main(["compare", str(recipe), "--methods", "dense", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert rc == 2 and "state.pt" in err


def _pickle_file(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize("file, payload_cls", [("data_batch_1", SystemPayload), ("test_batch", ExecPayload),
                                               ("batches.meta", SystemPayload), ("batches.meta", ExecPayload)])
def test_untrusted_cifar_pickle_never_runs_through_train(tmp_path, capsys, file, payload_cls):
    d = write_cifar(tmp_path / "data", "cifar10", n_train=10, n_test=5)
    marker = tmp_path / "pwned"
    key = b"label_names" if file == "batches.meta" else b"data"
    _pickle_file(d / file, {key: payload_cls(marker), b"labels": [0]})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_raw(data={"name": "cifar10", "path": str(d)}, model={"name": "small_cnn"})))
    rc = main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert rc == 2 and file in err and "refusing to load global" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_untrusted_cifar_pickle_never_runs_through_agree(tmp_path, capsys):
    d = write_cifar(tmp_path / "data", "cifar10", n_train=10, n_test=5)
    marker = tmp_path / "pwned"
    _pickle_file(d / "test_batch", {b"data": SystemPayload(marker), b"labels": [0]})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_raw(data={"name": "cifar10", "path": str(d)}, model={"name": "small_cnn"})))
    for m in ("a", "b"):
        (tmp_path / f"{m}.safetensors").write_bytes(b"")
    rc = main(["agree", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--recipe", str(recipe)])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert rc == 2 and "test_batch" in err and "refusing to load global" in err


def test_safe_unpickler_reads_every_numpy_pickle_protocol(tmp_path):
    """The allow-list covers what CIFAR batches hold (arrays, scalars, bytes keys, lists) under protocols 2..5."""
    from acdc.data.cifar import SafeUnpickler

    obj = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3], b"n": np.int64(3),
           b"names": [b"cat", b"dog"], "f": np.arange(3, dtype=np.float32), "t": (1, 2.5, None)}
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        p = tmp_path / f"p{proto}"
        _pickle_file(p, obj) if proto == 2 else p.write_bytes(pickle.dumps(obj, protocol=proto))
        with open(p, "rb") as f:
            got = SafeUnpickler(f, encoding="bytes").load()
        assert got.keys() == obj.keys()
        assert np.array_equal(got[b"data"], obj[b"data"]) and got[b"data"].dtype == np.uint8
        assert got[b"labels"] == [1, 2, 3] and got[b"n"] == 3 and got[b"names"] == [b"cat", b"dog"]
        assert got["t"] == (1, 2.5, None) and np.array_equal(got["f"], obj["f"])


def test_run_state_codec_round_trips_exactly_without_pickle(tmp_path):
    from acdc.train.checkpoint import decode_state, encode_state

    state = {
        "optimizer": {"state": {0: {"momentum_buffer": torch.randn(3, 2), "step": torch.tensor(4.0)},
                                1: {"momentum_buffer": None}},
                      "param_groups": [{"lr": 0.1 / 3, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "python": __import__("random").getstate()},
        "masks": {"a": torch.rand(5) > 0.5}, "bf16": torch.randn(4).bfloat16(), "nan": float("nan"),
        "inf": float("-inf"), "__weird__": 1, "history": [{"event": "compress", "mask_diff": None}],
    }
    doc, tensors = encode_state(state)
    text = json.dumps(doc, allow_nan=False)  # strict JSON
    back = decode_state(json.loads(text), tensors)
    assert back["optimizer"]["state"][0]["step"].item() == 4.0 and 0 in back["optimizer"]["state"]
    buf = state["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(back["optimizer"]["state"][0]["momentum_buffer"], buf)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["optimizer"]["param_groups"][0]["lr"] == 0.1 / 3
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    np_back, np_ref = back["rng"]["numpy"], state["rng"]["numpy"]
    assert np_back[0] == np_ref[0] and np_back[1].dtype == np.uint32 and np.array_equal(np_back[1], np_ref[1])
    assert np_back[2:] == np_ref[2:]
    assert back["rng"]["python"] == state["rng"]["python"]
    assert back["masks"]["a"].dtype == torch.bool and torch.equal(back["masks"]["a"], state["masks"]["a"])
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bf16"], state["bf16"])
    assert np.isnan(back["nan"]) and back["inf"] == float("-inf") and back["__weird__"] == 1
    with pytest.raises(TypeError, match="state.obj"):
        encode_state({"obj": object()})


def test_corrupt_state_json_is_a_clear_error(tmp_path):
    from acdc.train.checkpoint import CheckpointError, read_run_state

    tr = Trainer(parse_recipe(tiny_raw()), tmp_path / "run")
    tr.setup()
    last = save_run_state(tmp_path / "run", model=tr.model, masks=None, state={"x": torch.ones(2)}, epoch=1)
    (last / "state.json").write_text('{"x": {"__tensor__": "t9"}}')
    with pytest.raises(CheckpointError, match="state.json is corrupt .*missing"):
        read_run_state(last)
    (last / "state.json").write_text('{"x": NaN}')
    with pytest.raises(CheckpointError, match="state.json is corrupt"):
        read_run_state(last)
