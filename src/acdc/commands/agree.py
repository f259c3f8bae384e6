"""``acdc agree MODEL_A MODEL_B``: sample-level agreement of two models on a validation split (paper Table 14)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["agree_models", "parse_data_arg", "format_agreement", "register"]


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
    from ..train.recipe import Recipe, load_recipe

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
    from torch.utils.data import DataLoader

    from .. import data as data_mod
    from ..measure.agreement import agreement
    from ..train.checkpoint import load_model
    from ..train.loop import build_model, resolve_device

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


def format_agreement(res: dict[str, Any]) -> str:
    """A plain-text table of one agreement result."""

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * float(v):7.3f}%"

    rows = [
        ("model A", res.get("model_a", "A")),
        ("model B", res.get("model_b", "B")),
        ("samples", str(res["n"])),
        ("top-1 agreement", pct(res["agreement"])),
        ("cross-entropy H(p_A, p_B)", f"{res['cross_entropy_ab']:.5f} nats"),
        ("cross-entropy H(p_B, p_A)", f"{res['cross_entropy_ba']:.5f} nats"),
        ("entropy A / B", f"{res['entropy_a']:.5f} / {res['entropy_b']:.5f} nats"),
        ("KL(p_A || p_B)", f"{res['kl_ab']:.5f} nats"),
        ("accuracy A", pct(res.get("acc_a"))),
        ("accuracy B", pct(res.get("acc_b"))),
        ("both right", pct(res.get("both_right"))),
        ("only A right", pct(res.get("only_a_right"))),
        ("only B right", pct(res.get("only_b_right"))),
        ("both wrong, same class", pct(res.get("both_wrong_same"))),
        ("both wrong, different class", pct(res.get("both_wrong_different"))),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agree", help="top-1 agreement / cross-entropy of two models on the validation split")
    p.add_argument("model_a", help="reference model .safetensors (e.g. RUN/dense.safetensors)")
    p.add_argument("model_b", help="compared model .safetensors (e.g. RUN/sparse.safetensors)")
    p.add_argument("--data", default=None,
                   help="dataset name (mnist5k), YAML/JSON data block or file (default: the recipe's data)")
    p.add_argument("--recipe", default=None,
                   help="recipe giving the architecture (default: recipe.yaml in MODEL_A's directory)")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the result as JSON")
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the recipe's)")
    p.set_defaults(func=cmd_agree)


def cmd_agree(args: argparse.Namespace) -> int:
    from ..train.checkpoint import atomic_write_text
    from . import check_out_file

    if args.json_out:
        check_out_file(args.json_out, "--json-out")  # before the models and data are loaded
    res = agree_models(args.model_a, args.model_b, recipe=args.recipe, data=args.data, device=args.device,
                       batch_size=args.batch_size)
    print(format_agreement(res))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(res, indent=2, allow_nan=False))
    return 0
