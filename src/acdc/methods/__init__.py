"""Sparse-training methods; each is a small class over the shared primitives in :mod:`acdc.masking`."""

from .acdc import ACDC
from .base import SparseMethod
from .dense import Dense
from .gmp import GMP
from .oneshot import OneShot
from .registry import available, build_method, method_class, register
from .rigl import RigL
from .set import SET
from .str import STR
from .topkast import TopKAST

__all__ = ["ACDC", "Dense", "SparseMethod", "available", "build_method", "method_class", "register",
           "GMP", "OneShot", "RigL", "SET", "STR", "TopKAST"]
