"""What the Hugging Face and Lightning callbacks share: building a method from a trainer's model and optimizer,
and a JSON-safe method state (no pickle) that travels inside the trainers' checkpoints.

Tensors are stored as base64 of zlib-compressed bytes; bool tensors (masks) are bit-packed first (1 bit per weight).
"""

from __future__ import annotations

import base64
import copy
import json
import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

from ..methods import available, build_method
from ..methods.base import SparseMethod
from ..schedule import Schedule
from ..selection import Target

STATE_VERSION = 1
_TENSOR = "__tensor__"


# ---------------------------------------------------------------------- JSON-safe state
def _encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bool:
        raw = np.packbits(t.numpy().reshape(-1)).tobytes()
    else:
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return {_TENSOR: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                      "data": base64.b64encode(zlib.compress(raw, 1)).decode("ascii")}}


def _decode_tensor(d: dict[str, Any]) -> torch.Tensor:
    dtype = getattr(torch, d["dtype"])
    shape = tuple(d["shape"])
    raw = zlib.decompress(base64.b64decode(d["data"]))
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == torch.bool:
        return torch.from_numpy(np.unpackbits(np.frombuffer(raw, np.uint8), count=n).astype(bool)).reshape(shape)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).clone() if n else \
        torch.empty(shape, dtype=dtype)


def encode_state(obj: Any) -> Any:
    """A method ``state_dict()`` as JSON-safe data (dicts, lists, numbers, strings; tensors encoded)."""
    if torch.is_tensor(obj):
        return _encode_tensor(obj)
    if isinstance(obj, dict):
        return {str(k): encode_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode_state(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a callback checkpoint")


def decode_state(obj: Any) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return _decode_tensor(obj[_TENSOR])
        return {k: decode_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v) for v in obj]
    return obj


# ---------------------------------------------------------------------- configuration
def _json_safe_config(method: str, sparsity: float, schedule: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The callback's arguments as JSON (trainers store them in checkpoints to rebuild the callback)."""
    opts = dict(options)
    if isinstance(opts.get("target"), Target):
        raise TypeError("ACDCCallback: pass `structure` ('unstructured' or 'N:M') and `distribution` ('global', "
                        "'uniform' or 'erk') as strings, not a Target")
    cfg: dict[str, Any] = {"method": method, "sparsity": sparsity, **opts}
    if schedule is not None:
        cfg["schedule"] = schedule.to_dict() if isinstance(schedule, Schedule) else schedule
    try:
        return json.loads(json.dumps(cfg))  # as it reads back from a checkpoint (tuples become lists)
    except TypeError as e:
        raise TypeError(f"ACDCCallback: arguments must be plain values (str, numbers, lists, dicts): {e}") from None


class MethodDriver:
    """Builds the configured method at train begin and carries its state across checkpoints."""

    def __init__(self, method: str, sparsity: float, schedule: Any, options: dict[str, Any]) -> None:
        if method not in available():
            raise ValueError(f"ACDCCallback: unknown method {method!r}; available: {available()}")
        self.config = _json_safe_config(method, sparsity, schedule, options)
        self.method_name = method
        self.sparsity = sparsity
        self.options = dict(options)
        if schedule is not None:
            self.options["schedule"] = schedule
        self.method: SparseMethod | None = None

    def build(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: float,
              saved: dict[str, Any] | None = None, where: str = "the checkpoint") -> SparseMethod:
        """Build the method for ``epochs`` epochs of ``steps_per_epoch`` optimizer steps; errors are one line.

        With ``saved`` (a :meth:`state` from a checkpoint whose weights and optimizer state the trainer has already
        restored), the method state is restored too; whatever building the method did to the weights or the
        optimizer state (an initial mask at step 0) is undone, so the run continues exactly where it stopped.
        """
        if self.method is not None:  # a second fit()/train() with the same callback: detach from the old run
            self.method.remove_hooks()
            self.method = None
        if saved is not None:
            self._check_config(saved, where)
            model_sd = copy.deepcopy(model.state_dict())
            opt_sd = copy.deepcopy(optimizer.state_dict())
        epochs_arg: float = int(epochs) if float(epochs).is_integer() else float(epochs)
        try:
            method = build_method(self.method_name, model, optimizer, steps_per_epoch=steps_per_epoch,
                                  epochs=epochs_arg, sparsity=self.sparsity, options=self.options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"ACDCCallback: {e}") from None
        if saved is not None:
            try:
                method.load_state_dict(decode_state(saved["method"]))
                model.load_state_dict(model_sd)
                optimizer.load_state_dict(opt_sd)
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                method.remove_hooks()
                raise ValueError(f"ACDCCallback: cannot restore the method state from {where}: "
                                 f"{str(e).splitlines()[0]}") from None
        self.method = method
        return method

    def state(self) -> dict[str, Any] | None:
        """JSON-safe method state plus the configuration it was made with (None before train begin)."""
        if self.method is None:
            return None
        return {"version": STATE_VERSION, "config": self.config, "method": encode_state(self.method.state_dict())}

    def _check_config(self, state: dict[str, Any], where: str) -> None:
        saved = state.get("config", {})
        if saved != self.config:
            diff = sorted(k for k in set(saved) | set(self.config) if saved.get(k) != self.config.get(k))
            raise ValueError(f"ACDCCallback: {where} was made with another method configuration (differs in "
                             f"{diff}: checkpoint {[saved.get(k) for k in diff]}, now "
                             f"{[self.config.get(k) for k in diff]}); resume with the same ACDCCallback arguments")

    def step(self) -> None:
        if self.method is not None:
            self.method.step()

    def finalize(self) -> None:
        """End of training: methods that reparametrize (STR) write their sparse weights back into the model."""
        if self.method is not None:
            self.method.finalize()
