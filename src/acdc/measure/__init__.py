"""Measurements of AC/DC runs: FLOPs (inference/training), mask dynamics, sparse/dense agreement, memorization."""

from acdc.measure.agreement import agreement, agreement_from_logits
from acdc.measure.dynamics import MaskTracker, layer_density, mask_difference, prunable_weights, zero_fraction
from acdc.measure.flops import (
    expand_timeline,
    flops_for_masks,
    gmp_epoch_flops,
    inference_flops,
    rigl_epoch_flops,
    schedule_training_flops,
    topkast_epoch_flops,
    training_flops,
)
from acdc.measure.memorization import CorruptedDataset, corrupt_labels, corrupted_accuracy, train_targets

__all__ = [
    "agreement",
    "agreement_from_logits",
    "MaskTracker",
    "layer_density",
    "mask_difference",
    "prunable_weights",
    "zero_fraction",
    "expand_timeline",
    "flops_for_masks",
    "gmp_epoch_flops",
    "inference_flops",
    "rigl_epoch_flops",
    "schedule_training_flops",
    "topkast_epoch_flops",
    "training_flops",
    "CorruptedDataset",
    "corrupt_labels",
    "corrupted_accuracy",
    "train_targets",
]
