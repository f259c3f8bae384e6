"""ONNX export of a sparse model: a dense graph with exact zeros, optionally with COO sparse initializers.

ONNX Runtime (1.32) densifies sparse initializers when it loads the model: they save disk and download size, not
time or memory. The onnx checker requires int64 COO indices (12 bytes per non-zero for fp32), so a weight only
shrinks when at least 2/3 of it is zero.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..train.checkpoint import atomic_write_bytes

SPARSE_MIN_ZEROS = 2 / 3


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError("ONNX export needs the `onnx` extra: pip install 'acdc-train[onnx]'") from None
    return onnx, numpy_helper


def to_sparse_initializers(model_proto: Any, min_zeros: float = SPARSE_MIN_ZEROS) -> list[str]:
    """Move every float initializer of rank >= 2 with at least ``min_zeros`` zeros to a COO sparse initializer.

    Indices are int64 positions in the flattened tensor (the onnx checker's layout). Returns the moved names.
    """
    onnx, numpy_helper = _onnx()
    graph = model_proto.graph
    keep, moved = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.ndim < 2 or arr.dtype.kind != "f" or not arr.size:
            keep.append(init)
            continue
        flat = arr.reshape(-1)
        idx = np.flatnonzero(flat)
        if 1.0 - idx.size / flat.size < min_zeros:
            keep.append(init)
            continue
        values = numpy_helper.from_array(flat[idx], name=init.name)
        indices = numpy_helper.from_array(idx.astype(np.int64), name=f"{init.name}.indices")
        graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, list(arr.shape)))
        moved.append(init.name)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return moved


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    sparse_initializers: bool = False,
    opset: int = 17,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Export ``model`` (in eval mode) to ``path`` atomically; returns a report (sizes, sparse initializers).

    The batch dimension is dynamic (and the sequence dimension for integer token inputs). The graph is checked
    with ``onnx.checker.check_model`` before anything is written.
    """
    onnx, _ = _onnx()
    was_training = model.training
    model.eval()
    dyn = {0: "batch", 1: "sequence"} if not example.is_floating_point() and example.dim() == 2 else {0: "batch"}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"], output_names=["output"],
                              opset_version=opset, dynamic_axes={"input": dyn, "output": {0: "batch"}},
                              do_constant_folding=True)
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    moved = to_sparse_initializers(proto) if sparse_initializers else []
    for k, v in (metadata or {}).items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = k, v
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    atomic_write_bytes(path, data)
    return {"path": str(path), "bytes": len(data), "sparse_initializers": moved}


def run_onnx(path: str | Path, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """Run an exported model with ONNX Runtime on the CPU (one input, one output)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("running ONNX needs the `onnx` extra: pip install 'acdc-train[onnx]'") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
