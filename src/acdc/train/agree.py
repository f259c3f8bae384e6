"""Agreement of two saved models (paper Table 14): build each from its run's recipe, load it, compare on a split.

The library side of ``acdc agree`` (also used by ``acdc report``); the metrics are
:func:`acdc.measure.agreement.agreement`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from torch.utils.data import DataLoader

from .. import data as data_mod
from ..measure.agreement import agreement
from .build import build_model, resolve_device
from .checkpoint import load_model
from .recipe import Recipe, load_recipe

__all__ = ["agree_models", "parse_data_arg"]


def parse_data_arg(text: str | None, recipe_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--data``: a dataset name (``mnist5k``), an inline YAML/JSON block (``{name: digits}``) or a YAML/JSON
    file (a data block, or a recipe whose ``data:`` is used). When the name matches the recipe's dataset, the
    recipe's other keys (split fraction, seed, path) are kept so the validation split is the one of training."""
    if text is None or not str(text).strip():
        if not recipe_data:
            raise ValueError("no --data given and no recipe data block to fall back on")
        return dict(recipe_data)
    p = Path(text)
    if p.suffix.lower() in (".yaml", ".yml", ".json") and p.is_file():
        cfg = yaml.safe_load(p.read_text())
    else:
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--data {text!r} is neither a dataset name nor a valid YAML/JSON block: {e}") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("data"), (dict, str)):
        cfg = cfg["data"]
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ValueError(f"--data {text!r}: expected a dataset name or a mapping with a `name` key")
    if recipe_data and recipe_data.get("name") == cfg["name"]:
        cfg = {**recipe_data, **cfg}
    return dict(cfg)


def _recipe_for(model_path: Path, explicit: Any, fallback: Any = None) -> Any:
    if isinstance(explicit, Recipe):
        return explicit
    if explicit is not None:
        return load_recipe(explicit)
    own = model_path.parent / "recipe.yaml"
    if own.is_file():
        return load_recipe(own)
    if fallback is not None:
        return fallback
    raise FileNotFoundError(f"no recipe for {model_path}: pass --recipe RUN_DIR/recipe.yaml "
                            f"(looked for {own})")


def agree_models(
    model_a: str | Path,
    model_b: str | Path,
    *,
    recipe: Any = None,
    data: str | dict[str, Any] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Load two .safetensors models and compare them on the validation split (see :func:`acdc.measure.agreement`).

    The architecture comes from ``recipe`` (a path or Recipe; default the recipe.yaml next to each model, B
    falling back to A's); ``data`` is a ``--data`` string or a data block (default the recipe's). Returns the
    agreement metrics plus ``model_a``, ``model_b``, ``data``, ``recipe``.
    """
    pa, pb = Path(model_a), Path(model_b)
    for p in (pa, pb):
        if not p.is_file():
            raise FileNotFoundError(f"model file not found: {p}")
    ra = _recipe_for(pa, recipe)
    rb = _recipe_for(pb, recipe, fallback=ra) if recipe is None else ra
    cfg = dict(data) if isinstance(data, dict) else parse_data_arg(data, ra.data)
    bundle = data_mod.build(cfg, seed=ra.seed)
    if device is None:
        device = "auto" if ra.device == "cuda" else ra.device
    dev = resolve_device(device)
    models = []
    for path, r in ((pa, ra), (pb, rb)):
        m = build_model(r, bundle)
        load_model(path, m)
        models.append(m.to(dev))
    loader = DataLoader(bundle.val, batch_size=batch_size or ra.eval_batch_size, shuffle=False)
    res = agreement(models[0], models[1], loader, device=dev)  # no_grad, eval mode inside
    own = recipe is None or hasattr(recipe, "to_dict")
    recipe_src = str(pa.parent / "recipe.yaml") if own else str(recipe)
    return {"model_a": str(pa), "model_b": str(pb), "data": cfg, "recipe": recipe_src, **res}
