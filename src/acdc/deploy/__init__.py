"""Inference deployment of sparse models on CPU (see :mod:`acdc.deploy.cpu_sparse`, :mod:`acdc.deploy.decode`)."""

from .cpu_sparse import (
    SparseConv1x1,
    SparseLinear,
    load_cpu_sparse,
    save_cpu_sparse,
    sparse_layers,
    to_cpu_sparse,
)
from .decode import KVDecoder, generate, lm_step

__all__ = [
    "KVDecoder", "SparseConv1x1", "SparseLinear", "generate", "lm_step", "load_cpu_sparse", "save_cpu_sparse",
    "sparse_layers", "to_cpu_sparse",
]
