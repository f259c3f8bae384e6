"""FLOPs accounting as in the AC/DC paper (appendix C.2), for inference and for training.

Conventions (documented because every paper picks its own):

* **Inference FLOPs** are per ONE sample (an image, or a whole sequence for a language model) and count
  2 FLOPs per multiply-add of Conv1d/2d/3d and Linear layers, *only for non-zero weights*:
  ``conv = 2 * nnz(weight) * output_positions`` (the weight tensor of a grouped/depthwise conv already has
  ``C_in / groups`` input channels, so nnz accounts for groups) and ``linear = 2 * nnz(weight) * positions``
  (positions = tokens for a sequence input). Output sizes come from one dummy forward pass with forward hooks
  (measuring only: hooks are removed afterwards, the pass runs in eval mode under ``torch.no_grad`` and the
  train/eval mode of every submodule is restored).
* **Transformer attention**: for any module with attributes ``n_layers, n_heads, d_model, context`` (the
  project's ``transformer_lm``) we add per layer ``2*T*T*d_model`` (QK^T) + ``2*T*T*d_model`` (A·V) per sequence
  of length ``T`` (read from the module's input, else ``context``). These matmuls are counted *dense*: the
  causal mask would halve them on hardware that skips the masked half, which we do not assume. Softmax is
  not counted.
* **Excluded by default** (as in the paper, C.2, and RigL/STR): biases, BatchNorm/LayerNorm, activations,
  pooling, softmax/cross-entropy, embeddings (a lookup). ``include_other=True`` adds: bias 1 FLOP per output
  element; BatchNorm/GroupNorm/LayerNorm/InstanceNorm 2 per element (the normalisation folded into one
  scale + one shift at inference; LayerNorm statistics are ignored); ReLU/GELU/SiLU/... 1 per element;
  max/avg pooling ``prod(kernel)`` per output element; adaptive pooling 1 per *input* element.
* **Training FLOPs** follow RigL (Evci et al. 2020) as the paper does: per sample, a forward pass costs ``f``
  and the backward ``2f`` (``f`` to back-propagate the error, ``f`` for the weight gradients), where ``f`` is
  the inference FLOPs of the weights that are non-zero in that phase: ``f_sparse`` in compressed epochs and
  the density measured at the end of the epoch in decompressed epochs (a few weights stay zero, Table 8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from acdc.methods.rigl import rigl_epoch_flops
from acdc.methods.topkast import topkast_epoch_flops
from acdc.targets import PRUNABLE_TYPES

__all__ = [
    "PRUNABLE_TYPES",
    "inference_flops",
    "flops_for_masks",
    "training_flops",
    "step_flops_per_sample",
    "epoch_training_flops_rel",
    "schedule_training_flops",
    "rigl_epoch_flops",
    "topkast_epoch_flops",
    "gmp_epoch_flops",
    "expand_timeline",
]

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)
_ACT_TYPES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Mish, nn.PReLU,
)
_POOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_POOL_TYPES = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_LM_ATTRS = ("n_layers", "n_heads", "d_model", "context")


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(x, Mapping):
        for v in x.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _example_input(model: nn.Module, input_shape_or_example: Any, dtype: torch.dtype | None) -> torch.Tensor:
    """A batch to run: an example tensor is used as is (dim 0 = batch); a shape gets a batch of 1 prepended."""
    if isinstance(input_shape_or_example, torch.Tensor):
        return input_shape_or_example
    try:
        shape = tuple(int(s) for s in input_shape_or_example)
    except TypeError as e:
        raise TypeError(
            f"input_shape_or_example must be a per-sample shape (e.g. (3, 224, 224)) or an example batch "
            f"tensor, got {type(input_shape_or_example).__name__}"
        ) from e
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    if dtype is None:
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros((1, *shape), dtype=dtype, device=device)


def _param_aliases(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it has (tied weights have several, masks may use any of them)."""
    out: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), []).append(name)
    return out


