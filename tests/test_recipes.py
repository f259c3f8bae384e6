"""Every shipped recipe: the paper's hyper-parameters and schedule, and a two-step dry run on tiny generated data.

Each recipe in ``recipes/`` is loaded as a user would (``--set`` overrides), pointed at tiny files of its data
format written to a temp folder (CIFAR pickle batches, ImageFolder images, WikiText token files), shrunk where the
real network is too slow for a 2-core CPU (same architecture family; see ``SMALL_MODELS``), and trained for two
optimizer steps: one dense epoch and one sparse epoch of one step each (``max_steps_per_epoch=1``). The real-size
networks get a forward pass of batch 2 (``test_real_architectures_forward``) and, marked slow, a full dry run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _formats import write_imagefolder, write_wikitext

from acdc import data as data_mod
from acdc import models
from acdc.data.cifar import write_cifar
from acdc.methods import available
from acdc.schedule import Schedule
from acdc.train.loop import Trainer
from acdc.train.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))
IDS = [p.stem for p in RECIPES]

IMAGENET_TIMELINE = ("D0-9, S10-14, D15-19, S20-24, D25-29, S30-34, D35-39, S40-44, D45-49, S50-54, D55-59, "
                     "S60-64, D65-69, S70-74, D75-84, S85-99")
CIFAR_TIMELINE = "D0-9, S10-29, D30-49, S50-69, D70-89, S90-109, D110-129, S130-149, D150-169, S170-199"
LM_TIMELINE = ("D0-4.8, S4.8-7.2, D7.2-9.6, S9.6-12, D12-14.4, S14.4-16.8, D16.8-19.2, S19.2-21.6, D21.6-24, "
               "S24-26.4, D26.4-28.8, S28.8-31.2, D31.2-33.6, S33.6-36, D36-40.8, S40.8-48")
MEMO_TIMELINE = "D0-9, S10-19, D20-29, S30-39, D40-49, S50-59, D60-69, S70-79, D80-89, S90-109"

# recipe -> (method, sparsity, target, timeline); timeline None for non-AC/DC methods
EXPECTED: dict[str, tuple[str, float, str | None, str | None]] = {
    **{f"imagenet_resnet50_acdc_global{s}": ("acdc", s / 100, "global", IMAGENET_TIMELINE) for s in (80, 90, 95, 98)},
    **{f"imagenet_resnet50_acdc_uniform{s}": ("acdc", s / 100, "uniform", IMAGENET_TIMELINE) for s in (90, 95)},
    "imagenet_resnet50_acdc_2of4": ("acdc", 0.5, "2:4", IMAGENET_TIMELINE),
    **{f"imagenet_mobilenet_v1_acdc_global{s}": ("acdc", s / 100, "global", IMAGENET_TIMELINE) for s in (75, 90)},
    "imagenet_resnet50_dense": ("dense", 0.0, None, None),
    "imagenet_resnet50_gmp90": ("gmp", 0.9, "global", None),
    **{f"cifar100_wrn28_10_acdc{s}": ("acdc", s / 100, "global", CIFAR_TIMELINE) for s in (90, 95, 98)},
    "cifar100_wrn28_10_dense": ("dense", 0.0, None, None),
    "cifar100_wrn28_10_gmp90": ("gmp", 0.9, "global", None),
    "cifar10_resnet20_memorization_acdc90": ("acdc", 0.9, "global", MEMO_TIMELINE),
    "cifar10_resnet20_memorization_dense": ("dense", 0.0, None, None),
    **{f"wikitext103_transformer_acdc{s}": ("acdc", s / 100, "global", LM_TIMELINE) for s in (80, 90)},
    "wikitext103_transformer_dense": ("dense", 0.0, None, None),
    "mnist5k_acdc": ("acdc", 0.9, "global", "D0-2, S3-4, D5-6, S7-8, D9-10, S11-15"),
}

# real model -> the same architecture at a CPU-friendly size for the dry runs (layer names unchanged)
SMALL_MODELS = {
    "resnet50": {"name": "resnet50", "width_per_group": 4},  # torchvision bottleneck width 64 -> 4
    "mobilenet_v1": {"name": "mobilenet_v1", "width_mult": 0.25},
    "wrn28_10": {"name": "wrn", "depth": 28, "width": 1},  # WRN-28-1: same depth and layout, 1/10 width
    "transformer_lm": {"name": "transformer_lm", "n_layers": 1, "n_heads": 2, "d_model": 32, "context": 16,
                       "dropout": 0.0},
}


# ---------------------------------------------------------------------- tiny data in each recipe format
@pytest.fixture(scope="module")
def data_paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe_data")
    write_wikitext(root / "wt103")
    return {
        "cifar10": write_cifar(root / "c10", "cifar10", n_train=40, n_test=6),
        "cifar100": write_cifar(root / "c100", "cifar100", n_train=20, n_test=6, seed=1),
        "imagefolder": write_imagefolder(root / "imagenet", n_train=2, n_val=2),
        "wikitext": root / "wt103",
    }


def _set(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: the same `--set` a user would type


def raw_recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def dry_run_overrides(path: Path, data_paths: dict[str, Path], *, small: bool = True) -> list[str]:
    """`--set` overrides turning a recipe into a two-step CPU run on tiny data (architecture kept)."""
    raw = raw_recipe(path)
    dname = raw["data"]["name"]
    sets = [_set("epochs", 2), _set("max_steps_per_epoch", 1), _set("eval_max_batches", 1), _set("batch_size", 2),
            _set("eval_batch_size", 2), _set("num_workers", 0), _set("device", "cpu"), _set("progress", False)]
    if raw.get("amp") == "fp16":  # fp16 needs CUDA; CPU autocast would be bf16
        sets.append(_set("amp", "none"))
    if dname in data_paths:
        sets.append(_set("data.path", str(data_paths[dname])))
    if dname == "imagefolder":
        sets.append(_set("data.image_size", 32))
    warm = raw.get("lr_schedule", {}).get("warmup_epochs", 0)
    if warm:
        sets.append(_set("lr_schedule.warmup_epochs", 1))
    model = raw["model"]
    if small and model["name"] in SMALL_MODELS:
        sets.append(_set("model", SMALL_MODELS[model["name"]]))
        sets.append(_set("measure_flops", True))
    else:
        sets.append(_set("measure_flops", model["name"] not in SMALL_MODELS))
    if model["name"] == "transformer_lm":
        ctx = SMALL_MODELS["transformer_lm"]["context"] if small else model.get("context", 64)
        sets.append(_set("data.context", ctx))
    method = raw["method"]["name"]
    if method == "acdc":  # epoch 0 dense, epoch 1 sparse: one compression at step 1
        sets.append(_set("method.schedule", {"phases": [["dense", 0, 1], ["sparse", 1, 2]]}))
    elif method == "gmp":  # prune steps 0 (at 0%) and 1 (final sparsity)
        sets += [_set("method.start_epoch", 0), _set("method.end_epoch", 1)]
    return sets


# ---------------------------------------------------------------------- the recipe set and its hyper-parameters
def test_every_expected_recipe_exists_and_is_listed():
    assert set(IDS) == set(EXPECTED), (f"missing: {sorted(set(EXPECTED) - set(IDS))}; "
                                       f"unlisted: {sorted(set(IDS) - set(EXPECTED))}")


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_matches_paper(path: Path):
    r = load_recipe(path)
    data_mod.validate(r.data)
    method, sparsity, target, timeline = EXPECTED[path.stem]
    assert (r.method_name, r.sparsity) == (method, pytest.approx(sparsity))
    if target is not None:
        assert str(r.method.get("structure", r.method.get("distribution", "global"))) == target  # new keys (issue 9)
    if timeline is not None:
        assert Schedule.from_config(r.method["schedule"], r.epochs).describe() == timeline
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith("# ")
    if "path" in r.data:  # a placeholder the user overrides, explained on the first line
        assert "--set data.path=" in first and path.name in first
        assert Path(str(r.data["path"])).is_absolute()

    stem = path.stem
    if stem.startswith("imagenet_"):  # appendix C.3 (STR's hyper-parameters), no label smoothing, FP16
        o, s = r.optimizer, r.lr_schedule
        assert (r.epochs, r.batch_size, r.label_smoothing) == (100, 256, 0.0)
        assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.256, 0.875, False,
                                                                           3.0517578125e-05)
        assert (s.name, s.warmup_epochs, s.warmup_start_factor) == ("cosine", 5.0, 0.0)
        assert (r.amp, r.device) == ("fp16", "auto")
        assert r.data["name"] == "imagefolder" and r.data["image_size"] == 224
        assert r.model["name"] == ("mobilenet_v1" if "mobilenet" in stem else "resnet50")
        if "uniform" in stem:  # first and last layer dense
            assert r.method["exclude"] == ["conv1.weight", "fc.weight"]
        if method == "gmp":
            assert 0 < r.method["start_epoch"] < r.method["end_epoch"] < r.epochs
    elif stem.startswith("cifar100_"):  # WRN-28-10: 200 epochs, stepwise LR
        o, s = r.optimizer, r.lr_schedule
        assert (r.epochs, r.model["name"], r.data["name"]) == (200, "wrn28_10", "cifar100")
        assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.1, 0.9, True, 5e-4)
        assert (s.name, s.milestones, s.gamma) == ("step", [60.0, 120.0, 160.0], 0.2)
        if method == "gmp":  # dense 50, prune over 100, converge 50 (paper appendix)
            assert (r.method["start_epoch"], r.method["end_epoch"]) == (50, 150)
    elif stem.startswith("cifar10_resnet20_memorization"):
        assert (r.model["name"], r.data["name"], r.data["augment"]) == ("resnet20", "cifar10", False)
        assert "acdc memorize" in text
        assert r.lr_schedule.name == "step" and r.lr_schedule.milestones[0] == 65
    elif stem.startswith("wikitext103_"):
        assert (r.model["name"], r.data["name"], r.optimizer.name, r.epochs) == ("transformer_lm", "wikitext",
                                                                                  "adamw", 48)
        assert r.model["context"] == r.data["context"]
        if method == "acdc":
            assert r.method["schedule"] == "paper_imagenet"  # the ImageNet timeline, stretched
            assert r.method["exclude"] == ["tok_emb.weight"]  # embeddings stay dense


def test_lm_schedule_is_the_imagenet_one_scaled():
    """The LM phases are the ImageNet phases x 0.48: equal dense and sparse time, same order."""
    lm = Schedule.from_config("paper_imagenet", 48)
    im = Schedule.paper_imagenet()
    assert [p.kind for p in lm.timeline()] == [p.kind for p in im.timeline()]
    for a, b in zip(lm.timeline(), im.timeline(), strict=True):
        assert a.start == pytest.approx(b.start * 0.48) and a.end == pytest.approx(b.end * 0.48)
    assert lm.sparse_epochs() == pytest.approx(24.0)


# ---------------------------------------------------------------------- dry runs
def _check_run(trainer: Trainer, path: Path) -> None:
    method, sparsity, target, _ = EXPECTED.get(path.stem, (None, 0.0, None, None))
    out = trainer.out_dir
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert trainer.method.steps == 2 and trainer.steps_per_epoch == 1
    assert len(metrics) == 2 and all(np.isfinite(m["train_loss"]) for m in metrics)
    assert (out / "final.safetensors").is_file()
    final = summary["final"]["sparsity"]
    if method == "acdc":
        assert [m["phase"] for m in metrics] == ["dense", "sparse"]
        assert [(e["event"], e["step"]) for e in metrics[1]["events"]] == [("compress", 1)]  # logged with epoch 1
        assert (out / "sparse.safetensors").is_file()
        # D then S: no dense epoch after the first compression, so no dense model (the warm-up never counts)
        assert not (out / "dense.safetensors").exists() and "dense" not in summary
    if method == "dense":
        assert final == 0.0
    elif target == "2:4":  # layers whose input channels are not a multiple of 4 (the RGB stem) stay dense
        assert 0.45 < final <= 0.5
        for name, w in trainer.method.masked.params.items():
            if name not in trainer.method.skipped:  # groups of 4 consecutive input channels hold <= 2 non-zeros
                assert w.detach().movedim(1, -1).reshape(-1, 4).ne(0).sum(-1).le(2).all(), name
    elif method is not None:
        assert final == pytest.approx(sparsity, abs=0.01)
        if target == "uniform":
            ls = trainer.method.layer_sparsity()
            assert "conv1.weight" not in ls and "fc.weight" not in ls
            assert all(v == pytest.approx(sparsity, abs=0.02) for v in ls.values())
    if trainer.task == "lm":
        assert np.isfinite(summary["final"]["val_ppl"]) and "val_ppl" in metrics[-1]
        if method == "acdc":
            assert "tok_emb.weight" not in trainer.method.masks


@pytest.mark.filterwarnings("ignore:.*skipping 1 layer")  # ResNet-50's RGB stem stays dense under 2:4
@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_dry_run(path: Path, data_paths, tmp_path):
    if raw_recipe(path)["method"]["name"] not in available():
        pytest.skip(f"method {raw_recipe(path)['method']['name']!r} is not registered yet")
    r = load_recipe(path, dry_run_overrides(path, data_paths))
    trainer = Trainer(r, tmp_path / "run")
    trainer.run()
    _check_run(trainer, path)


def test_cli_runs_a_recipe(data_paths, tmp_path, capsys):
    """`acdc train RECIPE --out DIR --set ...` end to end (in-process)."""
    from acdc.cli import main

    path = RECIPE_DIR / "cifar10_resnet20_memorization_acdc90.yaml"
    args = ["train", str(path), "--out", str(tmp_path / "cli"), "--no-progress"]
    for s in dry_run_overrides(path, data_paths):
        args += ["--set", s]
    assert main(args) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["name"] == "cifar10-resnet20-memorization-acdc90"
    assert summary["final"]["sparsity"] == pytest.approx(0.9, abs=0.01)


@torch.no_grad()
def test_real_architectures_forward():
    """The full-size networks of the recipes build and run a batch of 2 at a small image size."""
    for name in ("resnet50", "mobilenet_v1", "wrn28_10"):
        m = models.build(name, 10).eval()
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10), name
    r = load_recipe(RECIPE_DIR / "wikitext103_transformer_dense.yaml")
    kw = {k: v for k, v in r.model.items() if k != "name"}
    m = models.build("transformer_lm", 1000, **kw).eval()  # vocabulary shrunk from WikiText-103's ~268k
    assert sum(p.numel() for p in m.blocks.parameters()) > 30e6  # 16 layers of d_model 410
    assert m(torch.randint(0, 1000, (2, kw["context"]))).shape == (2, kw["context"], 1000)


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["imagenet_resnet50_acdc_uniform90", "cifar100_wrn28_10_acdc90"])
def test_recipe_dry_run_full_size(stem, data_paths, tmp_path):
    """Two steps of the real ResNet-50 / WRN-28-10 (batch 2, 32x32 images)."""
    path = RECIPE_DIR / f"{stem}.yaml"
    r = load_recipe(path, dry_run_overrides(path, data_paths, small=False))
    assert r.model["name"] in ("resnet50", "wrn28_10")
    trainer = Trainer(r, tmp_path / "run")
    trainer.run()
    _check_run(trainer, path)


def test_memorization_recipe_runs_under_acdc_memorize(data_paths, tmp_path):
    """The memorization recipe is meant for `acdc memorize` (which corrupts labels and turns augmentation off)."""
    mem = pytest.importorskip("acdc.memorize")
    path = RECIPE_DIR / "cifar10_resnet20_memorization_acdc90.yaml"
    res = mem.memorize(str(path), str(tmp_path / "mem"), n=10, seed=0, overrides=dry_run_overrides(path, data_paths))
    assert [c["phase"] for c in res["curves"]] == ["dense", "sparse"]
    assert res["info"]["n"] == 10
