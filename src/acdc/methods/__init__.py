"""Sparse-training methods; each is a small class over the shared primitives in :mod:`acdc.masking`."""

from .acdc import ACDC
from .base import SparseMethod
from .dense import Dense
from .registry import available, build_method, method_class, register

__all__ = ["ACDC", "Dense", "SparseMethod", "available", "build_method", "method_class", "register",
           "GMP", "OneShot", "RigL", "SET", "STR", "TopKAST"]
from .baselines_registry import GMP, SET, STR, OneShot, RigL, TopKAST  # noqa: E402  (registers the baselines)
