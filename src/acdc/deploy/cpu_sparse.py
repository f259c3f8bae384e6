"""A fast CPU path for sparse models: Linear and 1x1 Conv layers as int32-index CSR with ``torch.sparse.mm``.

Why this form: ``torch.sparse.mm(W_csr, X^T)^T`` with int32 indices beats the best dense kernel on this CPU from
about 90% sparsity, while ``F.linear(x, W_csr)`` is several times slower and raises under ``inference_mode``, int64
indices are 1.1-1.7x slower and BSR/COO lose to dense at 90% (``/work/shared/PERF-NOTES.md``; ``bench/``). A single
row (batch-1 decoding) goes through ``torch.mv``, which is faster again. Whether CSR wins depends on the layer's
shape, sparsity and batch, so :func:`to_cpu_sparse` times both forms of every candidate layer on the real input
shape and keeps the faster; every other layer (3x3 convs, norms, attention) stays dense.

Files are safetensors (CSR parts as plain tensors plus a JSON plan in the metadata): nothing is pickled.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..train.checkpoint import CheckpointError, load_tensors, save_tensors

MIN_SPARSITY = 0.5  # layers with fewer zeros are not even timed: CSR cannot win there
FORMAT = "acdc-cpu-sparse"


def _csr_parts(weight2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = weight2d.detach().to("cpu").contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        csr = w.to_sparse_csr()
    return csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32), csr.values().contiguous()


class _CSRWeight(nn.Module):
    """Holds a 2-D weight as CSR buffers (``crow_indices``/``col_indices`` int32, ``values``) plus a bias."""

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("crow_indices", crow.to(torch.int32))
        self.register_buffer("col_indices", col.to(torch.int32))
        self.register_buffer("values", values)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.shape2d = (int(shape[0]), int(shape[1]))
        self.block = 0  # columns per CSR product in matmul_t; 0 = all at once
        self._csr: torch.Tensor | None = None
        self._key: tuple[int, ...] = ()

    def csr(self) -> torch.Tensor:
        key = (self.crow_indices.data_ptr(), self.col_indices.data_ptr(), self.values.data_ptr())
        if self._csr is None or key != self._key:  # rebuilt after load_state_dict / .to(): shares the buffers
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._csr = torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                                    self.shape2d, check_invariants=False)
            self._key = key
        return self._csr

    def matmul_t(self, x2: torch.Tensor) -> torch.Tensor:
        """``W @ x2`` for a dense (in, n) operand; a single column goes through ``torch.mv``.

        With ``block`` > 0 the columns of ``x2`` go through the CSR product ``block`` at a time: a slice of
        ``in x block`` floats stays in the L2 cache while every row of W streams over it (one product on a
        4096 x 64 operand reads a 1 MiB operand once per non-zero; in slices of 16-32 columns it is ~1.2-1.4x
        faster on this CPU). :func:`to_cpu_sparse` picks ``block`` per layer by timing.
        """
        n = x2.shape[1]
        if n == 1:
            return torch.mv(self.csr(), x2[:, 0]).unsqueeze(1)
        if 0 < self.block < n:
            csr = self.csr()
            return torch.cat([torch.sparse.mm(csr, x2[:, i:i + self.block].contiguous())
                              for i in range(0, n, self.block)], 1)
        return torch.sparse.mm(self.csr(), x2)

    def with_block(self, block: int) -> _CSRWeight:
        """A shallow copy (same CSR buffers) that multiplies ``block`` columns at a time (0: all at once)."""
        twin = copy.copy(self)
        twin._buffers = dict(self._buffers)
        twin.block = int(block)
        return twin

    @property
    def density(self) -> float:
        return self.values.numel() / max(1, self.shape2d[0] * self.shape2d[1])


class SparseLinear(_CSRWeight):
    """Drop-in for ``nn.Linear`` at inference: ``y = (W_csr @ x^T)^T + b`` on any leading dimensions."""

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> SparseLinear:
        return cls(*_csr_parts(lin.weight), tuple(lin.weight.shape), lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_f, in_f = self.shape2d
        lead = x.shape[:-1]
        if x.numel() == in_f:  # one row (batch-1 decoding): a single addmv with the bias fused, no transposes
            v = x.reshape(in_f)
            y = torch.mv(self.csr(), v) if self.bias is None else torch.addmv(self.bias, self.csr(), v)
            return y.reshape(*lead, out_f)
        x2 = x.reshape(-1, in_f)
        y = self.matmul_t(x2.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, out_f)

    def extra_repr(self) -> str:
        return f"in_features={self.shape2d[1]}, out_features={self.shape2d[0]}, density={self.density:.3f}"


class SparseConv1x1(_CSRWeight):
    """Drop-in for a 1x1 ``nn.Conv2d`` (groups 1, no padding; any stride) at inference."""

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                 bias: torch.Tensor | None, stride: int = 1) -> None:
        super().__init__(crow, col, values, shape, bias)
        self.stride = int(stride)

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.groups == 1
                and conv.padding in ((0, 0), "valid") and conv.stride[0] == conv.stride[1])

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> SparseConv1x1:
        w = conv.weight.reshape(conv.out_channels, conv.in_channels)
        return cls(*_csr_parts(w), tuple(w.shape), conv.bias, stride=conv.stride[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        n, c, h, w = x.shape
        if n == 1:
            y = self.matmul_t(x.reshape(c, h * w)).reshape(1, -1, h, w)
        else:
            y = self.matmul_t(x.transpose(0, 1).reshape(c, n * h * w))
            y = y.reshape(-1, n, h, w).transpose(0, 1).contiguous()
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return (f"{self.shape2d[1]}, {self.shape2d[0]}, kernel_size=(1, 1), stride={self.stride}, "
                f"density={self.density:.3f}")


def _convert(mod: nn.Module) -> _CSRWeight:
    return SparseLinear.from_linear(mod) if isinstance(mod, nn.Linear) else SparseConv1x1.from_conv(mod)


def _candidates(model: nn.Module, min_sparsity: float) -> tuple[dict[str, nn.Module], list[tuple[str, float]]]:
    """Layers CSR could replace (and the zero fraction of every Linear / 1x1 conv seen)."""
    found, seen = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or SparseConv1x1.supports(mod):
            zeros = float((mod.weight == 0).float().mean())
            seen.append((name, zeros))
            if zeros >= min_sparsity:
                found[name] = mod
    return found, seen


def _capture_inputs(model: nn.Module, mods: dict[str, nn.Module], example: Any) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, args: tuple, out: Any) -> None:  # returns None: the output is not replaced
            inputs.setdefault(name, args[0].detach())
        return fn

    handles = [mod.register_forward_hook(hook(name)) for name, mod in mods.items()]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return inputs


def time_layers(forms: dict[str, tuple[Callable[[], Any], ...]], repeats: int = 9) -> dict[str, tuple[float, ...]]:
    """Median seconds of each layer's forms (dense, CSR variants), timed in the cache regime of a forward pass.

    Each round calls the first form of every layer in model order, then the second form of every layer, and so
    on: between two calls of one layer the other layers' weights pass through the cache, as in a real forward
    (timing one small layer in a loop keeps its weights hot and favours dense, e.g. 410x410 in a 16-block LM).
    Rounds alternate, so machine load hits all forms alike.
    """
    times = {k: [[] for _ in fns] for k, fns in forms.items()}
    width = max((len(fns) for fns in forms.values()), default=0)
    with torch.inference_mode():
        for fns in forms.values():
            for f in fns:
                f()
        for _ in range(repeats):
            for j in range(width):
                for name, fns in forms.items():
                    if j < len(fns):
                        t0 = time.perf_counter()
                        fns[j]()
                        times[name][j].append(time.perf_counter() - t0)
    return {k: tuple(statistics.median(t) for t in ts) for k, ts in times.items()}


BLOCK_BYTES = 256 * 1024  # an (in x block) fp32 slice of the dense operand of about this size stays in L2 here


def block_candidates(in_features: int, columns: int) -> list[int]:
    """Column-block widths worth timing for ``W_csr @ X`` with a dense ``(in_features, columns)`` ``X``.

    The width whose ``in_features x width`` fp32 slice is about ``BLOCK_BYTES`` (a power of two, at least 8) and
    twice that; only widths smaller than ``columns``.
    """
    width = max(8, 1 << max(0, (BLOCK_BYTES // (4 * max(1, in_features))).bit_length() - 1))
    return [b for b in (width, 2 * width) if b < columns]


def _columns(sp: _CSRWeight, x: torch.Tensor) -> int:
    """Columns of the dense operand ``sp.matmul_t`` gets for input ``x``."""
    if isinstance(sp, SparseConv1x1):
        s = sp.stride
        return x.shape[0] * (-(-x.shape[2] // s)) * (-(-x.shape[3] // s))
    return x.numel() // sp.shape2d[1]


def _csr_forms(sp: _CSRWeight, x: torch.Tensor) -> dict[int, _CSRWeight]:
    """block -> CSR module: the whole product (0) and the column-blocked variants worth timing."""
    return {0: sp} | {b: sp.with_block(b) for b in block_candidates(sp.shape2d[1], _columns(sp, x))}


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _no_candidate_error(seen: list[tuple[str, float]], min_sparsity: float) -> ValueError:
    best = max(seen, key=lambda t: t[1], default=None)
    detail = f" (sparsest: {best[0] or 'model'} with {100 * best[1]:.1f}% zeros)" if best else ""
    return ValueError(f"no Linear or 1x1 Conv layer has >= {100 * min_sparsity:.0f}% zeros{detail}: cpu-sparse "
                      "needs a sparse model (export the run's sparse.safetensors, not a dense checkpoint)")


def _plan_entry(name: str, mod: nn.Module, sp: _CSRWeight, x: torch.Tensor, t_dense: float,
                csr_times: dict[int, float]) -> dict[str, Any]:
    block = min(csr_times, key=lambda b: (csr_times[b], b))
    t_sparse = csr_times[block]
    return {"layer": name, "type": "linear" if isinstance(mod, nn.Linear) else "conv1x1",
            "shape": list(mod.weight.shape), "input_shape": list(x.shape), "density": sp.density,
            "dense_ms": 1e3 * t_dense, "csr_ms": 1e3 * t_sparse, "block": block,
            "csr_ms_by_block": {str(b): 1e3 * t for b, t in csr_times.items()}, "speedup": t_dense / t_sparse,
            "chosen": "csr" if t_sparse <= t_dense else "dense"}


Timer = Callable[..., tuple[float, ...]]


def to_cpu_sparse(
    model: nn.Module,
    example_input: Any,
    *,
    min_sparsity: float = MIN_SPARSITY,
    repeats: int = 9,
    timer: Timer | None = None,
) -> nn.Module:
    """A copy of ``model`` (eval mode) whose sparse Linear / 1x1 Conv layers run as CSR where that is faster.

    Every Linear and 1x1 Conv2d with at least ``min_sparsity`` zeros is timed dense and as CSR (whole product and
    column-blocked, :func:`block_candidates`) on the input it receives in ``model(example_input)`` (so pass the
    batch size you will serve; :func:`time_layers`); the fastest CSR form is kept only when it is at least as
    fast as dense. The per-layer decision and timings are in ``result.cpu_sparse_plan``.
    ``timer(dense, *csr_forms) -> seconds per callable`` replaces the built-in timer, one layer at a time.
    A model with no layer sparse enough raises ValueError (export the run's sparse model).
    """
    src = copy.deepcopy(model).eval()
    cands, seen = _candidates(src, min_sparsity)
    if not cands:
        raise _no_candidate_error(seen, min_sparsity)
    inputs = _capture_inputs(src, cands, example_input)
    variants = {name: _csr_forms(_convert(mod).eval(), inputs[name]) for name, mod in cands.items() if name in inputs}
    forms = {name: (lambda m=cands[name], x=inputs[name]: m(x),
                    *(lambda m=sp, x=inputs[name]: m(x) for sp in vs.values())) for name, vs in variants.items()}
    times = {n: tuple(timer(*fns)) for n, fns in forms.items()} if timer else time_layers(forms, repeats)
    plan = []
    for name, mod in cands.items():
        if name not in variants:  # never called on this input: nothing to time, leave it dense
            plan.append({"layer": name, "chosen": "dense", "reason": "not used by the example input"})
            continue
        t_dense, *t_csr = times[name]
        if len(t_csr) != len(variants[name]):
            raise ValueError(f"timer returned {1 + len(t_csr)} times for {1 + len(variants[name])} forms of {name}")
        plan.append(_plan_entry(name, mod, variants[name][0], inputs[name], t_dense, dict(zip(variants[name], t_csr))))
        if plan[-1]["chosen"] == "csr":
            _set(src, name, variants[name][plan[-1]["block"]])
    src.cpu_sparse_plan = plan
    return src


def sparse_layers(model: nn.Module) -> dict[str, _CSRWeight]:
    """Name -> CSR module of a converted model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _CSRWeight)}


