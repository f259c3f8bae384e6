"""Small recipes and method options shared by several test modules."""

from __future__ import annotations


def tiny_dense_raw(**over) -> dict:
    """A 2-epoch dense MLP on the bundled digits, 2 steps per epoch: the cheapest recipe that runs end to end."""
    raw = {"name": "tiny", "seed": 0, "epochs": 2, "batch_size": 64,
           "model": {"name": "mlp", "in_features": 64, "hidden": [16]}, "data": {"name": "digits"},
           "optimizer": {"name": "sgd", "lr": 0.05}, "method": {"name": "dense"},
           "max_steps_per_epoch": 2, "progress": False, "measure_flops": False}
    raw.update(over)
    return raw


# Options that make every baseline method change its masks within a few steps of a 10-step epoch.
BASELINE_OPTIONS = {
    "gmp": {"start_epoch": 0, "end_epoch": 3, "update_every": 3},
    "oneshot": {},
    "rigl": {"update_every": 5},
    "set": {"update_every": 5, "distribution": "erk"},
    "topkast": {"update_every": 5, "l2": 1e-2},
    "str": {"threshold_decay": 1e-2},
}
