"""What ``acdc export SOURCE`` reads: a run directory or a model file with its run's ``recipe.yaml`` beside it."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..selection import structure_of
from ..train.checkpoint import CheckpointError, load_model, load_tensors
from ..train.recipe import Recipe, load_recipe
from .compressed import is_compressed, load_compressed
from .nm import parse_nm


@dataclass
class Source:
    """A model ready to export: weights loaded, true masks when the run kept them, an example input."""

    path: Path
    recipe: Recipe
    model: nn.Module
    masks: dict[str, torch.Tensor] | None
    example: torch.Tensor  # batch of 1
    task: str
    structure: str  # "unstructured" or the recipe's "N:M" method.structure


def _model_io(run_dir: Path, recipe: Recipe) -> dict[str, Any]:
    """num_classes / input_shape / task: from the run's summary.json, else by building the recipe's dataset."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            io = json.loads(summary.read_text()).get("model_io")
        except json.JSONDecodeError:
            io = None
        if io:
            return io
    from .. import data as data_mod

    try:
        bundle = data_mod.build(recipe.data, seed=recipe.seed)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot tell the model's input shape and classes: {run_dir / 'summary.json'} has no "
                         f"model_io and the recipe's dataset does not load ({e}); pass --data-path or export from a "
                         "run finished with this version") from None
    return {"num_classes": bundle.num_classes, "input_shape": list(bundle.input_shape), "task": bundle.task}


def _run_masks(run_dir: Path, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The run's last training masks, if they describe these weights (every pruned weight is zero)."""
    path = run_dir / "last" / "masks.safetensors"
    compressed = run_dir / "last" / "model.safetensors"
    try:
        if path.is_file():
            masks = load_tensors(path)[0]
        elif compressed.is_file() and is_compressed(compressed):  # `--compress-checkpoints`: masks inside
            masks = load_compressed(compressed, copy.deepcopy(model))
        elif (run_dir / "last" / "dcp").is_dir():  # `distributed.strategy: fsdp`: a DCP checkpoint
            from ..train.sharded_checkpoint import load_sharded_masks

            masks = load_sharded_masks(run_dir, dict(model.named_parameters()))
            if masks is None:
                return None
        else:
            return None
    except CheckpointError:
        return None
    sd = model.state_dict()
    for k, m in masks.items():
        if k not in sd or tuple(sd[k].shape) != tuple(m.shape) or bool((sd[k][~m.bool()] != 0).any()):
            return None
    return {k: m.bool() for k, m in masks.items()}


def build_model_for(recipe: Recipe, io: dict[str, Any]) -> nn.Module:
    """The recipe's architecture with the run's number of classes (vocabulary size for LMs)."""
    from .. import models as models_mod

    cfg = dict(recipe.model)
    name = cfg.pop("name")
    return models_mod.build(name, num_classes=int(io["num_classes"]), **cfg)


def load_source(source: str | Path) -> Source:
    """Load a run directory (its ``sparse.safetensors``, else ``final.safetensors``) or a model file.

    A model file may be plain (:func:`acdc.train.checkpoint.save_model`) or compressed; either way the run's
    ``recipe.yaml`` must sit beside it. Masks come from a compressed file, or from the run's ``last/`` checkpoint
    when it matches the weights; otherwise the exporters use the non-zero pattern.
    """
    path = Path(source)
    if path.is_dir():
        run_dir = path
        for name in ("sparse.safetensors", "final.safetensors"):
            if (run_dir / name).is_file():
                weights = run_dir / name
                break
        else:
            raise FileNotFoundError(f"{run_dir} holds no sparse.safetensors or final.safetensors: pass a finished "
                                    "run directory or a model .safetensors file")
    elif path.is_file():
        run_dir, weights = path.parent, path
    else:
        raise FileNotFoundError(f"export source not found: {path}")
    rpath = run_dir / "recipe.yaml"
    if not rpath.is_file():
        raise FileNotFoundError(f"no recipe.yaml beside {weights}: export needs the run's recipe to build the "
                                "architecture (copy it next to the model file)")
    recipe = load_recipe(rpath)
    io = _model_io(run_dir, recipe)
    model = build_model_for(recipe, io)
    if is_compressed(weights):
        masks: dict[str, torch.Tensor] | None = load_compressed(weights, model)
    else:
        try:
            load_model(weights, model)
        except CheckpointError as e:  # torch lists every mismatching tensor on its own line: keep one line
            lines = str(e).splitlines()
            more = f" (+{len(lines) - 2} more)" if len(lines) > 2 else ""
            raise CheckpointError(" ".join(x.strip() for x in lines[:2]) + more) from None
        masks = _run_masks(run_dir, model)
    model.eval()
    task = io.get("task", "classification")
    shape = (1, *[int(s) for s in io["input_shape"]])
    example = torch.zeros(shape, dtype=torch.long) if task == "lm" else torch.randn(shape, generator=torch.Generator()
                                                                                   .manual_seed(0))
    structure = structure_of(recipe.method)
    parse_nm(structure)
    return Source(path=weights, recipe=recipe, model=model, masks=masks, example=example, task=task,
                  structure=structure)