def _nnz(weight: torch.Tensor, names: Sequence[str], masks: Mapping[str, torch.Tensor] | None) -> int:
    """Non-zero weights, as if ``masks`` (True = kept) were applied when one names this weight."""
    nz = weight.detach() != 0
    if masks:
        for n in names:
            if n in masks:
                m = masks[n]
                if tuple(m.shape) != tuple(weight.shape):
                    raise ValueError(f"mask {n!r} has shape {tuple(m.shape)}, weight has {tuple(weight.shape)}")
                nz = nz & m.to(device=nz.device, dtype=torch.bool)
                break
    return int(nz.sum())


def _lm_seq_len(module: nn.Module, args: tuple) -> int:
    x = _first_tensor(args)
    if x is not None and x.dim() >= 2:
        return int(x.shape[1])
    return int(module.context)


class _Counter:
    """FLOPs per module name, summed by forward hooks during one dummy pass (see :func:`inference_flops`)."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor] | None, include_other: bool,
                 batch: int) -> None:
        self.aliases = _param_aliases(model)
        self.masks, self.include_other, self.batch = masks, include_other, batch
        self.counts: dict[str, float] = {}

    def add(self, name: str, value: float) -> None:
        self.counts[name] = self.counts.get(name, 0.0) + float(value)

    def prunable_hook(self, name: str, mod: nn.Module) -> Callable[..., None]:
        names = self.aliases.get(id(mod.weight), [f"{name}.weight" if name else "weight"])
        nnz = _nnz(mod.weight, names, self.masks)

        def hook(m: nn.Module, args: tuple, out: Any) -> None:
            y = _first_tensor(out)
            channels = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            positions = y.numel() / channels  # summed over the batch
            self.add(name, 2.0 * nnz * positions)
            if self.include_other and m.bias is not None:
                self.add(f"{name}.bias", y.numel())

        return hook

    def other_hook(self, name: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple, out: Any) -> None:
            y = _first_tensor(out)
            if isinstance(m, _NORM_TYPES):
                self.add(name, 2.0 * y.numel())
            elif isinstance(m, _ACT_TYPES):
                self.add(name, y.numel())
            elif isinstance(m, _POOL_TYPES):
                k = m.kernel_size
                kn = math.prod(k) if isinstance(k, (tuple, list)) else k ** (y.dim() - 2)
                self.add(name, kn * y.numel())
            elif isinstance(m, _ADAPTIVE_POOL_TYPES):
                self.add(name, _first_tensor(args).numel())

        return hook

    def lm_hook(self, name: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple) -> None:
            t = _lm_seq_len(m, args)
            self.add(f"{name}.attention" if name else "attention", self.batch * m.n_layers * 4.0 * t * t * m.d_model)

        return hook

    def register(self, model: nn.Module) -> list[Any]:
        """Hooks on every counted module; returns their handles."""
        handles = []
        for name, mod in model.named_modules():
            if isinstance(mod, PRUNABLE_TYPES):
                handles.append(mod.register_forward_hook(self.prunable_hook(name, mod)))
            elif self.include_other and isinstance(mod, _NORM_TYPES + _ACT_TYPES + _POOL_TYPES + _ADAPTIVE_POOL_TYPES):
                handles.append(mod.register_forward_hook(self.other_hook(name)))
            if all(hasattr(mod, a) for a in _LM_ATTRS):
                handles.append(mod.register_forward_pre_hook(self.lm_hook(name)))
        return handles


@torch.no_grad()
def inference_flops(
    model: nn.Module,
    input_shape_or_example: Sequence[int] | torch.Tensor,
    *,
    include_other: bool = False,
    per_layer: bool = False,
    masks: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> float | tuple[float, dict[str, float]]:
    """Inference FLOPs per ONE sample, counting only non-zero Conv/Linear weights (see module docstring).

    ``input_shape_or_example``: a per-sample shape without the batch dim (``(3, 224, 224)``; a zero input of
    ``dtype`` — default the parameters' dtype, pass ``torch.long`` for token ids — is made), or an example
    batch tensor (e.g. ``torch.zeros(1, T, dtype=torch.long)`` for an LM); totals are divided by its batch size.
    ``masks`` (name -> bool, True = kept) are applied virtually: nothing in the model is modified.
    With ``per_layer=True`` returns ``(total, {module_name: flops})``; attention matmuls are listed under
    ``"<lm_module>.attention"``.
    """
    x = _example_input(model, input_shape_or_example, dtype)
    batch = int(x.shape[0]) if x.dim() > 0 else 1
    counter = _Counter(model, masks, include_other, batch)
    handles = []
    modes = {m: m.training for m in model.modules()}
    try:
        handles = counter.register(model)
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    per = {k: v / batch for k, v in counter.counts.items()}
    total = float(sum(per.values()))
    return (total, per) if per_layer else total


def flops_for_masks(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    input_shape_or_example: Sequence[int] | torch.Tensor,
    **kwargs: Any,
) -> float | tuple[float, dict[str, float]]:
    """Inference FLOPs per sample as if ``masks`` were applied; counts from the masks, the model is untouched."""
    return inference_flops(model, input_shape_or_example, masks=masks, **kwargs)


def _entry(e: Sequence) -> tuple[str, float, float]:
    if len(e) not in (2, 3):
        raise ValueError(f"per-epoch entry must be (kind, f) or (kind, f, epochs), got {e!r}")
    kind = str(e[0])
    if kind not in ("dense", "sparse"):
        raise ValueError(f"phase kind must be 'dense' or 'sparse', got {kind!r}")
    length = float(e[2]) if len(e) == 3 else 1.0
    if length < 0:
        raise ValueError(f"negative epoch length in {e!r}")
    return kind, float(e[1]), length


def step_flops_per_sample(f: float, weight_grads: float | None = None) -> float:
    """Training FLOPs per sample of one step (RigL convention): forward ``f`` + error back-propagation ``f`` +
    weight gradients (``f`` by default). The loop's per-epoch figures and :func:`training_flops` both use it."""
    return 2.0 * f + (f if weight_grads is None else float(weight_grads))


def epoch_training_flops_rel(per_sample: float, dense_inference: float, length: float = 1.0) -> float:
    """An epoch's training FLOPs (``per_sample`` FLOPs per sample, ``length`` epochs long) relative to one dense
    epoch, ``step_flops_per_sample(dense_inference)`` per sample: the number in ``train_flops_epoch_rel``."""
    return per_sample * length / step_flops_per_sample(dense_inference)


def training_flops(
    per_epoch_inference: Sequence[Sequence],
    dense_inference: float,
    samples_per_epoch: int,
    *,
    dense_weight_grads: float | None = None,
) -> dict[str, Any]:
    """Training FLOPs of a run from the inference FLOPs per sample of each epoch (RigL convention).

    ``per_epoch_inference``: one ``(kind, f)`` per epoch, ``kind`` in {"dense", "sparse"}, ``f`` the inference
    FLOPs per sample of the weights non-zero in that epoch (dense epochs: measured at the end of the epoch); an
    optional third element is the epoch's length (default 1.0) for fractional phases. Per sample, an epoch costs
    ``3 f``. ``dense_weight_grads`` (default None = ``f``) replaces the weight-gradient third in *dense* epochs
    (e.g. pass ``dense_inference`` if gradients of all weights, zeros included, are computed).

    Returns ``total`` (FLOPs), ``relative_to_dense`` = total / (3 * dense_inference * samples * epochs),
    ``per_epoch`` (FLOPs of each entry) and ``cumulative_relative`` (fraction of the full dense run's budget
    spent after each entry; the last equals ``relative_to_dense``).
    """
    if dense_inference <= 0:
        raise ValueError(f"dense_inference must be > 0, got {dense_inference}")
    entries = [_entry(e) for e in per_epoch_inference]
    per_epoch = []
    for kind, f, length in entries:
        per_sample = step_flops_per_sample(f, dense_weight_grads if kind == "dense" else None)
        per_epoch.append(per_sample * samples_per_epoch * length)
    epochs = sum(e[2] for e in entries)
    dense_total = step_flops_per_sample(dense_inference) * samples_per_epoch * epochs
    total = float(sum(per_epoch))
    cumulative, acc = [], 0.0
    for v in per_epoch:
        acc += v
        cumulative.append(acc / dense_total if dense_total else float("nan"))
    return {
        "total": total,
        "relative_to_dense": total / dense_total if dense_total else float("nan"),
        "per_epoch": per_epoch,
        "cumulative_relative": cumulative,
        "epochs": epochs,
        "dense_total": dense_total,
    }


def gmp_epoch_flops(f_measured: float) -> float:
    """GMP (gradual magnitude pruning) training FLOPs per sample of an epoch: ``3 f`` at the measured density."""
    return 3.0 * f_measured


def _timeline_of(timeline: Any) -> list[tuple[str, float, float]]:
    if hasattr(timeline, "timeline"):
        timeline = timeline.timeline()
    out = []
    for p in timeline:
        kind, start, end = tuple(p)[:3]
        kind = str(getattr(kind, "value", kind))
        if kind not in ("dense", "sparse"):
            raise ValueError(f"phase kind must be 'dense' or 'sparse', got {kind!r}")
        if float(end) < float(start):
            raise ValueError(f"phase {p!r} ends before it starts")
        out.append((kind, float(start), float(end)))
    return out


def expand_timeline(timeline: Any) -> list[tuple[str, int, float]]:
    """Split phases at integer epoch boundaries: ``[(kind, phase_index, length), ...]``, one entry per epoch
    (fractional at non-integer phase boundaries). Accepts a list of ``(kind, start, end)`` or a Schedule."""
    out = []
    for i, (kind, start, end) in enumerate(_timeline_of(timeline)):
        t = start
        while t < end - 1e-12:
            nxt = min(end, math.floor(t + 1e-12) + 1.0)
            out.append((kind, i, nxt - t))
            t = nxt
    return out


def _per_phase(spec: Any, n: int, what: str) -> list[Mapping | None]:
    """One mask dict (or None) per phase of a kind, from one dict for all or a list with one per phase."""
    if spec is None or isinstance(spec, Mapping):
        return [spec] * n
    spec = list(spec)
    if len(spec) != n:
        raise ValueError(f"{what}: got {len(spec)} mask dicts for {n} phases")
    return spec


def schedule_training_flops(
    model: nn.Module,
    input_shape: Sequence[int] | torch.Tensor,
    timeline: Iterable | Any,
    masks_sparse: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    *,
    dense_density_masks: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    samples_per_epoch: int = 1,
) -> dict[str, Any]:
    """Analytic training FLOPs of an AC/DC timeline: sparse epochs at ``flops_for_masks(masks_sparse)``, dense
    epochs at the dense FLOPs of the model as it is (or with ``dense_density_masks`` applied, to model the few
    weights that stay zero after a compression phase).

    ``masks_sparse`` / ``dense_density_masks`` may be one mask dict for all phases of that kind or a list with
    one entry per phase of that kind, in order (None = fully dense). The relative number is against
    ``3 * f_dense`` per sample per epoch, ``f_dense`` being the model's inference FLOPs without masks.
    """
    f_dense = float(inference_flops(model, input_shape))
    phases = _timeline_of(timeline)
    n_sparse = sum(k == "sparse" for k, _, _ in phases)
    n_dense = len(phases) - n_sparse

    cache: dict[int, float] = {}

    def f_of(m: Mapping | None) -> float:
        if m is None:
            return f_dense
        if id(m) not in cache:
            cache[id(m)] = float(flops_for_masks(model, m, input_shape))
        return cache[id(m)]

    sparse_f = [f_of(m) for m in _per_phase(masks_sparse, n_sparse, "masks_sparse")]
    dense_f = [f_of(m) for m in _per_phase(dense_density_masks, n_dense, "dense_density_masks")]
    queues = {"sparse": iter(sparse_f), "dense": iter(dense_f)}
    phase_f = [next(queues[kind]) for kind, _, _ in phases]
    entries = [(kind, phase_f[i], length) for kind, i, length in expand_timeline(phases)]
    res = training_flops(entries, f_dense, samples_per_epoch)
    res.update(
        f_dense=f_dense,
        f_sparse=sparse_f[0] if len(set(sparse_f)) == 1 else sparse_f,
        sparse_fraction=(sparse_f[0] / f_dense) if len(set(sparse_f)) == 1 else [f / f_dense for f in sparse_f],
        sparse_epochs=sum(e - s for k, s, e in phases if k == "sparse"),
        dense_epochs=sum(e - s for k, s, e in phases if k == "dense"),
    )
    return res
