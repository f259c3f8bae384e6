"""Inference deployment of sparse models on CPU (see :mod:`acdc.deploy.cpu_sparse`)."""

from .cpu_sparse import (
    SparseConv1x1,
    SparseLinear,
    load_cpu_sparse,
    save_cpu_sparse,
    sparse_layers,
    to_cpu_sparse,
)

__all__ = ["SparseConv1x1", "SparseLinear", "load_cpu_sparse", "save_cpu_sparse", "sparse_layers", "to_cpu_sparse"]
