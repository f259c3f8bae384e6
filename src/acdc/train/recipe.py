"""Recipes: YAML -> validated dataclasses. Every key is checked before any training starts.

A recipe::

    name: mnist5k-acdc
    seed: 0
    epochs: 12
    batch_size: 64
    model: {name: small_cnn}
    data: {name: mnist5k}
    optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
    lr_schedule: {name: cosine, warmup_epochs: 1}
    method: {name: acdc, sparsity: 0.9, distribution: global, schedule: {warmup: 2, sparse: 2, dense: 2,
             final_sparse: 4}}

``--set key=value`` overrides use dotted keys (``method.sparsity=0.95``); values are parsed as YAML scalars.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..methods.registry import method_class
from .distributed import check_fsdp_recipe


class RecipeError(ValueError):
    """A recipe is invalid; the message names the key and the fix."""


@dataclass
class OptimizerCfg:
    name: str = "sgd"  # sgd | adamw | adam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    no_decay_bias_norm: bool = False  # exclude biases / normalization params from weight decay


@dataclass
class LRScheduleCfg:
    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0  # linear warm-up from lr * warmup_start_factor
    warmup_start_factor: float = 0.0
    min_lr: float = 0.0
    milestones: list[float] = field(default_factory=list)  # step: epochs at which lr *= gamma
    gamma: float = 0.1


@dataclass
class DistributedCfg:
    """Used when launched with torchrun (WORLD_SIZE > 1); ignored in a single process."""

    strategy: str = "ddp"  # ddp | fsdp
    backend: str = "auto"  # auto (nccl on cuda, gloo on cpu) | gloo | nccl


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 512
    model: dict[str, Any] = field(default_factory=lambda: {"name": "small_cnn"})
    data: dict[str, Any] = field(default_factory=lambda: {"name": "mnist5k"})
    optimizer: OptimizerCfg = field(default_factory=OptimizerCfg)
    lr_schedule: LRScheduleCfg = field(default_factory=LRScheduleCfg)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "dense"})
    device: str = "cpu"  # cpu | cuda | auto
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a GradScaler, CUDA only)
    grad_accum: int = 1
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    num_workers: int = 0
    max_steps_per_epoch: int = 0  # 0 = whole epoch; >0 truncates (smoke tests, dry runs)
    eval_max_batches: int = 0  # 0 = whole validation set; N = a fixed class-stratified N * eval_batch_size sample
    # which dense model dense.safetensors holds (AC/DC, dense): the `best` (by validation) or the `last` eligible
    # dense epoch; eligible = dense-phase epochs `after_compression` (the first one; the warm-up never counts)
    # or `any` dense epoch. The dense baseline never compresses: every epoch is eligible.
    dense_pick: str = "best"
    dense_from: str = "after_compression"
    measure_flops: bool = True  # log inference/training FLOPs per epoch (acdc.measure)
    progress: bool = True  # tqdm bars
    distributed: DistributedCfg = field(default_factory=DistributedCfg)  # torchrun: strategy, backend
    log: str = "none"  # none | tensorboard (event files in OUT/tensorboard/, extra `tensorboard`)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optimizer"]["betas"] = list(self.optimizer.betas)
        return d

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", "dense"))

    @property
    def sparsity(self) -> float:
        return float(self.method.get("sparsity", 0.0))

    def method_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.method.items() if k not in ("name", "sparsity")}

    def with_method(self, method: str, /, sparsity: float | None = None, **changes: Any) -> Recipe:
        """The same recipe trained with ``method`` (validated again): "the same run, another method".

        The method block keeps this recipe's options when ``method`` is its own method (else just its name);
        ``sparsity`` is set when given (and dropped otherwise); ``changes`` replace top-level keys (``name``,
        ``seed``, ``epochs`` ...).
        """
        own = method == self.method_name
        block = {k: v for k, v in self.method.items() if k != "sparsity"} if own else {"name": method}
        if sparsity is not None:
            block["sparsity"] = sparsity
        raw = {**self.to_dict(), **changes, "method": block}
        return parse_recipe(raw)


_SECTIONS = {"optimizer": OptimizerCfg, "lr_schedule": LRScheduleCfg, "distributed": DistributedCfg}
_FREE_SECTIONS = ("model", "data", "method")
_CHOICES = {
    "optimizer.name": ("sgd", "adamw", "adam"),
    "lr_schedule.name": ("cosine", "step", "constant"),
    "device": ("cpu", "cuda", "auto"),
    "amp": ("none", "bf16", "fp16"),
    "distributed.strategy": ("ddp", "fsdp"),
    "distributed.backend": ("auto", "gloo", "nccl"),
    "log": ("none", "tensorboard"),
    "dense_pick": ("best", "last"),
    "dense_from": ("after_compression", "any"),
}


def _type_ok(value: Any, ftype: Any) -> Any:
    """Coerce ``value`` to the dataclass field type or raise TypeError."""
    t = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    t = str(t)
    if t == "bool":
        if isinstance(value, bool):
            return value
        raise TypeError("a boolean (true/false)")
    if t == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError("an integer")
    if t == "float":
        out = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                out = float(value)
            except ValueError:
                pass
        if out is None:
            raise TypeError("a number")
        if not math.isfinite(out):
            raise TypeError("a finite number")
        return out
    if t == "str":
        if isinstance(value, str):
            return value
        raise TypeError("a string")
    if t.startswith("tuple"):
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            return tuple(float(v) for v in value)
        raise TypeError("a list of two numbers")
    if t.startswith("list"):
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and math.isfinite(v) for v in value):
            return [float(v) for v in value]
        raise TypeError("a list of numbers")
    if t.startswith("dict"):
        if isinstance(value, dict):
            return value
        raise TypeError("a mapping")
    return value


def _build_dataclass(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"`{prefix.rstrip('.')}` must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise RecipeError(f"unknown recipe key `{full}`; allowed here: {sorted(fields)}")
        f = fields[key]
        if key in _SECTIONS and prefix == "":
            kwargs[key] = _build_dataclass(_SECTIONS[key], value, f"{key}.")
            continue
        if key in _FREE_SECTIONS and prefix == "":
            if isinstance(value, str):
                value = {"name": value}
            if not isinstance(value, dict) or "name" not in value:
                raise RecipeError(f"`{full}` must be a mapping with a `name` (e.g. {{name: ...}}), got {value!r}")
            kwargs[key] = dict(value)
            continue
        try:
            kwargs[key] = _type_ok(value, f.type)
        except TypeError as e:
            raise RecipeError(f"recipe key `{full}` must be {e}, got {value!r}") from None
        if full in _CHOICES and kwargs[key] not in _CHOICES[full]:
            raise RecipeError(f"recipe key `{full}` must be one of {list(_CHOICES[full])}, got {value!r}")
    return cls(**kwargs)


def _check_ranges(r: Recipe) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise RecipeError(msg)

    need(bool(r.name) and not Path(r.name).is_absolute() and ".." not in Path(r.name).parts,
         f"`name` ({r.name!r}) must be a non-empty relative name without `..` (it names the run folder under "
         "runs/); it is not absolute and does not climb out, e.g. name: cifar10-acdc")
    need(0 <= r.seed <= 2**32 - 1, f"`seed` must be an integer in [0, 2**32 - 1], got {r.seed}")
    need(r.epochs >= 1, f"`epochs` must be >= 1, got {r.epochs}")
    need(r.batch_size >= 1, f"`batch_size` must be >= 1, got {r.batch_size}")
    need(r.eval_batch_size >= 1, f"`eval_batch_size` must be >= 1, got {r.eval_batch_size}")
    need(r.grad_accum >= 1, f"`grad_accum` must be >= 1, got {r.grad_accum}")
    need(r.optimizer.lr > 0, f"`optimizer.lr` must be > 0, got {r.optimizer.lr}")
    for key, value in (("grad_clip", r.grad_clip), ("eval_max_batches", r.eval_max_batches),
                       ("max_steps_per_epoch", r.max_steps_per_epoch), ("num_workers", r.num_workers),
                       ("optimizer.momentum", r.optimizer.momentum),
                       ("optimizer.weight_decay", r.optimizer.weight_decay),
                       ("lr_schedule.min_lr", r.lr_schedule.min_lr),
                       ("lr_schedule.warmup_epochs", r.lr_schedule.warmup_epochs),
                       ("lr_schedule.warmup_start_factor", r.lr_schedule.warmup_start_factor)):
        need(value >= 0, f"`{key}` must be >= 0, got {value}")
    need(r.lr_schedule.gamma > 0, f"`lr_schedule.gamma` must be > 0, got {r.lr_schedule.gamma}")
    need(r.optimizer.eps > 0, f"`optimizer.eps` must be > 0, got {r.optimizer.eps}")
    need(all(m >= 0 for m in r.lr_schedule.milestones),
         f"`lr_schedule.milestones` must be epochs >= 0, got {r.lr_schedule.milestones}")
    need(0 <= r.label_smoothing < 1, f"`label_smoothing` must be in [0, 1), got {r.label_smoothing}")
    need(r.lr_schedule.warmup_epochs <= r.epochs,
         f"`lr_schedule.warmup_epochs` ({r.lr_schedule.warmup_epochs}) exceeds `epochs` ({r.epochs})")
    s = r.method.get("sparsity", 0.0)
    need(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 <= s < 1,
         f"`method.sparsity` must be a number in [0, 1) (e.g. 0.9), got {s!r}")
    if r.distributed.strategy == "fsdp":
        try:
            check_fsdp_recipe(r.method_name, r.measure_flops, r.amp)
        except ValueError as e:
            raise RecipeError(str(e)) from None
    need(method_class(r.method_name).yields_sparse or not s,
         f"`method.sparsity` ({s}) is set on the `dense` method, which never prunes; remove it or pick a sparse "
         "method (e.g. method: {name: acdc, sparsity: 0.9})")


def parse_recipe(raw: dict[str, Any]) -> Recipe:
    """Validate a raw recipe mapping (unknown keys, wrong types, bad ranges raise :class:`RecipeError`)."""
    if not isinstance(raw, dict):
        raise RecipeError(f"a recipe must be a YAML mapping, got {type(raw).__name__}")
    r = _build_dataclass(Recipe, raw, "")
    _check_ranges(r)
    _check_selection(r)
    return r


def _check_selection(r: Recipe) -> None:
    """``method.structure`` / ``distribution`` / ``erk_power_scale`` (or the deprecated ``target``, with a
    ``DeprecationWarning`` naming the new keys) as the method will read them; a bad value names its key."""
    if not any(k in r.method for k in ("structure", "distribution", "erk_power_scale", "target")):
        return
    try:
        method_class(r.method_name).resolve_target(r.method, prefix="method.")
    except ValueError as e:
        raise RecipeError(str(e)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a copy of ``raw``."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"--set expects key=value, got {item!r}")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise RecipeError(f"--set has an empty key in {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
            if isinstance(value, str):
                try:  # YAML 1.1 reads `1e-3` as a string; a number is meant
                    value = float(value)
                except ValueError:
                    pass
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {key}: cannot parse value {text!r}: {e}") from None
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise RecipeError(f"--set {key}: `{p}` is not a mapping")
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_raw_recipe(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML recipe file as a mapping and apply ``--set`` overrides (not yet validated)."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {p} is not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe {p}: {e}") from None
    if raw is None:
        raise RecipeError(f"recipe {p} is empty; write at least `model`, `data`, `optimizer` and `method` "
                          "(see recipes/ for examples)")
    if not isinstance(raw, dict):
        raise RecipeError(f"a recipe must be a YAML mapping, got {type(raw).__name__}")
    return apply_overrides(raw, list(overrides or []))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a YAML recipe file, applying ``--set`` overrides."""
    return parse_recipe(load_raw_recipe(path, overrides))


def dump_recipe(r: Recipe) -> str:
    return yaml.safe_dump(r.to_dict(), sort_keys=False)
