"""Sparse-training methods; each is a small class over the shared primitives in :mod:`acdc.sparsify`."""

from .acdc import ACDC
from .base import SparseMethod

__all__ = ["ACDC", "SparseMethod"]