def save_cpu_sparse(path: str | Path, model: nn.Module, metadata: dict[str, Any] | None = None) -> None:
    """Save a :func:`to_cpu_sparse` model as safetensors (atomically): CSR parts + dense tensors + a JSON plan."""
    layers = {n: {"type": "linear" if isinstance(m, SparseLinear) else "conv1x1", "shape": list(m.shape2d),
                  "stride": getattr(m, "stride", 1), "bias": m.bias is not None, "block": m.block}
              for n, m in sparse_layers(model).items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    meta.update(format=FORMAT, layers=json.dumps(layers), plan=json.dumps(getattr(model, "cpu_sparse_plan", [])))
    save_tensors(path, model.state_dict(), meta)


def load_cpu_sparse(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a saved CPU-sparse model on ``model`` (the dense architecture, e.g. built from the run's recipe).

    Returns a new module in eval mode; ``model`` is left untouched. A file of another architecture raises
    :class:`CheckpointError`.
    """
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cpu-sparse model (write one with `acdc export --format cpu-sparse`)")
    layers = json.loads(meta["layers"])
    out = copy.deepcopy(model).eval()
    for name, spec in layers.items():
        try:
            old = out.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{path} does not match the model: it has no layer {name!r}") from None
        want = tuple(old.weight.shape[:2]) if isinstance(old, (nn.Linear, nn.Conv2d)) else None
        if want != tuple(spec["shape"]):
            raise CheckpointError(f"{path} does not match the model: layer {name!r} is {want}, the file has "
                                  f"{tuple(spec['shape'])}")
        parts = [tensors.get(f"{name}.{k}") for k in ("crow_indices", "col_indices", "values")]
        if any(p is None for p in parts):
            raise CheckpointError(f"{path} is missing the CSR tensors of layer {name!r}")
        bias = tensors.get(f"{name}.bias") if spec["bias"] else None
        new = (SparseLinear(*parts, spec["shape"], bias) if spec["type"] == "linear"
               else SparseConv1x1(*parts, spec["shape"], bias, stride=spec["stride"]))
        new.block = int(spec.get("block", 0))
        _set(out, name, new)
    try:
        out.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the model: {str(e).splitlines()[0]} ...") from None
    out.cpu_sparse_plan = json.loads(meta.get("plan", "[]"))
    return out.eval()
